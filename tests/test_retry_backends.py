"""retry around any child (forward-request included), engine-made backend calls, backend entities with
credentials, circuit breakers and load-balanced pools (the AI-gateway sample unchanged), and proxy."""

from __future__ import annotations

import json
from typing import Any

import pytest
from apim_mi.backends import parse_backend
from apim_mi.policy import engine
from apim_mi.policy.context import Body, Headers, Response
from apim_mi.policy.gateway import GatewayState
from apim_mi.policy.statements.backends import retry_delay
from conftest import ROOT
from test_statements import body_json, entries, make_run, policies


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Backends:
    """Answers per host from a script: a list of statuses (the last one repeats) or an exception."""

    def __init__(self, **script: list[Any]) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                       timeout: float, proxy: str | None = None, client_cert: Any = None) -> Response:  # fmt: skip
        host = url.split("/")[2].split(".")[0]
        self.calls.append({"host": host, "url": url, "headers": dict(headers), "proxy": proxy, "method": method,
                           "client_cert": client_cert})  # fmt: skip
        steps = self.script[host]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, Exception):
            raise step
        status, *extra = step if isinstance(step, tuple) else (step,)
        headers_out = Headers([("Content-Type", "application/json"), *(extra[0] if extra else [])])
        return Response(status, "Too Many Requests" if status == 429 else "OK", headers_out,
                        Body(json.dumps({"from": host}).encode()))  # fmt: skip


def backend_section(xml: str) -> str:
    return f"<policies><inbound><base/></inbound><backend>{xml}</backend><outbound><base/></outbound></policies>"


async def run_request(xml: str, backends: Backends, clock: Clock | None = None, state: GatewayState | None = None,
                      settings: dict[str, Any] | None = None, **kw: Any) -> engine.PolicyRun:  # fmt: skip
    clock = clock or Clock()
    run = make_run(xml, sender=backends, settings=settings, **kw)  # type: ignore[arg-type]
    run.services.state = state or GatewayState(clock=clock, sleep=clock.sleep)
    await engine.run_inbound(run)
    engine.finish(run)
    return run


@pytest.mark.parametrize(("args", "waits"), [
    ((10, None, None, False), [10, 10, 10]),           # fixed
    ((10, None, 5, False), [10, 15, 20]),              # linear
    ((1, 8, 1, False), [2, 4, 8]),                     # exponential, capped (jitter 1)
    ((10, None, None, True), [0, 10, 10]),             # first fast retry
])  # fmt: skip
def test_retry_delays(args: tuple[Any, ...], waits: list[float]) -> None:
    assert [retry_delay(n, *args) for n in (1, 2, 3)] == waits


async def test_retry_around_forward_request_calls_the_backend_until_the_condition_is_false() -> None:
    backends = Backends(api=[503, 503, 200])
    clock = Clock()
    run = await run_request(backend_section(
        '<retry condition="@(context.Response.StatusCode >= 500)" count="3" interval="2">'
        '<forward-request buffer-request-body="true" /></retry>'), backends, clock)  # fmt: skip
    assert [c["host"] for c in backends.calls] == ["api", "api", "api"]
    assert run.response is not None and run.response.status_code == 200 and run.backend_called
    assert clock.slept == [2, 2]
    attempts = [e for e in entries(run, "forward-request") if "response" in e]
    assert [a["response"]["status"]["code"] for a in attempts] == [503, 503, 200]


async def test_retry_count_exhausted_gives_the_last_response_and_outbound_runs() -> None:
    backends = Backends(api=[429])
    xml = ('<policies><inbound /><backend><retry condition="@(context.Response.StatusCode == 429)" count="2" '
           'interval="0"><forward-request /></retry></backend><outbound><set-header name="X-Seen" '
           'exists-action="override"><value>@(context.Response.StatusCode.ToString())</value></set-header>'
           "</outbound></policies>")  # fmt: skip
    run = await run_request(xml, backends)
    assert len(backends.calls) == 3
    assert run.response is not None and run.response.status_code == 429 and run.response.headers.get("X-Seen") == "429"


async def test_retry_around_send_request_in_inbound() -> None:
    backends = Backends(side=[404, 200])
    xml = policies('<retry condition="@(((IResponse)context.Variables["r"]).StatusCode == 404)" count="2" interval="1" '
                   'first-fast-retry="true"><send-request mode="new" response-variable-name="r">'
                   "<set-url>https://side.test/x</set-url></send-request></retry>")  # fmt: skip
    clock = Clock()
    run = await run_request(xml, backends, clock)
    assert len(backends.calls) == 2 and clock.slept == []
    assert run.context.variables["r"].status_code == 200


def member(host: str, **rule: Any) -> dict[str, Any]:
    """A backend whose circuit breaker trips on one 429 within a minute, for a minute."""
    cb = {"name": "r", "failureCondition": {"count": 1, "interval": "PT1M",
                                            "statusCodeRanges": [{"min": 429, "max": 429}]}, "tripDuration": "PT1M"}
    return {"url": f"https://{host}.test/openai", "circuitBreaker": {"rules": [{**cb, **rule}]}}


POOL = {
    "openai-1": parse_backend("openai-1", {**member("one", acceptRetryAfter=True),
                                           "credentials": {"header": {"api-key": ["k1"]}}}),
    "openai-2": parse_backend("openai-2", member("two")),
    "openai-backend-pool": parse_backend("openai-backend-pool", {"type": "Pool", "pool": {"services": [
        {"id": "/backends/openai-1", "priority": 1}, {"id": "/backends/openai-2", "priority": 2}]}}),
}  # fmt: skip

# The AI-gateway load-balancing lab's policy (see the file's comment for its source).
AI_GATEWAY = (ROOT / "tests" / "data" / "policies" / "ai-gateway-backend-pool.xml").read_text()


async def test_ai_gateway_pool_priority_failover_circuit_breaker_and_exhaustion() -> None:
    clock = Clock()
    state = GatewayState(clock=clock, sleep=clock.sleep)
    backends = Backends(one=[(429, [("Retry-After", "30")]), 200], two=[200])
    url = "https://gw.test/deployments/gpt/chat/completions?api-version=2024-02-01"  # no API suffix to strip
    run = await run_request(AI_GATEWAY, backends, state=state, settings={"backends": POOL}, url=url)
    assert [c["host"] for c in backends.calls] == ["one", "two"]
    assert backends.calls[0]["url"] == "https://one.test/openai/deployments/gpt/chat/completions?api-version=2024-02-01"
    assert backends.calls[0]["headers"]["api-key"] == "k1" and "api-key" not in backends.calls[1]["headers"]
    assert run.response is not None and run.response.status_code == 200 and body_json(run.response) == {"from": "two"}
    served = [e["backendId"] for e in entries(run, "forward-request") if "backendId" in e]
    assert served == ["openai-1", "openai-2"]
    messages = [e.get("message", "") for e in entries(run, "forward-request")]
    assert any("tripped backend 'openai-1' for 30 seconds" in m for m in messages)
    # openai-1 is tripped (Retry-After 30 s): the next request goes to openai-2 directly
    backends.calls.clear()
    backends.script["two"] = [429]
    run = await run_request(AI_GATEWAY, backends, state=state, settings={"backends": POOL}, url=url)
    assert [c["host"] for c in backends.calls] == ["two"]
    # both tripped: 503 "Backend pool pool is temporarily unavailable", no retry, on-error's generic 503
    assert run.response is not None and run.response.status_code == 503
    assert run.response.status_reason == "Service Unavailable"
    clock.now += 61
    backends.calls.clear()
    backends.script["one"] = [200]
    run = await run_request(AI_GATEWAY, backends, state=state, settings={"backends": POOL}, url=url)
    assert [c["host"] for c in backends.calls] == ["one"] and run.response.status_code == 200


async def test_pool_weights_split_traffic_within_a_priority() -> None:
    pool = {**POOL, "pool": parse_backend("pool", {"type": "Pool", "pool": {"services": [
        {"id": "openai-1", "weight": 3}, {"id": "openai-2", "weight": 1}]}})}  # fmt: skip
    state = GatewayState()
    state.random.seed(7)
    backends = Backends(one=[200], two=[200])
    for _ in range(200):
        await run_request(backend_section('<set-backend-service backend-id="pool" /><forward-request />'), backends,
                          state=state, settings={"backends": pool})  # fmt: skip
    ones = sum(c["host"] == "one" for c in backends.calls)
    assert 120 <= ones <= 180, ones


async def test_single_backend_credentials_go_through_the_proxy_forward() -> None:
    entity = {"b": parse_backend("b", {"url": "https://b.test/api", "credentials": {"query": {"code": ["c1"]},
                                        "authorization": {"scheme": "Basic", "parameter": "dTpw"}}})}  # fmt: skip
    xml = policies('<set-backend-service backend-id="b" />')
    run = await run_request(xml, Backends(), settings={"backends": entity})
    assert run.forward and not run.backend_called  # a plain single backend: mitmproxy forwards
    assert str(run.context.request.url) == "https://b.test/api/orders/42?x=1&code=c1"
    assert run.context.request.headers.get("Authorization") == "Basic dTpw"


async def test_proxy_applies_to_side_requests_and_engine_backend_calls() -> None:
    backends = Backends(side=[200], api=[200])
    xml = ('<policies><inbound><proxy url="http://127.0.0.1:3128" username="u" password="p" />'
           '<send-request mode="new" response-variable-name="r"><set-url>https://side.test/</set-url></send-request>'
           "</inbound><backend><forward-request /></backend><outbound /></policies>")  # fmt: skip
    run = await run_request(xml, backends)
    assert [c["proxy"] for c in backends.calls] == ["http://u:p@127.0.0.1:3128", "http://u:p@127.0.0.1:3128"]
    assert run.backend_called and run.response is not None and run.response.status_code == 200


async def test_backend_connection_failure_counts_for_error_reasons_and_goes_to_on_error() -> None:
    rule = {"name": "r", "failureCondition": {"count": 2, "interval": "PT1M", "errorReasons": ["timeout"]}}
    entity = {"b": parse_backend("b", {"url": "https://api.test", "circuitBreaker": {"rules": [rule]}})}
    state = GatewayState()
    backends = Backends(api=[ConnectionRefusedError("refused")])
    for _ in range(2):
        run = await run_request(policies('<set-backend-service backend-id="b" />'), backends, state=state,
                                settings={"backends": entity})  # fmt: skip
        assert run.response is not None and run.response.status_code == 500
        assert run.context.last_error.reason == "BackendConnectionFailure"
    run = await run_request(policies('<set-backend-service backend-id="b" />'), backends, state=state,
                            settings={"backends": entity})  # fmt: skip
    assert run.response is not None and run.response.status_code == 503 and len(backends.calls) == 2


async def test_engine_made_backend_call_presents_the_client_certificate() -> None:
    """authentication-certificate chose a certificate for the forwarded request: the engine's own call presents it."""
    backends = Backends(api=[200])
    run = make_run(backend_section('<retry condition="false" count="1" interval="0"><forward-request /></retry>'),
                   sender=backends)  # type: ignore[arg-type]
    run.client_certificates[id(run.context.request)] = "the-certificate"
    await engine.run_inbound(run)
    assert [c["client_cert"] for c in backends.calls] == ["the-certificate"]
