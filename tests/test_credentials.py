"""validate-azure-ad-token against the emulator's OpenID discovery, get-authorization-context from the rules file's
credential-manager stand-in, and authentication-certificate presenting a client certificate to a backend that
requires one (send-request through aiohttp here; the forwarded request through mitmdump in test_content_e2e)."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from apim_mi.policy import engine
from apim_mi.policy.statements import security
from test_statements import entries, policies
from test_transform import make_run


@pytest.fixture
async def entra(emu: Any) -> dict[str, Any]:
    """A token from the emulator for api://orders, its claims, and settings pointing OpenID discovery at it."""
    from emulator_helpers import raw_token

    security._CACHE.clear()
    status, _, body = await raw_token(emu.emulator, "api://orders")
    assert status == 200
    token = body["access_token"]
    return {"token": token, "claims": jwt.decode(token, options={"verify_signature": False}), "tenant": emu.tenant_id,
            "settings": {"entra_authority": emu.url}}  # fmt: skip


def aad(tenant: str, inner: str = "", attrs: str = "") -> str:
    return policies(inbound=f'<validate-azure-ad-token tenant-id="{tenant}" {attrs}>{inner}</validate-azure-ad-token>',
                    on_error='<set-header name="X-Reason" exists-action="override">'
                             "<value>@(context.LastError.Reason)</value></set-header>")  # fmt: skip


async def run_aad(entra: dict[str, Any], xml: str, token: str | None = None) -> engine.PolicyRun:
    auth = [("Authorization", f"Bearer {token or entra['token']}")] if token != "" else []
    run = make_run(xml, headers=auth, settings=entra["settings"], send=None)
    await engine.run_inbound(run)
    return run


async def test_validate_azure_ad_token_accepts_the_tenants_token(entra: dict[str, Any]) -> None:
    appid = entra["claims"]["appid"]
    inner = (f"<client-application-ids><application-id>{appid}</application-id></client-application-ids>"
             "<audiences><audience>api://orders</audience></audiences>"
             f'<required-claims><claim name="tid"><value>{entra["tenant"]}</value></claim></required-claims>')
    run = await run_aad(entra, aad(entra["tenant"], inner, 'output-token-variable-name="jwt"'))
    assert run.response is None and run.forward, run.trace.entries
    assert run.context.variables["jwt"].payload["aud"] == "api://orders"
    assert entries(run, "validate-azure-ad-token")[-1]["claims"]["appid"] == appid


@pytest.mark.parametrize(("tenant", "inner", "token", "reason"), [
    ("TENANT", "", "", "TokenNotPresent"),
    ("TENANT", "", "not-a-jwt", "JwtInvalid"),
    # a tenant the emulator does not serve has no OpenID configuration, so no keys
    ("00000000-0000-0000-0000-000000000bad", "", None, "TokenSignatureKeyNotFound"),
    ("TENANT", "<backend-application-ids><application-id>payments</application-id></backend-application-ids>", None,
     "TokenAudienceNotAllowed"),
    ("TENANT", "<client-application-ids><application-id>someone-else</application-id></client-application-ids>",
     None, "TokenClaimValueNotAllowed"),
    ("TENANT", '<required-claims><claim name="roles"><value>Orders.Write</value></claim></required-claims>', None,
     "TokenClaimNotFound"),
])  # fmt: skip
async def test_validate_azure_ad_token_failures(entra: dict[str, Any], tenant: str, inner: str, token: str | None,
                                                reason: str) -> None:  # fmt: skip
    xml = aad(tenant.replace("TENANT", entra["tenant"]), inner, 'failed-validation-error-message="Who are you?"')
    run = await run_aad(entra, xml, token)
    assert run.response is not None and run.response.status_code == 401
    assert json.loads(run.response.body.content) == {"statusCode": 401, "message": "Who are you?"}  # type: ignore[union-attr]
    assert run.response.headers.get("X-Reason") == reason




AUTHORIZATIONS = {"github": {"octo": {"access_token": "gho_abc123secret", "claims": {"login": "octo"}}}}
USE_TOKEN = """<get-authorization-context provider-id="github" authorization-id="{auth}" context-variable-name="ctx"
    identity-type="managed" ignore-error="{ignore}" />
<set-header name="Authorization" exists-action="override">
    <value>@("token " + ((Authorization)context.Variables.GetValueOrDefault("ctx"))?.AccessToken)</value>
</set-header>
<set-header name="X-Login" exists-action="override">
    <value>@(((Authorization)context.Variables["ctx"])?.Claims.GetValueOrDefault("login", "-").ToString()
        ?? "none")</value>
</set-header>"""


async def test_get_authorization_context_from_the_rules_file() -> None:
    run = make_run(policies(inbound=USE_TOKEN.format(auth="octo", ignore="false")),
                   settings={"authorizations": AUTHORIZATIONS})  # fmt: skip
    await engine.run_inbound(run)
    assert run.response is None, run.trace.entries
    assert run.context.request.headers.get("Authorization") == "token gho_abc123secret"
    assert run.context.request.headers.get("X-Login") == "octo"
    assert "gho_abc123secret" not in json.dumps(run.trace.to_json())


async def test_get_authorization_context_unknown_connection() -> None:
    run = make_run(policies(inbound=USE_TOKEN.format(auth="nobody", ignore="false"),
                            on_error='<set-variable name="why" value="@(context.LastError.Reason)" />'),
                   settings={"authorizations": AUTHORIZATIONS})  # fmt: skip
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 500
    assert run.context.variables["why"] == "AuthorizationNotFound"
    run = make_run(policies(inbound=USE_TOKEN.format(auth="nobody", ignore="true")), settings={})
    await engine.run_inbound(run)
    assert run.response is None and run.context.variables["ctx"] is None
    assert run.context.request.headers.get("X-Login") == "none"


# ------------------------------------------------------------------------------------------ authentication-certificate


SIDE = """<send-request mode="new" response-variable-name="r" timeout="10" ignore-error="{ignore}">
    <set-url>{url}/mtls</set-url><set-method>GET</set-method>{cert}
</send-request>
<return-response><set-status code="@(((IResponse)context.Variables["r"])?.StatusCode ?? 599)" />
<set-body>@(((IResponse)context.Variables["r"])?.Body.As&lt;string&gt;() ?? "")</set-body></return-response>"""


@pytest.mark.parametrize("cert", [
    '<authentication-certificate certificate-id="orders-pem" />',
    '<authentication-certificate thumbprint="ORDERS-PFX" />',
    '<authentication-certificate body="@(Convert.FromBase64String(context.Variables.GetValueOrDefault&lt;string&gt;'
    '(&quot;pfx&quot;)))" password="pw" />',
])  # fmt: skip
async def test_authentication_certificate_in_send_request(pki: dict[str, Any], mtls_backend: str, cert: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import base64

    monkeypatch.setenv("SSL_CERT_FILE", str(pki["dir"] / "ca.pem"))
    d = pki["dir"]
    settings = {"certificates": {"orders-pem": {"path": str(d / "client.pem")},
                                 "orders-pfx": {"path": str(d / "client.pfx"), "password": "pw"}}}  # fmt: skip
    xml = policies(inbound=SIDE.format(url=mtls_backend, cert=cert, ignore="false"))
    run = make_run(xml, settings=settings, send=None)
    run.context.variables["pfx"] = base64.b64encode((d / "client.pfx").read_bytes()).decode()
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 200, run.trace.entries
    assert json.loads(run.response.body.content) == {"client": "orders-client"}  # type: ignore[union-attr]
    thumbprint = entries(run, "authentication-certificate")[-1]["message"].split()[2]
    assert len(thumbprint) == 40 and thumbprint.isupper()


async def test_without_a_client_certificate_the_backend_refuses(pki: dict[str, Any], mtls_backend: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["dir"] / "ca.pem"))
    run = make_run(policies(inbound=SIDE.format(url=mtls_backend, cert="", ignore="true")), send=None)
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 599


async def test_authentication_certificate_unknown_id_fails() -> None:
    xml = policies(inbound='<authentication-certificate certificate-id="nope" />',
                   on_error='<set-variable name="why" value="@(context.LastError.Message)" />')
    run = make_run(xml, settings={"certificates": {}})
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 500
    assert "certificate 'nope' is not declared" in run.context.variables["why"]
