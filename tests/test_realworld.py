"""Real-world policies from public repositories (../shared/corpus/realworld/policies/*.xml or
$APIM_MI_REALWORLD_CORPUS/policies, not vendored; skipped when absent; each names its source repository, path and
commit in its first line), run as deployed: MCP/OAuth and access-control labs of Azure-Samples/AI-Gateway and
samples of Azure-Samples/Apim-Samples. Each loads, runs one plausible request through the engine (a stand-in backend
answers what is forwarded) with no unsupported policy, and answers as the sample documents; a few also run through a
real mitmdump. Placeholders the samples' deploy scripts fill (``{tenant-id}``, ``{backend-id}`` …) and their named
values are filled the same way; Entra ID endpoints point at the emulator."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from apim_mi.policy import engine
from apim_mi.policy.context import Api, Body, Context, Headers, Request, Response, Url
from apim_mi.policy.loader import DEFAULT_GLOBAL, compose, load_policy_text
from apim_mi.policy.statements import security
from apim_mi.trace import Trace
from conftest import REALWORLD
from test_statements import FakeTokens

DATA = REALWORLD / "policies"
SOURCE = re.compile(r"^<!-- Source: https://github\.com/([\w.-]+/[\w.-]+)/blob/([0-9a-f]{40})/(\S+) ")
HMAC_KEY = base64.b64encode(b"apim-samples-signing-key-0123456789abcdef").decode()
GITHUB = {"github": {"octocat": {"access_token": "gho_realworld", "claims": {"login": "octocat"}}},
          "servicenow": {"sn": {"access_token": "sn_realworld"}},
          "spotify": {"spotify-auth": {"access_token": "spotify_realworld"}}}  # fmt: skip

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real-world policies not at {DATA} (see ../shared/corpus/realworld/README.md)"
)


@dataclass
class Case:
    """One fixture and the request it runs: what the sample documents as its answer."""

    file: str
    status: int
    method: str = "GET"
    path: str = "/api/resource"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    token: str | None = None  # an emulator token for this audience goes into Authorization
    hmac_roles: list[str] | None = None  # an HS256 token signed with the sample's key, carrying these roles
    fill: dict[str, str] = field(default_factory=dict)  # the deploy script's placeholders
    named: dict[str, str] = field(default_factory=dict)
    check: Callable[[Response, engine.PolicyRun, dict[str, Any]], None] | None = None


def _json(response: Response) -> Any:
    assert response.body is not None
    return json.loads(response.body.content)


def _backend_saw(header: str, value: str) -> Callable[[Response, engine.PolicyRun, dict[str, Any]], None]:
    def check(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
        assert _json(response)["headers"].get(header) == value, _json(response)

    return check


def _body(expected: Any) -> Callable[[Response, engine.PolicyRun, dict[str, Any]], None]:
    def check(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
        assert _json(response) == expected

    return check


def _header(name: str, value: str) -> Callable[[Response, engine.PolicyRun, dict[str, Any]], None]:
    def check(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
        assert response.headers.get(name) == value, response.headers

    return check


def _forwarded_to(prefix: str) -> Callable[[Response, engine.PolicyRun, dict[str, Any]], None]:
    def check(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
        assert _json(response)["url"].startswith(prefix), _json(response)

    return check


def _prm_document(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
    assert _json(response) == {
        "resource": "https://apim.contoso.test/mcp",
        "authorization_servers": [f"https://login.microsoftonline.com/{env['tenant']}/v2.0"],
        "bearer_methods_supported": ["header"], "scopes_supported": ["api://mcp-client/user_impersonate"],
    }  # fmt: skip


def _no_authorization_forwarded(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
    assert "Authorization" not in _json(response)["headers"]


def _oauth_metadata(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
    assert _json(response)["token_endpoint"] == "https://apim.contoso.test/token"
    assert response.headers.get("access-control-allow-origin") == "*"


def _cors_headers_added(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
    assert ("Access-Control-Allow-Origin", "https://shop.contoso.com") in run.response_headers


def _usage_adds_up(response: Response, run: engine.PolicyRun, env: dict[str, Any]) -> None:
    usage = _json(response)["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


MCP_NAMED = {"McpTenantId": "TENANT", "McpClientId": "api://mcp-client", "APIMGatewayURL": "https://apim.contoso.test",
             "McpApiPath": "mcp"}  # fmt: skip

CASES = [
    Case("aig-access-controlling.xml", 200, token="api://ai-gateway",
         fill={"{tenant-id}": "TENANT", "{client-application-id}": "APPID", "{backend-id}": "openai-backend"},
         check=_forwarded_to("https://openai.contoso.test/openai/")),
    Case("aig-access-controlling.xml", 401, fill={"{tenant-id}": "TENANT", "{client-application-id}": "APPID",
                                                  "{backend-id}": "openai-backend"}),
    Case("aig-mcp-prm-oauth-mcp-api.xml", 200, token="api://mcp-client", named=MCP_NAMED),
    Case("aig-mcp-prm-oauth-mcp-api.xml", 401, named=MCP_NAMED,
         check=_header("WWW-Authenticate", 'Bearer error="invalid_token", resource_metadata='
                                           '"https://apim.contoso.test/.well-known/oauth-protected-resource"')),
    Case("aig-mcp-prm-oauth-prm.xml", 200, named=MCP_NAMED,
         check=_prm_document),
    Case("aig-mcp-github-api.xml", 200, headers={"providerId": "github", "authorizationId": "octocat"},
         check=_backend_saw("Authorization", "Bearer gho_realworld")),
    Case("aig-mcp-servicenow-operation.xml", 200, headers={"providerId": "servicenow", "authorizationId": "sn"},
         check=_backend_saw("Authorization", "Bearer sn_realworld")),
    Case("aig-realtime-mcp-spotify.xml", 200, headers={"providerId": "spotify", "authorizationId": "spotify-auth"},
         check=_backend_saw("Authorization", "Bearer spotify_realworld")),
    Case("aig-a2a-servers-v1.xml", 200, method="OPTIONS",
         headers={"Origin": "https://copilotstudio.microsoft.com", "Access-Control-Request-Method": "POST"},
         check=_header("Access-Control-Allow-Origin", "https://copilotstudio.microsoft.com")),
    Case("aig-mcp-from-api-place-order.xml", 200, token="https://azure-api.net/authorization-manager",
         headers={"agent-id": "agent-7"}),
    Case("aig-private-mcp-place-order.xml", 200, token="https://azure-api.net/authorization-manager",
         check=_no_authorization_forwarded),
    Case("aig-streamable-mcp-auth-client.xml", 401,
         check=_body({"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."})),
    Case("aig-mcp-oauth-metadata-get.xml", 200,
         check=_oauth_metadata, named=MCP_NAMED),
    Case("aig-mcp-oauth-metadata-options.xml", 200, method="OPTIONS",
         check=_header("Access-Control-Allow-Methods", "GET, OPTIONS")),
    Case("apims-cors-baseline-native.xml", 200, headers={"Origin": "https://shop.contoso.com"},
         check=_cors_headers_added),
    Case("apims-oauth-3rd-party-spotify.xml", 200, hmac_roles=["marketing"],
         fill={"{jwt_signing_key}": HMAC_KEY, "{marketing_member_role_id}": "marketing"},
         check=_backend_saw("Authorization", "Bearer spotify_realworld")),
    Case("apims-authx-hr-all-operations.xml", 401, hmac_roles=["sales"],
         fill={"{jwt_signing_key}": HMAC_KEY, "{hr_member_role_id}": "hr-member"},
         check=_body({"statusCode": 401, "message": "Unauthorized"})),
    Case("apims-authx-hr-all-operations.xml", 200, hmac_roles=["hr-member"],
         fill={"{jwt_signing_key}": HMAC_KEY, "{hr_member_role_id}": "hr-member"}),
    Case("apims-all-apis.xml", 200),
    Case("aig-secure-responses-api.xml", 200, method="POST", path="/responses", token="https://management.azure.com/",
         headers={"userId": "ann", "Content-Type": "application/json"}, body=b'{"input": "hello"}',
         fill={"{backend-id}": "openai-backend"}, named={"entraid-tenant": "TENANT"},
         check=_header("x-debug-user-id", "ann")),
    Case("aig-secure-responses-api.xml", 400, method="POST", path="/responses", token="https://management.azure.com/",
         body=b"{}", fill={"{backend-id}": "openai-backend"}, named={"entraid-tenant": "TENANT"}),
    Case("aig-ghcp-byok-entra.xml", 200, method="POST", path="/openai/v1/chat/completions",
         token="https://cognitiveservices.azure.com", body=b'{"model": "gpt-4o", "messages": []}',
         fill={"{tenant-id}": "TENANT", "{backend-id}": "openai-backend", "{group-id}": "g-approved"},
         check=_forwarded_to("https://openai.contoso.test/openai/")),
    Case("aig-ghcp-byok-entra.xml", 401, method="POST", path="/openai/v1/chat/completions",
         fill={"{tenant-id}": "TENANT", "{backend-id}": "openai-backend", "{group-id}": "g-approved"},
         check=_header("WWW-Authenticate", 'Bearer error="invalid_token", error_description="A valid Entra token is '
                                           'required", resource_metadata="https://apim.contoso.test/.well-known/'
                                           'oauth-protected-resource"')),
    Case("apims-costing-mock-ai-response.xml", 200,
         check=_usage_adds_up),
    Case("apims-dynamic-cors-get.xml", 200,
         check=_body({"api": "products", "message": "Hello from products", "corsAllowed": False,
                      "allowedOrigin": ""})),
]


def test_every_fixture_names_its_source_and_there_are_at_least_15() -> None:
    files = sorted(DATA.glob("*.xml"))
    assert len(files) >= 15
    for f in files:
        assert SOURCE.match(f.read_text()), f"{f.name} does not start with its source (repository, commit, path)"
    assert {c.file for c in CASES} == {f.name for f in files}


def policy_text(case: Case, env: dict[str, Any]) -> str:
    text = DATA.joinpath(case.file).read_text()
    for placeholder, value in case.fill.items():
        text = text.replace(placeholder, value.replace("TENANT", env["tenant"]).replace("APPID", env["appid"]))
    # validate-jwt's Entra discovery document: the emulator's, as Entra ID is not reachable from a test
    return text.replace("https://login.microsoftonline.com/common/.well-known/openid-configuration",
                        env["openid_url"])


def backend_answer(request: Request) -> Response:
    """The stand-in backend: 200 with what it received (URL and headers)."""
    seen = {"url": str(request.url), "headers": dict(request.headers.pairs())}
    return Response(200, "OK", Headers([("Content-Type", "application/json")]), Body(json.dumps(seen).encode()))


@pytest.fixture
async def env(emu: Any) -> dict[str, Any]:
    from emulator_helpers import raw_token

    security._CACHE.clear()
    tokens = {}
    for audience in ("api://ai-gateway", "api://mcp-client", "https://azure-api.net/authorization-manager",
                     "https://management.azure.com/", "https://cognitiveservices.azure.com"):
        status, _, body = await raw_token(emu.emulator, audience)
        assert status == 200
        tokens[audience] = body["access_token"]
    appid = jwt.decode(tokens["api://ai-gateway"], options={"verify_signature": False})["appid"]
    return {"tenant": emu.tenant_id, "appid": appid, "tokens": tokens, "authority": emu.url,
            "openid_url": emu.openid_configuration_url}  # fmt: skip


async def graph_or_loopback(method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                            timeout: float, **kw: Any) -> Response:  # fmt: skip
    """Side requests: Microsoft Graph's group-membership answer (the caller is a member) stands in for Graph;
    everything else (OpenID discovery on the emulator) goes out for real, to loopback."""
    from apim_mi.policy.statements.http import default_send

    if url.startswith("https://graph.microsoft.com/"):
        data = json.dumps({"@odata.count": 1, "value": [{"id": "member"}]}).encode()
        return Response(200, "OK", Headers([("Content-Type", "application/json")]), Body(data))
    return await default_send(method, url, headers, body, timeout, **kw)


def request_for(case: Case, env: dict[str, Any]) -> Request:
    headers = [("Host", "apim.contoso.test"), *case.headers.items()]
    if case.token:
        headers.append(("Authorization", f"Bearer {env['tokens'][case.token]}"))
    if case.hmac_roles is not None:
        claims = {"roles": case.hmac_roles, "exp": 4102444800, "sub": "user-1"}
        headers.append(("Authorization", "Bearer " + jwt.encode(claims, base64.b64decode(HMAC_KEY), "HS256")))
    return Request(case.method, Url.parse(f"https://apim.contoso.test{case.path}"), Headers(headers), Body(case.body))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.file.removesuffix('.xml')}-{c.status}")
async def test_real_world_policy_runs(case: Case, env: dict[str, Any]) -> None:
    named = {k: v.replace("TENANT", env["tenant"]) for k, v in case.named.items()}
    policy = compose(DEFAULT_GLOBAL, load_policy_text(policy_text(case, env), source=case.file, named_values=named))
    settings = {"entra_authority": env["authority"], "authorizations": GITHUB,
                "backends": {"openai-backend": "https://openai.contoso.test/openai",
                             "servicenow-backend": "https://contoso.service-now.test/api"}}  # fmt: skip
    services = engine.Services(FakeTokens(), "emulator", send=graph_or_loopback, settings=settings)  # type: ignore[arg-type]
    context = Context(request=request_for(case, env), api=Api(id="products", name="Products", path="api"))
    run = engine.PolicyRun(policy, context, Trace("t"), services)
    await engine.run_inbound(run)
    if run.response is None and run.forward:
        run.context.response = backend_answer(run.context.request)
        await engine.run_outbound(run)
    response = run.response or run.context.response
    unsupported = [e for sec in run.trace.entries.values() for e in sec
                   if e["data"].get("reason") == "PolicyNotSupported"]  # fmt: skip
    assert not unsupported, unsupported
    assert response is not None and response.status_code == case.status, (run.error, run.trace.entries)
    if case.check is not None:
        case.check(response, run, env)


REAL_RULES = """
named_values: {named}
backends:
  demo-backend: "{backend}"
rules:
  - {{name: access-controlling, match: {{host: "{host}", path: /ac}}, policy: aig-access-controlling.xml}}
  - {{name: mcp api, match: {{host: "{host}", path: /mcp}}, policy: aig-mcp-prm-oauth-mcp-api.xml}}
  - name: prm
    match: {{host: "{host}", path: /.well-known/oauth-protected-resource}}
    policy: aig-mcp-prm-oauth-prm.xml
  - {{name: cors, match: {{host: "{host}", path: /products}}, policy: apims-cors-baseline-native.xml}}
"""


def test_real_world_policies_through_mitmdump(tmp_path: Path, emu: Any, backend: Any) -> None:
    """Four of them as a user would run them: mitmdump, the emulator as Entra ID (AZURE_AUTHORITY_HOST), the
    validating backend behind set-backend-service backend-id."""
    import asyncio

    from conftest import DEMO_AUDIENCE
    from emulator_helpers import raw_token
    from proxy import curl, start_mitmdump

    token = asyncio.run(raw_token(emu.emulator, DEMO_AUDIENCE))[2]["access_token"]
    appid = jwt.decode(token, options={"verify_signature": False})["appid"]
    fill = {"{tenant-id}": emu.tenant_id, "{client-application-id}": appid, "{backend-id}": "demo-backend"}
    for name in ("aig-access-controlling.xml", "aig-mcp-prm-oauth-mcp-api.xml", "aig-mcp-prm-oauth-prm.xml",
                 "apims-cors-baseline-native.xml"):  # fmt: skip
        text = DATA.joinpath(name).read_text()
        for k, v in fill.items():
            text = text.replace(k, v)
        (tmp_path / name).write_text(text)
    named = json.dumps({**MCP_NAMED, "McpTenantId": emu.tenant_id, "McpClientId": DEMO_AUDIENCE})
    host = f"127.0.0.1:{backend.port}"
    (tmp_path / "rules.yaml").write_text(REAL_RULES.format(named=named, backend=backend.url, host=host))
    env = {**emu.env("imds"), "AZURE_AUTHORITY_HOST": emu.url}
    proxy = start_mitmdump(["--set", f"mi_rules={tmp_path / 'rules.yaml'}", "--set", "mi_credential=managed-identity"],
                           env=env, confdir=tmp_path / "confdir")  # fmt: skip
    try:
        base = backend.url
        backend.reset()
        status, body = curl("-x", proxy.url, "-H", f"Authorization: Bearer {token}", f"{base}/ac/chat")
        assert status == 200 and body["path"] == "/ac/chat" and body["claims"]["aud"] == DEMO_AUDIENCE, body
        status, body = curl("-x", proxy.url, f"{base}/ac/chat")
        # no failed-validation-error-message: the reference's default, which names the problem
        assert (status, body) == (401, {"statusCode": 401, "message": "JWT not present."})
        status, raw = curl("-x", proxy.url, "-D", "-", f"{base}/mcp/sse")
        assert isinstance(raw, str) and raw.startswith("HTTP/1.1 401 Unauthorized"), raw
        assert ('www-authenticate: bearer error="invalid_token", resource_metadata="https://apim.contoso.test/'
                '.well-known/oauth-protected-resource"') in raw.lower()
        status, body = curl("-x", proxy.url, "-H", f"Authorization: Bearer {token}", f"{base}/mcp/sse")
        assert status == 200 and body["path"] == "/mcp/sse", body
        status, body = curl("-x", proxy.url, f"{base}/.well-known/oauth-protected-resource")
        assert status == 200 and body["scopes_supported"] == [f"{DEMO_AUDIENCE}/user_impersonate"], body
        status, raw = curl("-x", proxy.url, "-X", "OPTIONS", "-D", "-", "-H", "Origin: https://admin.contoso.com",
                           "-H", "Access-Control-Request-Method: GET", f"{base}/products/1")  # fmt: skip
        assert isinstance(raw, str) and "access-control-allow-origin: https://admin.contoso.com" in raw.lower(), raw
        assert "Policy '" not in proxy.text()  # no "is not supported" anywhere
    finally:
        proxy.stop()
