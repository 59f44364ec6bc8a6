"""jsonp (JSONP wrapping, APIM's CallbackParameterInvalid) and cross-domain (the Flash/Silverlight policy file the
gateway serves), through the engine."""

from __future__ import annotations

from apim_mi.policy import engine
from apim_mi.policy.context import Body, Headers, Response
from test_statements import body_json, make_run, policies

FLASH = ('<cross-domain><cross-domain-policy><allow-access-from domain="*.contoso.test" /></cross-domain-policy>'
         "</cross-domain>")  # fmt: skip


async def outbound(xml: str, url: str) -> engine.PolicyRun:
    run = make_run(xml, url=url)
    await engine.run_inbound(run)
    run.context.response = Response(200, "OK", Headers([("Content-Type", "application/json")]), Body(b'{"a": 1}'))
    await engine.run_outbound(run)
    return run


async def test_jsonp_wraps_the_json_in_the_named_callback() -> None:
    xml = policies(outbound='<jsonp callback-parameter-name="cb" />')
    run = await outbound(xml, "https://api.test/items?cb=app.onData")
    answer = run.response or run.context.response
    assert answer.body.content == b'app.onData({"a": 1});'
    assert answer.headers.get("Content-Type") == "application/javascript; charset=utf-8"
    plain = await outbound(xml, "https://api.test/items")
    assert (plain.response or plain.context.response).body.content == b'{"a": 1}'


async def test_jsonp_refuses_a_callback_that_is_not_an_identifier() -> None:
    run = await outbound(policies(outbound='<jsonp callback-parameter-name="cb" />'),
                         "https://api.test/items?cb=alert(1)//")  # fmt: skip
    assert run.response is not None and run.response.status_code == 400
    message = "Value of callback parameter cb is not a valid JavaScript identifier."
    assert body_json(run.response) == {"statusCode": 400, "message": message}
    assert run.context.last_error.reason == "CallbackParameterInvalid" and run.context.last_error.message == message


async def test_cross_domain_serves_the_policy_file_and_lets_other_requests_go() -> None:
    run = make_run(policies(FLASH), url="https://api.test/crossdomain.xml")
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 200 and not run.forward
    assert run.response.body.content.decode().startswith("<cross-domain-policy><allow-access-from")
    assert run.response.headers.get("Content-Type") == "text/xml; charset=utf-8"
    other = make_run(policies(FLASH), url="https://api.test/clientaccesspolicy.xml")  # no Silverlight document
    await engine.run_inbound(other)
    assert other.response is None and other.forward
