"""Access checks through the engine: cors (preflight answered by the gateway, CORS headers on allowed responses,
terminate-unmatched-request) and ip-filter (403 "Forbidden", CallerIpNotAllowed)."""

from __future__ import annotations

import json

import pytest
from apim_mi.policy import engine
from test_statements import entries, policies
from test_transform import make_run

CORS = """<cors allow-credentials="{credentials}" terminate-unmatched-request="{terminate}">
    <allowed-origins><origin>https://app.contoso.com</origin><origin>http://localhost:3000/</origin></allowed-origins>
    <allowed-methods preflight-result-max-age="300"><method>GET</method><method>PUT</method></allowed-methods>
    <allowed-headers><header>Content-Type</header><header>X-Trace</header></allowed-headers>
    <expose-headers><header>X-Request-Id</header></expose-headers>
</cors>"""


def cors_policy(credentials: str = "true", terminate: str = "true") -> str:
    return policies(inbound=CORS.format(credentials=credentials, terminate=terminate))


async def test_cors_preflight_is_answered_by_the_gateway() -> None:
    run = make_run(cors_policy(), method="OPTIONS", headers=[
        ("Origin", "https://app.contoso.com"), ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "content-type, x-trace"),
    ])  # fmt: skip
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 200
    assert run.response.headers.pairs() == [
        ("Access-Control-Allow-Origin", "https://app.contoso.com"), ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Allow-Methods", "PUT"), ("Access-Control-Allow-Headers", "content-type,x-trace"),
        ("Access-Control-Max-Age", "300"),
    ]  # fmt: skip
    assert run.response.body is not None and run.response.body.content == b""
    assert not run.forward


@pytest.mark.parametrize(("origin", "method", "headers"), [
    ("https://evil.example", "GET", ""),
    ("https://app.contoso.com", "DELETE", ""),
    ("https://app.contoso.com", "GET", "X-Other"),
])  # fmt: skip
async def test_cors_unmatched_preflight_gets_an_empty_200(origin: str, method: str, headers: str) -> None:
    pairs = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if headers:
        pairs.append(("Access-Control-Request-Headers", headers))
    run = make_run(cors_policy(terminate="false"), method="OPTIONS", headers=pairs)
    await engine.run_inbound(run)
    assert run.response is not None and (run.response.status_code, run.response.headers.pairs()) == (200, [])
    assert "does not match the policy" in entries(run, "cors")[-1]["message"]


async def test_cors_actual_request_gets_headers_on_its_response() -> None:
    run = make_run(cors_policy(credentials="false"), method="GET", headers=[("Origin", "http://localhost:3000")])
    await engine.run_inbound(run)
    assert run.response is None and run.forward
    assert list(run.response_headers) == [("Access-Control-Allow-Origin", "http://localhost:3000"),
                                    ("Access-Control-Expose-Headers", "X-Request-Id")]  # fmt: skip


async def test_cors_wildcard_origin_without_credentials_answers_star() -> None:
    xml = policies(inbound="<cors><allowed-origins><origin>*</origin></allowed-origins>"
                           "<allowed-headers><header>*</header></allowed-headers></cors>")  # fmt: skip
    run = make_run(xml, method="OPTIONS", headers=[("Origin", "https://x.test"),
                                                   ("Access-Control-Request-Method", "POST"),
                                                   ("Access-Control-Request-Headers", "X-Anything")])  # fmt: skip
    await engine.run_inbound(run)
    assert run.response is not None and run.response.headers.get("Access-Control-Allow-Origin") == "*"
    assert "Access-Control-Max-Age" not in run.response.headers


@pytest.mark.parametrize(("terminate", "method", "answered"), [
    ("true", "GET", True), ("false", "GET", False), ("true", "POST", False),
])  # fmt: skip
async def test_cors_unmatched_actual_request(terminate: str, method: str, answered: bool) -> None:
    run = make_run(cors_policy(terminate=terminate), method=method, headers=[("Origin", "https://evil.example")])
    await engine.run_inbound(run)
    assert (run.response is not None) is answered and not run.response_headers
    if answered:
        assert run.response is not None and run.response.status_code == 200 and run.response.body is not None
        assert run.response.body.content == b""


async def test_cors_without_origin_is_not_cross_origin() -> None:
    run = make_run(cors_policy(), method="GET")
    await engine.run_inbound(run)
    assert run.response is None and not run.response_headers


IP_FILTER = """<ip-filter action="{action}">
    <address>10.0.0.7</address><address>2001:db8::/32</address>
    <address-range from="192.168.1.10" to="192.168.1.20" />
</ip-filter>"""


@pytest.mark.parametrize(("action", "ip", "allowed"), [
    ("allow", "10.0.0.7", True), ("allow", "192.168.1.15", True), ("allow", "2001:db8::5", True),
    ("allow", "::ffff:10.0.0.7", True), ("allow", "192.168.1.21", False), ("allow", "127.0.0.1", False),
    ("forbid", "192.168.1.10", False), ("forbid", "127.0.0.1", True),
])  # fmt: skip
async def test_ip_filter(action: str, ip: str, allowed: bool) -> None:
    xml = policies(inbound=IP_FILTER.format(action=action),
                   on_error='<set-header name="X-Reason" exists-action="override">'
                            "<value>@(context.LastError.Reason + \": \" + context.LastError.Message)</value>"
                            "</set-header>")  # fmt: skip
    run = make_run(xml)
    run.context.request.ip_address = ip
    await engine.run_inbound(run)
    if allowed:
        assert run.response is None and run.forward
        return
    assert run.response is not None and run.response.status_code == 403
    assert json.loads(run.response.body.content) == {"statusCode": 403, "message": "Forbidden"}  # type: ignore[union-attr]
    assert run.response.headers.get("X-Reason") == f"CallerIpNotAllowed: Caller IP address {ip} is not allowed. " \
                                                    "Access denied."  # fmt: skip
