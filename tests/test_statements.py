"""The policy handlers beyond core: send-request, return-response, set-status/body/method, set-backend-service,
rewrite-uri, set-query-parameter, check-header, trace, authentication-basic, validate-jwt; and on-error acting on
the error response. Runs the engine directly with a fake token provider and an injected HTTP sender."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from apim_mi.policy import engine
from apim_mi.policy.context import Body, Context, Headers, Request, Response, Url
from apim_mi.policy.loader import DEFAULT_GLOBAL, compose, load_policy_text
from apim_mi.policy.statements import security
from apim_mi.tokens import Token, TokenError, TokenResult
from apim_mi.trace import Trace


class FakeTokens:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.asked: list[str] = []

    async def get(self, key: Any) -> TokenResult:
        self.asked.append(key.resource)
        if self.fail:
            raise TokenError(key, "AADSTS500011: not found", reason="invalid_resource")
        payload = {"aud": key.resource, "appid": "app", "tid": "t", "exp": int(time.time()) + 3600}
        value = jwt.encode(payload, "k" * 32, algorithm="HS256")
        return TokenResult(Token(value, time.time() + 3600, time.time(), payload), cached=False)


class FakeSender:
    """Records side requests; answers with a canned response (or raises)."""

    def __init__(self, status: int = 200, body: Any = None, exc: Exception | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.status, self.body, self.exc = status, body if body is not None else {"active": True}, exc
        self.routes: dict[str, Any] = {}

    async def __call__(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                       timeout: float) -> Response:  # fmt: skip
        self.sent.append({"method": method, "url": url, "headers": dict(headers), "body": body, "timeout": timeout})
        if self.exc is not None:
            raise self.exc
        payload = self.routes.get(url, self.body)
        return Response(self.status, "OK", Headers([("Content-Type", "application/json")]),
                        Body(json.dumps(payload).encode()))


def make_run(xml: str, *, headers: list[tuple[str, str]] | None = None, url: str = "https://api.test/orders/42?x=1",
             sender: FakeSender | None = None, tokens: FakeTokens | None = None,
             settings: dict[str, Any] | None = None) -> engine.PolicyRun:  # fmt: skip
    policy = compose(DEFAULT_GLOBAL, load_policy_text(xml, source="t.xml"))
    request = Request("GET", Url.parse(url), Headers(headers or [("Host", "api.test")]), Body(b'{"a": 1}'))
    services = engine.Services(tokens or FakeTokens(), "emulator", send=sender or FakeSender(),
                               settings=settings or {})  # type: ignore[arg-type]
    return engine.PolicyRun(policy, Context(request=request), Trace("t"), services)


def policies(inbound: str = "", outbound: str = "", on_error: str = "") -> str:
    return (f"<policies><inbound>{inbound}</inbound><backend><base/></backend><outbound>{outbound}</outbound>"
            f"<on-error>{on_error}</on-error></policies>")


def body_json(resp: Response | None) -> Any:
    assert resp is not None and resp.body is not None
    return json.loads(resp.body.content)


def entries(run: engine.PolicyRun, source: str) -> list[dict[str, Any]]:
    return [e["data"] for sec in run.trace.entries.values() for e in sec if e["source"] == source]


# --------------------------------------------------------------------------------------------------- send-request


async def test_send_request_doc_example_introspection_then_return_response() -> None:
    xml = policies("""
      <set-variable name="token" value="@(context.Request.Headers.GetValueOrDefault("Authorization","scheme param").Split(' ').Last())" />
      <send-request mode="new" response-variable-name="tokenstate" timeout="20" ignore-error="true">
        <set-url>https://introspect.test/introspection</set-url>
        <set-method>POST</set-method>
        <set-header name="Authorization" exists-action="override"><value>basic dXNlcm5hbWU6cGFzc3dvcmQ=</value></set-header>
        <set-header name="Content-Type" exists-action="override"><value>application/x-www-form-urlencoded</value></set-header>
        <set-body>@($"token={(string)context.Variables["token"]}")</set-body>
      </send-request>
      <choose>
        <when condition="@((bool)((IResponse)context.Variables["tokenstate"]).Body.As<JObject>()["active"] == false)">
          <return-response>
            <set-status code="401" reason="Unauthorized" />
            <set-header name="WWW-Authenticate" exists-action="override"><value>Bearer error="invalid_token"</value></set-header>
          </return-response>
        </when>
      </choose>""")  # noqa: E501
    sender = FakeSender(body={"active": False})
    run = make_run(xml, headers=[("Authorization", "Bearer abc")], sender=sender)
    await engine.run_inbound(run)
    assert sender.sent == [{"method": "POST", "url": "https://introspect.test/introspection", "timeout": 20.0,
                            "headers": {"Authorization": "basic dXNlcm5hbWU6cGFzc3dvcmQ=",
                                        "Content-Type": "application/x-www-form-urlencoded"},
                            "body": b"token=abc"}]  # fmt: skip
    assert run.response is not None and run.response.status_code == 401
    assert run.response.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert entries(run, "return-response")[0]["response"]["status"] == {"code": "Unauthorized",
                                                                        "reason": "Unauthorized"}
    assert entries(run, "set-status")[0]["message"] == ["Response status code was set to 401",
                                                        "Response status reason was set to 'Unauthorized'"]
    # active=true: no return-response, request goes on
    run = make_run(xml, headers=[("Authorization", "Bearer abc")], sender=FakeSender(body={"active": True}))
    await engine.run_inbound(run)
    assert run.response is None and run.forward


async def test_send_request_defaults_mode_copy_and_mi_child_acts_on_side_request() -> None:
    xml = policies("""
      <send-request mode="copy" response-variable-name="r">
        <set-url>https://vault.test/secrets/s</set-url>
        <authentication-managed-identity resource="https://vault.azure.net" />
      </send-request>
      <set-header name="X-Status" exists-action="override">
        <value>@(((IResponse)context.Variables["r"]).StatusCode.ToString())</value></set-header>""")
    sender = FakeSender()
    run = make_run(xml, headers=[("Host", "api.test"), ("X-Client", "1")], sender=sender)
    await engine.run_inbound(run)
    sent = sender.sent[0]
    assert sent["method"] == "GET" and sent["timeout"] == 60.0 and sent["body"] == b'{"a": 1}'  # default timeout 60
    assert sent["headers"]["X-Client"] == "1" and sent["headers"]["Authorization"].startswith("Bearer ")
    assert "Host" not in sent["headers"]
    assert "Authorization" not in run.context.request.headers  # the main request got no token
    assert run.injections == []
    assert run.context.request.headers.get("X-Status") == "200"


@pytest.mark.parametrize("exc,reason", [(TimeoutError(), "Timeout"), (OSError("refused"), "BackendConnectionFailure")])
async def test_send_request_failure_and_ignore_error(exc: Exception, reason: str) -> None:
    side = '<send-request response-variable-name="r" ignore-error="{}"><set-url>http://x.test/</set-url>' \
           '<set-method>GET</set-method></send-request>'
    run = make_run(policies(side.format("false")), sender=FakeSender(exc=exc))
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 500
    assert run.context.last_error is not None and run.context.last_error.reason == reason
    assert run.context.last_error.source == "send-request"
    run = make_run(policies(side.format("true") + '<set-variable name="isnull" value="@(context.Variables["r"] == null)" />'),  # noqa: E501
                   sender=FakeSender(exc=exc))  # fmt: skip
    await engine.run_inbound(run)
    assert run.response is None and run.context.variables["r"] is None and run.context.variables["isnull"] is True


async def test_send_request_mi_failure_inside_is_ignored_with_ignore_error() -> None:
    xml = policies('<send-request response-variable-name="r" ignore-error="true"><set-url>http://x.test/</set-url>'
                   '<set-method>GET</set-method><authentication-managed-identity resource="r" /></send-request>')
    sender = FakeSender()
    run = make_run(xml, sender=sender, tokens=FakeTokens(fail=True))
    await engine.run_inbound(run)
    assert run.response is None and run.context.variables["r"] is None and sender.sent == []


async def test_failed_acquisition_names_the_configured_tenant_in_the_authority() -> None:
    run = make_run(policies('<authentication-managed-identity resource="api://orders" />'),
                   tokens=FakeTokens(fail=True), settings={"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47"})
    await engine.run_inbound(run)
    failure = entries(run, "authentication-managed-identity")[0]
    assert failure["message"] == ("Obtaining managed identity token using clientId:SYSTEM-ASSIGNED AAD Authority:"
                                  "https://login.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47 for api://orders "
                                  "audience failed.")
    assert failure["errorResponse"] == {"error": "invalid_resource", "error_description": "AADSTS500011: not found"}
    assert run.context.last_error is not None and run.context.last_error.source == "authentication-managed-identity"


async def test_non_2xx_is_not_an_error() -> None:
    xml = policies('<send-request response-variable-name="r"><set-url>http://x.test/</set-url>'
                   '<set-method>GET</set-method></send-request>'
                   '<set-variable name="s" value="@(((IResponse)context.Variables["r"]).StatusCode)" />')
    run = make_run(xml, sender=FakeSender(status=403))
    await engine.run_inbound(run)
    assert run.response is None and run.context.variables["s"] == 403


# ------------------------------------------------------------------------------------- return-response & friends


async def test_return_response_default_is_200_empty_and_skips_backend() -> None:
    run = make_run(policies('<return-response /><set-header name="never" exists-action="override">'
                            '<value>x</value></set-header>'))
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 200 and run.response.body.content == b""
    assert not run.forward and "never" not in run.context.request.headers


async def test_return_response_from_variable_with_body() -> None:
    xml = policies('<send-request response-variable-name="r"><set-url>http://x.test/</set-url>'
                   '<set-method>GET</set-method></send-request>'
                   '<return-response response-variable-name="r"><set-status code="201" />'
                   '<set-body>@("{\\"n\\": " + ((IResponse)context.Variables["r"]).StatusCode + "}")</set-body>'
                   '</return-response>')
    run = make_run(xml)
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 201 and run.response.status_reason == "Created"
    assert body_json(run.response) == {"n": 200}
    assert run.response.headers.get("Content-Type") == "application/json"


async def test_outbound_set_status_body_header_act_on_response() -> None:
    run = make_run(policies(outbound='<set-status code="202" reason="Fine" /><set-body>done</set-body>'
                                     '<set-header name="X-Out" exists-action="override"><value>1</value></set-header>'))
    await engine.run_inbound(run)
    run.context.response = Response(200, "OK", Headers([("Content-Type", "text/plain")]), Body(b"orig"))
    await engine.run_outbound(run)
    resp = run.context.response
    assert run.response is None and (resp.status_code, resp.status_reason, resp.body.content) == (202, "Fine", b"done")
    assert resp.headers.get("X-Out") == "1" and "X-Out" not in run.context.request.headers


async def test_on_error_acts_on_the_error_response() -> None:
    xml = policies('<set-variable name="x" value="@(((string)null).Length)" />',
                   on_error='<set-status code="503" reason="Busy" /><set-header name="X-Reason" exists-action="override">'  # noqa: E501
                            '<value>@(context.LastError.Reason)</value></set-header>')
    run = make_run(xml)
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 503
    assert run.response.headers.get("X-Reason") == "ExpressionValueEvaluationFailure"
    assert body_json(run.response)["message"] == "Internal server error"  # set-body is not allowed in on-error


async def test_set_method_and_mock_response() -> None:
    run = make_run(policies('<set-method>POST</set-method>'))
    await engine.run_inbound(run)
    assert run.context.request.method == "POST"
    run = make_run(policies('<mock-response status-code="204" content-type="application/json" />'))
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 204


async def test_trace_policy_adds_custom_entry() -> None:
    run = make_run(policies('<trace source="my-api" severity="information"><message>@("hi " + context.Request.Method)'
                            '</message><metadata name="k" value="v" /></trace>'))
    await engine.run_inbound(run)
    data = entries(run, "my-api")[0]
    assert data["message"] == "hi GET" and data["severity"] == "information" and data["metadata"] == {"k": "v"}


async def test_context_trace_calls_become_entries_of_the_calling_policy() -> None:
    """``context.Trace(message)`` from code lands in the trace under the policy whose expression called it, before
    that expression's own "successfully evaluated" entry; a failing expression still records what it traced."""
    run = make_run(policies('<set-variable name="v" value="@{ context.Trace(&quot;seen &quot; + '
                            'context.Request.Method); return 1; }" />'
                            '<set-header name="x" exists-action="override"><value>'
                            '@{ context.Trace(&quot;about to fail&quot;); return ((string)null).Length.ToString(); }'
                            '</value></set-header>'))
    await engine.run_inbound(run)
    variable = entries(run, "set-variable")
    assert variable[0] == {"message": "seen GET", "emulator": "wording not verified against Azure"}
    assert variable[1]["message"] == "Expression was successfully evaluated."
    assert entries(run, "set-header")[0]["message"] == "about to fail"
    assert run.context.last_error is not None and run.context.last_error.reason == "ExpressionValueEvaluationFailure"
    assert run.context.traces == []


# --------------------------------------------------------------------------------------------------------- routing


async def test_forward_request_options() -> None:
    run = make_run('<policies><inbound /><backend><forward-request timeout-ms="1500" follow-redirects="true" '
                   'fail-on-error-status-code="true" /></backend><outbound /><on-error /></policies>')
    await engine.run_inbound(run)
    assert run.forward and run.forward_timeout == 1.5 and run.fail_on_error_status and run.response is None
    assert "follow-redirects" in run.warnings[0]
    assert engine.backend_error_status(run, 404) is not None and engine.backend_error_status(run, 302) is None
    run = make_run(policies())  # the global <forward-request /> through <base/>: APIM's defaults
    await engine.run_inbound(run)
    assert run.forward and run.forward_timeout == 300 and not run.fail_on_error_status
    assert engine.backend_error_status(run, 500) is None


async def test_backend_without_forward_request_answers_from_outbound() -> None:
    run = make_run('<policies><inbound /><backend /><outbound><set-body>local</set-body></outbound>'
                   '<on-error /></policies>')
    await engine.run_inbound(run)
    assert not run.forward and run.response is not None
    assert (run.response.status_code, run.response.body.content if run.response.body else None) == (200, b"local")


async def test_set_backend_service_base_url_and_backend_id() -> None:
    run = make_run(policies('<set-backend-service base-url="http://contoso.test/api/8.2/" />'),
                   url="https://gw.test/partners/15?version=2013-05&subscription-key=abcdef",
                   headers=[("Host", "gw.test")])
    await engine.run_inbound(run)
    assert str(run.context.request.url) == "http://contoso.test/api/8.2/partners/15?version=2013-05&subscription-key=abcdef"
    assert run.context.request.headers.get("Host") == "contoso.test"
    run = make_run(policies('<set-backend-service backend-id="orders" />'), settings={"backends": {"orders": "http://o.test:81"}})
    await engine.run_inbound(run)
    assert str(run.context.request.url) == "http://o.test:81/orders/42?x=1"
    run = make_run(policies('<set-backend-service backend-id="nope" />'))
    await engine.run_inbound(run)
    assert run.context.last_error is not None and run.context.last_error.reason == "BackendNotFound"


async def test_rewrite_uri_and_set_query_parameter() -> None:
    run = make_run(policies('<rewrite-uri template="/v2/items/{id}?mode=full" />'), url="https://api.test/items?id=7&z=1")
    await engine.run_inbound(run)
    assert str(run.context.request.url) == "https://api.test/v2/items/7?mode=full&z=1"
    run = make_run(policies('<rewrite-uri template="/only" copy-unmatched-params="false" />'), url="https://a.test/p?q=1")
    await engine.run_inbound(run)
    assert str(run.context.request.url) == "https://a.test/only"
    run = make_run(policies('<set-query-parameter name="api-version" exists-action="override"><value>2024</value>'
                            '</set-query-parameter><set-query-parameter name="x" exists-action="delete" />'
                            '<set-query-parameter name="y" exists-action="append"><value>a</value><value>b</value>'
                            '</set-query-parameter>'))
    await engine.run_inbound(run)
    assert str(run.context.request.url) == "https://api.test/orders/42?api-version=2024&y=a&y=b"


# -------------------------------------------------------------------------------------------- check-header & basic


CHECK = ('<check-header name="X-Key" failed-check-httpcode="403" failed-check-error-message="Nope" ignore-case="{ic}">'
         '<value>Secret</value><value>Other</value></check-header>')


@pytest.mark.parametrize("headers,ic,status,reason", [
    ([("X-Key", "Secret")], "false", None, None),
    ([("X-Key", "secret")], "true", None, None),
    ([("X-Key", "secret")], "false", 403, "HeaderValueNotAllowed"),
    ([], "false", 403, "HeaderNotFound"),
])  # fmt: skip
async def test_check_header(headers: list[tuple[str, str]], ic: str, status: int | None, reason: str | None) -> None:
    run = make_run(policies(CHECK.format(ic=ic)), headers=headers)
    await engine.run_inbound(run)
    if status is None:
        assert run.response is None and entries(run, "check-header")[0]["message"] == "Header validated."
        return
    assert run.response is not None and run.response.status_code == status
    assert body_json(run.response) == {"statusCode": 403, "message": "Nope"}
    assert run.context.last_error.reason == reason and run.context.last_error.source == "check-header"
    if reason == "HeaderNotFound":
        assert run.context.last_error.message == "Header X-Key was not found in the request. Access denied."


async def test_check_header_status_visible_in_on_error() -> None:
    run = make_run(policies(CHECK.format(ic="false"), on_error='<set-header name="X-Code" exists-action="override">'
                            '<value>@(context.Response.StatusCode.ToString())</value></set-header>'))
    await engine.run_inbound(run)
    assert run.response.status_code == 403 and run.response.headers.get("X-Code") == "403"


async def test_authentication_basic() -> None:
    run = make_run(policies('<authentication-basic username="u" password="p:w" />'))
    await engine.run_inbound(run)
    assert run.context.request.headers.get("Authorization") == "Basic " + base64.b64encode(b"u:p:w").decode()


# --------------------------------------------------------------------------------------------------- validate-jwt

KEY = base64.b64encode(b"s" * 32).decode()


def hs_token(**claims: Any) -> str:
    payload = {"aud": "api://a", "iss": "https://iss.test/", "exp": int(time.time()) + 86_400, "scp": "read write",
               **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, b"s" * 32, algorithm="HS256")


VALIDATE = ('<validate-jwt header-name="Authorization" failed-validation-httpcode="401" '
            'failed-validation-error-message="Unauthorized. Access token is missing or invalid." '
            'output-token-variable-name="jwt">'
            f'<issuer-signing-keys><key>{KEY}</key></issuer-signing-keys>'
            '<audiences><audience>api://a</audience></audiences><issuers><issuer>https://iss.test/</issuer></issuers>'
            '<required-claims><claim name="scp" match="any" separator=" "><value>read</value></claim></required-claims>'
            '</validate-jwt>')


@pytest.mark.parametrize("auth,reason", [
    (None, "TokenNotPresent"),
    ("Bearer not-a-jwt", "JwtInvalid"),
    ("Bearer " + hs_token(aud="api://other"), "TokenAudienceNotAllowed"),
    ("Bearer " + hs_token(iss="https://evil/"), "TokenIssuerNotAllowed"),
    ("Bearer " + hs_token(exp=int(time.time()) - 10), "TokenExpired"),
    ("Bearer " + hs_token(exp=None), "JwtInvalid"),
    ("Bearer " + hs_token(scp=None), "TokenClaimNotFound"),
    ("Bearer " + hs_token(scp="write"), "TokenClaimValueNotAllowed"),
    ("Bearer " + jwt.encode({"aud": "api://a"}, b"x" * 32, algorithm="HS256"), "TokenSignatureInvalid"),
    ("Bearer " + hs_token(), None),
])  # fmt: skip
async def test_validate_jwt_reasons(auth: str | None, reason: str | None) -> None:
    run = make_run(policies(VALIDATE), headers=[("Authorization", auth)] if auth else [])
    await engine.run_inbound(run)
    if reason is None:
        assert run.response is None
        assert run.context.variables["jwt"].payload["aud"] == "api://a"
        return
    assert run.response is not None and run.response.status_code == 401
    assert body_json(run.response) == {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."}  # noqa: E501
    assert run.context.last_error.source == "validate-jwt" and run.context.last_error.reason == reason


async def test_validate_jwt_openid_config_cached(emu: Any) -> None:
    """Against the emulator's discovery document and JWKS, fetched once and cached."""
    from emulator_helpers import raw_token

    security._CACHE.clear()
    status, _, body = await raw_token(emu.emulator, "api://x")
    assert status == 200
    xml = policies(f'<validate-jwt header-name="Authorization"><openid-config url="{emu.openid_configuration_url}" />'
                   '<audiences><audience>api://x</audience></audiences></validate-jwt>')
    for _ in range(3):
        run = make_run(xml, headers=[("Authorization", "Bearer " + body["access_token"])], sender=None)
        run.services.send = None
        await engine.run_inbound(run)
        assert run.response is None, run.trace.entries
    assert emu.stats().jwks_requests == 1
    run = make_run(xml.replace("api://x", "api://y"), headers=[("Authorization", "Bearer " + body["access_token"])])
    run.services.send = None
    await engine.run_inbound(run)
    assert run.context.last_error.reason == "TokenAudienceNotAllowed"


@pytest.mark.parametrize("header", [
    '<set-header name="X-A" exists-action="override"><value>@("a\\nb")</value></set-header>',
    '<set-header name="X-A" exists-action="append"><value>ok</value><value>@("a\\rb")</value></set-header>',
    '<set-header name="@("X-\\r")" exists-action="override"><value>ok</value></set-header>',
    '<set-header name="X-A" exists-action="override"><value>a&#10;b</value></set-header>',
])  # fmt: skip
async def test_set_header_refuses_a_line_break_in_its_name_or_any_value(header: str) -> None:
    """A CR or LF in the name or in any value, literal or evaluated, is an error (on-error, APIM's 500), and the
    header is not set."""
    run = make_run(policies(header))
    await engine.run_inbound(run)
    assert run.error is not None and "contains a line break (CR or LF)" in run.error.message
    assert run.response is not None and run.response.status_code == 500
    assert "X-A" not in run.context.request.headers
