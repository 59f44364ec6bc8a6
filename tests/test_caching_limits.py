"""Caching (cache-lookup/-store, cache-*-value) and limits (rate-limit, quota and their -by-key forms,
limit-concurrency) through the engine, with one GatewayState shared by consecutive requests and an injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

from apim_mi.policy import engine
from apim_mi.policy.context import Body, Headers, Response
from apim_mi.policy.gateway import GatewayState, SubscriptionSpec
from test_statements import body_json, entries, make_run, policies


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shared(clock: Clock | None = None) -> GatewayState:
    clock = clock or Clock()
    return GatewayState(clock=clock, wall_clock=clock)  # wall time 1000: 00:16:40 UTC on 1 January 1970


async def run_once(xml: str, state: GatewayState, *, backend: Response | None = None, **kw: Any) -> engine.PolicyRun:
    """One request: inbound (+ backend); when the proxy would forward, outbound on ``backend``; then finish."""
    run = make_run(xml, **kw)
    run.services.state = state
    await engine.run_inbound(run)
    if run.response is None and run.forward:
        run.context.response = backend or Response(200, "OK", Headers([("Content-Type", "text/plain")]), Body(b"hi"))
        await engine.run_outbound(run)
        run.response = run.response or run.context.response
    engine.finish(run)
    for name, value in run.response_headers:  # what the addon puts on the flow's response
        run.response.headers.set(name, [value])
    return run


# -- value cache -----------------------------------------------------------------------------------------------


async def test_value_cache_ttl_default_value_and_remove_shared_across_requests() -> None:
    clock = Clock()
    state = shared(clock)
    lookup = policies('<cache-lookup-value key="token" variable-name="t" default-value="none" />'
                      '<set-header name="X-T" exists-action="override"><value>@((string)context.Variables["t"])</value>'
                      "</set-header>")  # fmt: skip
    run = await run_once(lookup, state)
    assert run.context.request.headers.get("X-T") == "none"
    assert "miss" in entries(run, "cache-lookup-value")[0]["message"]
    assert "in-process store" in entries(run, "cache-lookup-value")[0]["store"]
    await run_once(policies('<cache-store-value key="token" value="@("abc")" duration="60" caching-type="external" />'),
                   state)  # fmt: skip
    run = await run_once(lookup, state)
    assert run.context.request.headers.get("X-T") == "abc"
    assert "hit" in entries(run, "cache-lookup-value")[0]["message"]
    clock.now += 61
    run = await run_once(lookup, state)
    assert run.context.request.headers.get("X-T") == "none"
    await run_once(policies('<cache-store-value key="token" value="v" duration="60" />'), state)
    await run_once(policies('<cache-remove-value key="token" />'), state)
    run = await run_once(policies('<cache-lookup-value key="token" variable-name="t" />'), state)
    assert "t" not in run.context.variables


# -- response cache --------------------------------------------------------------------------------------------

LOOKUP = ('<cache-lookup vary-by-developer="false" vary-by-developer-groups="false" downstream-caching-type="private">'
          "<vary-by-header>Accept</vary-by-header><vary-by-query-parameter>version</vary-by-query-parameter>"
          "</cache-lookup>")  # fmt: skip


async def test_response_cache_hit_miss_vary_by_query_and_header() -> None:
    clock = Clock()
    state = shared(clock)
    xml = policies(LOOKUP, outbound='<cache-store duration="30" />')
    first = await run_once(xml, state, url="https://api.test/items?version=1&other=a",
                           backend=Response(200, "OK", Headers([("Content-Type", "application/json")]), Body(b"{}")))
    assert first.forward and "miss" in entries(first, "cache-lookup")[0]["message"]
    revalidating = await run_once(xml, state, url="https://api.test/items?version=9",
                                  headers=[("Host", "api.test"), ("Cache-Control", "max-age=10")])
    (miss,) = entries(revalidating, "cache-lookup")
    assert miss["message"].startswith("Cache lookup resulted in a miss. Cache headers listed below were removed")
    assert miss["cacheHeaders"] == [{"name": "Cache-Control", "value": "max-age=10"}]
    assert "Cache-Control" not in revalidating.context.request.headers
    assert first.response is not None
    assert first.response.headers.get("Cache-Control") == "private, max-age=30, must-revalidate"
    clock.now += 5
    hit = await run_once(xml, state, url="https://api.test/items?version=1&other=b")
    assert not hit.forward and hit.response is not None and hit.response.body.content == b"{}"
    assert hit.response.headers.get("Age") == "5"
    assert "hit" in entries(hit, "cache-lookup")[0]["message"]
    other = await run_once(xml, state, url="https://api.test/items?version=2")
    assert other.forward
    other_accept = await run_once(xml, state, url="https://api.test/items?version=1",
                                  headers=[("Host", "api.test"), ("Accept", "text/xml")])
    assert other_accept.forward
    clock.now += 30
    assert (await run_once(xml, state, url="https://api.test/items?version=1&other=b")).forward


async def test_response_cache_stores_only_200_unless_cache_response() -> None:
    state = shared()
    xml = policies(LOOKUP, outbound='<cache-store duration="30" />')
    await run_once(xml, state, backend=Response(500, "Err", Headers(), Body(b"x")))
    assert (await run_once(xml, state)).forward
    xml = policies(LOOKUP, outbound='<cache-store duration="30" cache-response="true" />')
    await run_once(xml, state, backend=Response(404, "Not Found", Headers(), Body(b"x")))
    assert not (await run_once(xml, state)).forward


# -- limits ----------------------------------------------------------------------------------------------------


async def test_rate_limit_429_body_retry_after_and_renewal() -> None:
    clock = Clock()
    state = shared(clock)
    xml = policies('<rate-limit calls="2" renewal-period="60" remaining-calls-header-name="X-Remaining" '
                   'total-calls-header-name="X-Total" retry-after-variable-name="wait" />')  # fmt: skip
    key = [("Host", "api.test"), ("Ocp-Apim-Subscription-Key", "k1")]
    first = await run_once(xml, state, headers=key)
    assert first.response is not None and first.response.headers.get("X-Remaining") == "1"
    assert first.response.headers.get("X-Total") == "2"
    assert first.context.subscription is not None and first.context.subscription.key == "k1"
    await run_once(xml, state, headers=key)
    clock.now += 20
    third = await run_once(xml, state, headers=key)
    assert third.response is not None and third.response.status_code == 429
    assert body_json(third.response) == {"statusCode": 429,
                                         "message": "Rate limit is exceeded. Try again in 40 seconds."}
    assert third.response.headers.get("Retry-After") == "40" and third.context.variables["wait"] == 40
    assert third.response.body.content == b'{ "statusCode": 429, "message": "Rate limit is exceeded. Try again in 40 seconds." }'  # noqa: E501
    assert third.context.last_error.source == "rate-limit" and third.context.last_error.reason == "RateLimitExceeded"
    assert third.context.last_error.message == "Rate limit is exceeded"  # APIM's error table
    other = await run_once(xml, state, url="https://api.test/x?subscription-key=k2")
    assert other.response is not None and other.response.status_code == 200  # its own counter
    clock.now += 41
    assert (await run_once(xml, state, headers=key)).response.status_code == 200


async def test_rate_limit_by_key_increment_condition_counts_the_final_response() -> None:
    state = shared()
    xml = policies('<rate-limit-by-key calls="1" renewal-period="60" counter-key="@(context.Request.IpAddress)" '
                   'increment-condition="@(context.Response.StatusCode == 200)" />')  # fmt: skip
    await run_once(xml, state, backend=Response(500, "Err", Headers(), Body(b"")))
    await run_once(xml, state, backend=Response(500, "Err", Headers(), Body(b"")))
    ok = await run_once(xml, state)
    assert ok.response is not None and ok.response.status_code == 200
    blocked = await run_once(xml, state)
    assert blocked.response is not None and blocked.response.status_code == 429


async def test_quota_403_body_with_timespan_and_increment_count() -> None:
    clock = Clock()
    state = shared(clock)
    xml = policies('<quota-by-key calls="3" renewal-period="3600" counter-key="k" increment-count="2" />')
    assert (await run_once(xml, state)).response.status_code == 200
    clock.now += 1
    denied = await run_once(xml, state)
    assert denied.response is not None and denied.response.status_code == 403
    assert body_json(denied.response) == {"statusCode": 403, "message": "Out of call volume quota. Quota will be "
                                          "replenished in 00:43:19."}  # fmt: skip
    assert denied.context.last_error.reason == "QuotaExceeded"
    xml = policies('<quota calls="10" renewal-period="86400"><api name="Orders" calls="1" /></quota>')
    from apim_mi.policy.context import Api

    run = make_run(xml)
    run.services.state = state
    run.context.api = Api(id="orders", name="Orders")
    await engine.run_inbound(run)
    assert run.response is None
    run = make_run(xml)
    run.services.state = state
    run.context.api = Api(id="orders", name="Orders")
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 403


async def test_declared_subscription_is_context_subscription() -> None:
    state = shared()
    state.subscriptions = {"p1": SubscriptionSpec("gold", "Gold plan", "p1", "s1")}
    run = await run_once(policies(), state, headers=[("Host", "a"), ("Ocp-Apim-Subscription-Key", "p1")])
    assert run.context.subscription is not None
    assert (run.context.subscription.id, run.context.subscription.name) == ("gold", "Gold plan")


async def test_limit_concurrency_rejects_while_full_and_frees_the_slot() -> None:
    state = shared()
    gate = asyncio.Event()

    class SlowSender:
        async def __call__(self, *a: Any, **kw: Any) -> Response:
            await gate.wait()
            return Response(200, "OK", Headers(), Body(b"{}"))

    xml = policies('<limit-concurrency key="k" max-count="1"><send-request mode="new" response-variable-name="r">'
                   "<set-url>https://side.test/</set-url></send-request></limit-concurrency>")  # fmt: skip
    first = make_run(xml, sender=SlowSender())  # type: ignore[arg-type]
    first.services.state = state
    task = asyncio.ensure_future(engine.run_inbound(first))
    await asyncio.sleep(0)
    second = await run_once(xml, state)
    assert second.response is not None and second.response.status_code == 429
    assert second.context.last_error.source == "limit-concurrency"
    gate.set()
    await task
    assert state.in_flight == {}


async def test_rate_limit_window_slides_and_a_custom_retry_after_header_replaces_the_default() -> None:
    clock = Clock()
    state = shared(clock)
    xml = policies('<rate-limit-by-key calls="2" renewal-period="60" counter-key="k" '
                   'retry-after-header-name="X-Wait" />')  # fmt: skip
    assert (await run_once(xml, state)).response.status_code == 200  # t=1000
    clock.now += 30
    assert (await run_once(xml, state)).response.status_code == 200  # t=1030
    clock.now += 31
    assert (await run_once(xml, state)).response.status_code == 200  # t=1061: the first call left the window
    clock.now += 1
    blocked = await run_once(xml, state)  # t=1062: 1030 and 1061 are in the window
    assert blocked.response.status_code == 429
    assert blocked.response.headers.get("X-Wait") == "28" and "Retry-After" not in blocked.response.headers


async def test_an_increment_count_expression_is_counted_at_the_end() -> None:
    state = shared()
    xml = policies('<rate-limit-by-key calls="3" renewal-period="60" counter-key="k" '
                   'increment-count="@(context.Response.StatusCode == 200 ? 2 : 0)" />')  # fmt: skip
    await run_once(xml, state, backend=Response(500, "Err", Headers(), Body(b"")))  # counts 0
    assert (await run_once(xml, state)).response.status_code == 200  # counts 2
    assert (await run_once(xml, state)).response.status_code == 200  # 2 used < 3: allowed, counts 2
    assert (await run_once(xml, state)).response.status_code == 429  # 4 used


async def test_quota_periods_start_at_first_period_start_on_the_wall_clock() -> None:
    """APIM aligns quota periods on first-period-start (default 0001-01-01T00:00:00Z), not on the first call: a 3600 s
    period renews on the hour."""
    clock = Clock()  # 00:16:40 UTC
    state = shared(clock)
    hourly = policies('<quota-by-key calls="1" renewal-period="3600" counter-key="a" />')
    assert (await run_once(hourly, state)).response.status_code == 200
    denied = await run_once(hourly, state)
    assert body_json(denied.response) == {"statusCode": 403, "message": "Out of call volume quota. Quota will be "
                                          "replenished in 00:43:20."}  # fmt: skip
    clock.now = 3600.0  # 01:00:00: a new period, not an hour after the first call
    assert (await run_once(hourly, state)).response.status_code == 200
    shifted = policies('<quota-by-key calls="1" renewal-period="3600" counter-key="b" '
                       'first-period-start="1970-01-01T00:30:00Z" />')  # fmt: skip
    clock.now = 1000.0
    assert (await run_once(shifted, state)).response.status_code == 200
    denied = await run_once(shifted, state)
    assert body_json(denied.response)["message"] == "Out of call volume quota. Quota will be replenished in 00:13:20."
    clock.now = 1799.0
    assert (await run_once(shifted, state)).response.status_code == 403
    clock.now = 1800.0
    assert (await run_once(shifted, state)).response.status_code == 200
    bad = await run_once(policies('<quota-by-key calls="1" renewal-period="3600" counter-key="c" '
                                  'first-period-start="next monday" />'), state)  # fmt: skip
    assert bad.response.status_code == 500
    assert "first-period-start 'next monday' is not an ISO 8601 date" in bad.context.last_error.message


async def test_rate_limit_renewal_period_over_300_seconds_is_refused() -> None:
    import pytest
    from apim_mi.policy.loader import PolicyLoadError, load_policy_text

    for policy in ('<rate-limit calls="5" renewal-period="301" />',
                   '<rate-limit-by-key calls="5" renewal-period="600" counter-key="k" />'):  # fmt: skip
        with pytest.raises(PolicyLoadError, match=r"The MaxInclusive constraint failed \(300\)"):
            load_policy_text(policies(policy), source="p.xml")
    load_policy_text(policies('<rate-limit-by-key calls="5" renewal-period="300" counter-key="k" />'), source="p.xml")
    run = await run_once(policies('<rate-limit-by-key calls="5" renewal-period="@(600)" counter-key="k" />'), shared())
    assert run.response.status_code == 500
    assert run.context.last_error.reason == "ExpressionValueEvaluationFailure"
    assert run.context.last_error.message == ("renewal-period is 600 seconds; a rate limit's sliding window is at most "
                                              "300 seconds.")  # fmt: skip
