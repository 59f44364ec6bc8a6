"""A .NET app's appsettings.json as rules: Microsoft.Identity.Web's documented shapes, real files from public
repositories (tests/data/appsettings/real), located errors, ``import:`` from a rules file, and end to end through
mitmdump against the emulator (IMDS and its HTTPS Entra endpoint) with a backend that validates every token."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apim_mi.credentials import CredentialSpec
from apim_mi.emulator import DEFAULT_APP_CLIENT_ID, DEFAULT_OTHER_TENANT_ID, AppRegistration, EmulatorConfig
from apim_mi.emulator import EmulatorThread as Emulator
from apim_mi.emulator.tokens import v1_issuer
from apim_mi.errors import LoadError
from apim_mi.rules import load_rules
from apim_mi.sources.appsettings import load_appsettings, strip_jsonc, validate_appsettings
from conftest import DEMO_AUDIENCE, ROOT
from proxy import Mitmdump, start_mitmdump
from test_examples import REDIRECT_SCRIPT, through

EXAMPLE = ROOT / "examples" / "dotnet-appsettings" / "appsettings.json"
REAL = ROOT / "tests" / "data" / "appsettings" / "real"
HOME_TENANT = EmulatorConfig().tenant_id
SYSTEM_CLIENT_ID = "5ca1ab1e-0000-4000-8000-00000000000a"
USER_1, USER_2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
PARTNER_AUDIENCE = "api://6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"
LOCAL_SECRET = "local-dev-secret-not-real"
UNKNOWN_APP = "99999999-0000-4000-8000-0000000000a9"


def write(tmp_path: Path, body: str, name: str = "appsettings.json") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def mi_attrs(rule: Any) -> dict[str, str]:
    mi = next(s for s in rule.policy.statements() if s.name == "authentication-managed-identity")
    return {k: v.text for k, v in mi.attrs.items()}


# -- the documented shapes ------------------------------------------------------------------------------------------


def test_example_sections_become_rules() -> None:
    config = load_rules(EXAMPLE)
    todo, graph, partner = config.rules
    assert [r.name for r in config.rules] == ["TodoListApi", "DownstreamApis:MicrosoftGraph",
                                              "DownstreamApis:PartnerOrders"]  # fmt: skip
    m = todo.match
    assert (m.scheme, m.host, m.port, m.path, m.methods) == ("https", "todo-api.contoso.com", 443, "/api/TodoList",
                                                             frozenset())  # fmt: skip
    assert mi_attrs(todo)["resource"] == DEMO_AUDIENCE and mi_attrs(todo)["client-id"] == USER_1
    assert todo.credential is None and todo.scope == f"{DEMO_AUDIENCE}/.default"
    assert (graph.match.path, mi_attrs(graph)["resource"]) == ("/v1.0", "https://graph.microsoft.com")
    assert "client-id" not in mi_attrs(graph)  # ManagedIdentity: {} = system-assigned
    assert partner.match.methods == frozenset({"GET"})
    assert partner.credential == CredentialSpec("managed-identity-fic", DEFAULT_OTHER_TENANT_ID,
                                                DEFAULT_APP_CLIENT_ID, USER_2)  # fmt: skip
    assert (todo.location.line, todo.location.column) == (20, 3)


def test_jsonc_is_read_as_dotnet_reads_it(tmp_path: Path) -> None:
    """Comments, trailing commas, tabs and any key case; positions stay where they were written."""
    text = ('{\n\t// c\n  "myapi": { /* x */ "baseurl": "http://127.0.0.1:8080", "requestapptoken": "True",\n'
            '   "scopes": "api://a/.default", "httpmethod": "post",\n'
            '   "acquiretokenoptions": {"managedidentity": {},},},\n}\n')
    assert len(strip_jsonc(text)) == len(text) and strip_jsonc(text).count("\n") == text.count("\n")
    (rule,) = load_appsettings(write(tmp_path, text)).rules
    assert (rule.match.scheme, rule.match.port, rule.match.methods) == ("http", 8080, frozenset({"POST"}))
    assert mi_attrs(rule)["resource"] == "api://a"
    assert (rule.location.line, rule.location.column) == (3, 3)


SECTION = '"Api": {"BaseUrl": "https://api.contoso.com/v1", "RequestAppToken": true, "Scopes": ["api://a/.default"]'
ERRORS = [
    ('{"Api": {"BaseUrl": "https://a", "Scopes": ["api://a/.default"]}}', (1, 2), "section 'Api': RequestAppToken is "
     "not set: Microsoft.Identity.Web calls this API with a signed-in user's token, and a proxy has no user"),
    ('{"Api": {"BaseUrl": "https://a", "RequestAppToken": false}}', (1, 53), "RequestAppToken is false"),
    ('{' + SECTION.replace('["api://a/.default"]', '["api://a/.default", "api://b/.default"]') + ', "AcquireToken'
     'Options": {"ManagedIdentity": {}}}}', (1, 86), "a managed identity can only use one '.default' scope"),
    ('{' + SECTION.replace('.default', 'read') + ', "AcquireTokenOptions": {"ManagedIdentity": {}}}}', (1, 86),
     "scope 'api://a/read' is not a '.default' scope"),
    ('{' + SECTION + ', "ProtocolScheme": "Pop", "AcquireTokenOptions": {"ManagedIdentity": {}}}}', (1, 126),
     "ProtocolScheme Pop binds the token to the app's own key"),
    ('{' + SECTION + ', "HttpMethod": "GET POST", "AcquireTokenOptions": {"ManagedIdentity": {}}}}', (1, 122),
     "HttpMethod 'GET POST' is not an HTTP method"),
    ('{' + SECTION + '}}', (1, 2), "section 'Api': no AcquireTokenOptions.ManagedIdentity, and no 'AzureAd' section"),
    ('{"AzureAd": {"TenantId": "common", "ClientId": "c"}, ' + SECTION + '}}', (1, 2), "section 'AzureAd': app "
     "tokens need a TenantId (a tenant id or domain, not 'common')"),
    ('{"AzureAd": {"TenantId": "t", "ClientId": "c", "ClientCredentials": [{"SourceType": "StoreWithThumbprint"}]}, '
     + SECTION + '}}', (1, 2), "no client credential this proxy can use (found: a certificate in the Windows "
     "certificate store)"),
    ('{"Api": {"BaseUrl": "ftp://a", "RequestAppToken": true}}', (1, 21), "BaseUrl 'ftp://a' is not an http(s) URL"),
    ('{"Api": {"BaseUrl": "https://a", }\n "x": 1}', (2, 2), "JSON syntax error: Expecting ',' delimiter"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "where", "message"), ERRORS)
def test_errors_are_located(tmp_path: Path, text: str, where: tuple[int, int], message: str) -> None:
    with pytest.raises(LoadError) as info:
        load_rules(write(tmp_path, text))
    assert (info.value.location.line, info.value.location.column) == where, str(info.value)
    assert message in str(info.value)


def test_app_credentials_from_azuread(tmp_path: Path) -> None:
    """The first usable ClientCredentials entry (or the one import picks by SourceType); legacy ClientSecret and a
    certificate file (relative to the appsettings file) work too; AcquireTokenOptions.Tenant picks the tenant."""
    creds = ('[{"SourceType": "KeyVault"}, {"SourceType": "SignedAssertionFromManagedIdentity", '
             '"TokenExchangeUrl": "api://AzureADTokenExchangeUSGov/.default"}, '
             '{"SourceType": "ClientSecret", "ClientSecret": "s3cr3t-value"}, '
             '{"SourceType": "Path", "CertificateDiskPath": "app.pem"}]')
    path = write(tmp_path, '{"AzureAd": {"TenantId": "t", "ClientId": "c", "ClientCredentials": ' + creds + '}, '
                 + SECTION + ', "AcquireTokenOptions": {"Tenant": "other"}}}')  # fmt: skip
    spec = load_appsettings(path).rules[0].credential
    assert spec == CredentialSpec("managed-identity-fic", "other", "c", audience="api://AzureADTokenExchangeUSGov")
    secret = load_appsettings(path, client_credential="ClientSecret").rules[0].credential
    assert secret == CredentialSpec("client-secret", "other", "c", client_secret="s3cr3t-value")
    assert "s3cr3t" not in repr(secret) + str(secret)
    cert = load_appsettings(path, client_credential="path").rules[0].credential
    assert cert is not None and cert.certificate_path == str(tmp_path / "app.pem")
    legacy = write(tmp_path, '{"AzureAd": {"TenantId": "t", "ClientId": "c", "ClientSecret": "x"}, ' + SECTION + "}}")
    assert load_appsettings(legacy).rules[0].credential.type == "client-secret"  # type: ignore[union-attr]


def test_templated_relative_path_and_graph_default_scope(tmp_path: Path) -> None:
    path = write(tmp_path, """
        {"DownstreamApis": {
           "Item": {"BaseUrl": "https://api.contoso.com/", "RelativePath": "v2/items/{id}/parts?x=1",
                    "RequestAppToken": true, "Scopes": "api://a/.default",
                    "AcquireTokenOptions": {"ManagedIdentity": {}}},
           "MicrosoftGraph": {"BaseUrl": "https://graph.microsoft.com/v1.0", "RequestAppToken": true,
                              "AcquireTokenOptions": {"ManagedIdentity": {}}}}}
    """)  # fmt: skip
    item, graph = load_appsettings(path).rules
    assert item.match.path == "/v2/items"
    assert mi_attrs(graph)["resource"] == "https://graph.microsoft.com"


# -- real files from public repositories ----------------------------------------------------------------------------

REAL_REPORTS = {
    "miw-daemon-app-msi.json": (0, ["AzureKeyVault: https://revoguardkeyvault.vault.azure.net:443/secrets/"
                                    "RevoGuardSecret (any method) -> scope 'https://vault.azure.net/.default' "
                                    "(resource 'https://vault.azure.net'), managed identity "
                                    "04ca4d6a-c720-4ba1-aa06-f6634b73fe7a (user-assigned)"]),
    "miw-daemon-app-fic-mtls.json": (2, ["miw-daemon-app-fic-mtls.json:19:27: section 'AzureKeyVault': "
                                         "ProtocolScheme MTLS_POP binds the token"]),
    "miw-daemon-console-calling-downstreamApi.json": (2, ["no client credential this proxy can use (found: a "
                                                          "certificate in Key Vault)"]),
    "miw-sidecar.json": (2, ["miw-sidecar.json:28:9: section 'DownstreamApi:me': RequestAppToken is not set"]),
    "samples-daemon-v2-6-call-ownapi-managedidentity.json": (1, [
        "system-assigned managed identity",
        "warning: samples-daemon-v2-6-call-ownapi-managedidentity.json:2:2: 'MyWebApi:AcquireTokenOptions:"
        "ManagedIdentity:UserAssignedClientId ' has spaces around the name"]),
    "samples-daemon-v2-2-call-ownapi.json": (1, ["no downstream API sections"]),
}  # fmt: skip


def test_every_real_fixture_has_an_expected_report() -> None:
    assert sorted(p.name for p in REAL.glob("*.json")) == sorted(REAL_REPORTS)
    listing = (REAL / "README.md").read_text()
    assert all(f"`{name}`" in listing for name in REAL_REPORTS)


@pytest.mark.parametrize("name", sorted(REAL_REPORTS))
def test_real_appsettings_validate_with_a_clear_report(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REAL)
    code, needles = REAL_REPORTS[name]
    assert validate_appsettings(Path(name)) == code
    out = capsys.readouterr().out
    assert "Traceback" not in out
    for needle in needles:
        assert needle in out, out


def test_cli_validate_names_each_rule_with_its_source_line() -> None:
    out = subprocess.run([sys.executable, "-m", "apim_mi.cli", "validate", str(EXAMPLE)], capture_output=True,
                         text=True, cwd=ROOT, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"{EXAMPLE}: 3 downstream API section(s), 3 rule(s)"
    assert lines[1].startswith(f"  {EXAMPLE}:20:3: TodoListApi: https://todo-api.contoso.com:443/api/TodoList")
    assert "managed-identity-fic (app 5ca1ab1e-0000-4000-8000-0000000000a1 in tenant " \
           "5ca1ab1e-0000-4000-8000-000000000002, managed identity 22222222-2222-2222-2222-222222222222 as " \
           "federated credential)" in out.stdout  # fmt: skip


# -- import: from a rules file ----------------------------------------------------------------------------------------


def test_import_sections_after_the_files_own_rules(tmp_path: Path) -> None:
    rules = write(tmp_path, f"""
        rules:
          - match: {{host: own.contoso.com}}
            scope: api://own/.default
        import: {{appsettings: {EXAMPLE}, sections: [TodoListApi, PartnerOrders], client_credential: x}}
    """, "rules.yaml")  # fmt: skip
    with pytest.raises(LoadError, match="no client credential with SourceType x"):
        load_rules(rules)
    rules.write_text(rules.read_text().replace(", client_credential: x", ""))
    config = load_rules(rules)
    assert [r.name for r in config.rules] == ["rule 1", "TodoListApi", "DownstreamApis:PartnerOrders"]
    assert [r.index for r in config.rules] == [0, 1, 2] and EXAMPLE.resolve() in config.files
    rules.write_text(rules.read_text().replace("PartnerOrders]", "Nope]"))
    with pytest.raises(LoadError) as info:
        load_rules(rules)
    assert "no downstream-API section 'Nope' (sections: TodoListApi, " in str(info.value)
    assert (info.value.location.file, info.value.location.line) == (str(rules), 5)
    rules.write_text("rules: []\nimport: {appsettings: missing.json}\n")
    with pytest.raises(LoadError, match=r"rules.yaml:2:23: appsettings file 'missing.json' not found"):
        load_rules(rules)


# -- end to end -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """The emulator with its HTTPS Entra endpoint; the default app also takes a client secret (local runs)."""
    with Emulator(EmulatorConfig(apps=[AppRegistration(secrets=(LOCAL_SECRET,))]), https_port=0) as emu:
        files = emu.workload_identity_env(tmp_path_factory.mktemp("entra"))
        env = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": emu.url, "AZURE_AUTHORITY_HOST": emu.authority_url,
               "SSL_CERT_FILE": files["SSL_CERT_FILE"]}  # fmt: skip
        yield emu, env


@pytest.fixture(scope="module")
def api(entra: tuple[Any, dict[str, str]], certs: dict[str, Path]) -> Iterator[Any]:
    """The validating backend: the emulator's keys, both tenants' issuers, the example's audiences, over HTTPS."""
    from apim_mi.backend import DemoBackendThread

    emu, _ = entra
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    audiences = [DEMO_AUDIENCE, "https://graph.microsoft.com", PARTNER_AUDIENCE, "api://own-api"]
    with DemoBackendThread(emu.jwks_uri, [emu.issuer, v1_issuer(DEFAULT_OTHER_TENANT_ID)], audiences, ssl=ctx) as b:
        yield b


def _proxy(tmp_path: Path, rules: Path, env: dict[str, str], certs: dict[str, Path], api: Any,
           credential: str = "managed-identity") -> Mitmdump:  # fmt: skip
    script = tmp_path / "redirect.py"
    script.write_text(REDIRECT_SCRIPT)
    env = {**env, "APIM_MI_TEST_REDIRECT": json.dumps({"*": f"127.0.0.1:{api.port}"})}
    return start_mitmdump(
        ["--set", f"mi_rules={rules}", "--set", f"mi_credential={credential}", "-s", str(script),
         "--set", "connection_strategy=lazy", "--set", f"ssl_verify_upstream_trusted_ca={certs['ca']}"],
        env=env, confdir=tmp_path / "confdir",
    )  # fmt: skip


def test_appsettings_end_to_end(tmp_path: Path, entra: tuple[Any, dict[str, str]], api: Any,
                                certs: dict[str, Path]) -> None:  # fmt: skip
    """The example appsettings.json as mi_rules, and a rules.yaml importing it next to its own scope: rule with a
    client-secret credential: single API + user-assigned, DownstreamApis map + system-assigned, managed identity as
    federated credential in the other tenant; the backend verifies each token; the trace shows both FIC steps."""
    emu, env = entra
    emu.reset()
    own = write(tmp_path, f"""
        rules:
          - match: {{host: own.contoso.com}}
            scope: api://own-api/.default
            credential: {{type: client-secret, tenant_id: {HOME_TENANT}, client_id: {DEFAULT_APP_CLIENT_ID},
                          client_secret: "{{{{secret}}}}"}}
          - match: {{host: unknown-app.contoso.com}}
            scope: api://own-api/.default
            credential: {{type: managed-identity-fic, tenant_id: {HOME_TENANT}, client_id: {UNKNOWN_APP}}}
        named_values: {{secret: {LOCAL_SECRET}}}
        import: {{appsettings: {EXAMPLE}, sections: [TodoListApi]}}
    """, "rules.yaml")  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    direct = _proxy(tmp_path / "a", EXAMPLE, env, certs, api)
    imported = _proxy(tmp_path / "b", own, env, certs, api)
    embedded = _proxy(tmp_path / "c", EXAMPLE, {}, certs, api, "emulator")
    try:
        cases = [
            (direct, "https://todo-api.contoso.com/api/TodoList", DEMO_AUDIENCE, USER_1, HOME_TENANT),
            (direct, "https://graph.microsoft.com/v1.0/users", "https://graph.microsoft.com", SYSTEM_CLIENT_ID,
             HOME_TENANT),
            (direct, "https://orders.fabrikam.com/api/orders/7", PARTNER_AUDIENCE, DEFAULT_APP_CLIENT_ID,
             DEFAULT_OTHER_TENANT_ID),
            (imported, "https://own.contoso.com/x", "api://own-api", DEFAULT_APP_CLIENT_ID, HOME_TENANT),
            (imported, "https://todo-api.contoso.com/api/TodoList/1", DEMO_AUDIENCE, USER_1, HOME_TENANT),
        ]  # fmt: skip
        for md, url, aud, appid, tid in cases:
            status, body = through(md, url)
            assert status == 200, (url, body, md.text())
            claims = body["claims"]  # type: ignore[index]
            assert (claims["aud"], claims["appid"], claims["tid"]) == (aud, appid, tid), url
        # HttpMethod: GET maps to the rule's method, so a POST is not the rule's and goes on without a token.
        status, _ = through(direct, "https://orders.fabrikam.com/api/orders", "-X", "POST")
        assert status == 401
        # An app Entra does not know: the managed identity's step succeeds, the app's fails, the request fails closed.
        status, body = through(imported, "https://unknown-app.contoso.com/x")
        assert status == 500 and body["message"] == "Internal server error", body  # type: ignore[index]
        imported.wait_for(r"unknown-app\.contoso\.com.*AADSTS700016")
        # The managed identity's exchange token was fetched once, by identity 2222…, for the FIC step.
        assert emu.token_requests("api://AzureADTokenExchange", USER_2) == 1
        assert emu.token_requests(PARTNER_AUDIENCE, DEFAULT_APP_CLIENT_ID) == 1
        _check_fic_trace(direct, DEFAULT_OTHER_TENANT_ID)
        # mi_credential=emulator: the embedded emulator serves both steps (its own keys, so the backend says 401).
        _check_fic_trace(embedded, DEFAULT_OTHER_TENANT_ID, status=401)
    finally:
        for md in (direct, imported, embedded):
            md.stop()


def _check_fic_trace(md: Mitmdump, tenant: str, status: int = 200) -> None:
    confdir = next(a.split("=", 1)[1] for a in md.proc.args if isinstance(a, str) and a.startswith("confdir="))
    with httpx.Client(proxy=md.url, verify=f"{confdir}/mitmproxy-ca-cert.pem", trust_env=False, timeout=20) as c:
        r = c.get("https://orders.fabrikam.com/api/orders/8", headers={"Ocp-Apim-Trace": "true"})
        assert r.status_code == status, r.text
        trace = c.get(r.headers["Ocp-Apim-Trace-Location"]).json()
    messages = [e["data"].get("message", "") for e in trace["traceEntries"]["inbound"] if isinstance(e["data"], dict)]
    step1 = next(m for m in messages if "api://AzureADTokenExchange" in m)
    assert step1.startswith(f"Obtaining managed identity token using clientId:{USER_2.upper()}")
    step2 = next(m for m in messages if m.startswith("Obtaining token for application"))
    assert step2 == (f"Obtaining token for application clientId:{DEFAULT_APP_CLIENT_ID.upper()} using managed "
                     f"identity clientId:{USER_2.upper()} as federated credential AAD Authority:"
                     f"https://login.windows.net/{tenant} for {PARTNER_AUDIENCE} audience "
                     "succeeded.")  # fmt: skip


async def test_federated_credential_single_flight_and_fail_closed(
    entra: tuple[Any, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 concurrent cold requests for a managed-identity-fic token: one exchange-token request and one app-token
    request; an Entra error on the second step is a TokenError naming it (the proxy then fails closed)."""
    from apim_mi.credentials import parse_credential
    from apim_mi.tokens import TokenError, TokenProvider, azure_credential_factory, token_key

    emu, _ = entra
    emu.reset()
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.url)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(emu.ca_pem)
    spec = parse_credential({"type": "managed-identity-fic", "tenant_id": DEFAULT_OTHER_TENANT_ID,
                             "client_id": DEFAULT_APP_CLIENT_ID, "managed_identity_client_id": USER_1})  # fmt: skip
    provider = TokenProvider(azure_credential_factory(10, authority=emu.authority_url, connection_verify=str(ca)))
    try:
        import asyncio

        key = token_key(spec, "", PARTNER_AUDIENCE)
        results = await asyncio.gather(*(provider.get(key) for _ in range(20)))
        assert {r.token.claims["tid"] for r in results} == {DEFAULT_OTHER_TENANT_ID}
        assert emu.token_requests("api://AzureADTokenExchange", USER_1) == 1
        assert emu.token_requests(PARTNER_AUDIENCE, DEFAULT_APP_CLIENT_ID) == 1
        emu.configure(resources=["api://AzureADTokenExchange"])
        with pytest.raises(TokenError) as info:
            await provider.get(token_key(spec, "", "api://not-in-this-tenant"))
        assert info.value.reason == "AADSTS500011"
        assert info.value.key.identity == f"app {DEFAULT_APP_CLIENT_ID} via {USER_1}"
    finally:
        await provider.close()


async def test_federated_token_file_from_signed_assertion_file_path(
    entra: tuple[Any, dict[str, str]], tmp_path: Path
) -> None:
    """MIW's SignedAssertionFilePath (AKS workload identity) maps to federated-token-file: WorkloadIdentityCredential
    for the app with that file; the emulator accepts its service-account token for the default app."""
    from apim_mi.tokens import TokenProvider, azure_credential_factory, token_key

    emu, _ = entra
    emu.reset()
    files = emu.workload_identity_env(tmp_path)
    token_file = Path(files["AZURE_FEDERATED_TOKEN_FILE"])
    path = write(tmp_path, '{"AzureAd": {"TenantId": "' + HOME_TENANT + '", "ClientId": "' + DEFAULT_APP_CLIENT_ID
                 + '", "ClientCredentials": [{"SourceType": "SignedAssertionFilePath", "SignedAssertionFileDiskPath": "'
                 + token_file.name + '"}]}, ' + SECTION + '}}')  # fmt: skip
    spec = load_appsettings(path).rules[0].credential
    expected = CredentialSpec("federated-token-file", HOME_TENANT, DEFAULT_APP_CLIENT_ID, token_file=str(token_file))
    assert spec == expected
    ca = tmp_path / "ca.pem"
    ca.write_bytes(emu.ca_pem)
    provider = TokenProvider(azure_credential_factory(10, authority=emu.authority_url, connection_verify=str(ca)))
    try:
        result = await provider.get(token_key(spec, "", "api://a"))
    finally:
        await provider.close()
    assert (result.token.claims["appid"], result.token.claims["aud"]) == (DEFAULT_APP_CLIENT_ID, "api://a")


def test_xml_rules_take_a_credential_element(tmp_path: Path) -> None:
    path = tmp_path / "rules.xml"
    path.write_text(textwrap.dedent(f"""\
        <apim-mi>
          <named-value name="uami">{USER_2}</named-value>
          <credential type="managed-identity-fic" tenant-id="{DEFAULT_OTHER_TENANT_ID}"
                      client-id="{DEFAULT_APP_CLIENT_ID}" managed-identity-client-id="{{{{uami}}}}"/>
          <rule name="partner" host="orders.fabrikam.com" scope="{PARTNER_AUDIENCE}/.default"/>
          <rule name="local" host="own.contoso.com" scope="api://own-api/.default">
            <credential type="client-certificate" tenant-id="t" client-id="c" certificate-path="app.pem"/>
          </rule>
        </apim-mi>
    """))
    config = load_rules(path)
    assert config.credential == CredentialSpec("managed-identity-fic", DEFAULT_OTHER_TENANT_ID, DEFAULT_APP_CLIENT_ID,
                                               USER_2)  # fmt: skip
    assert config.rules[1].credential == CredentialSpec("client-certificate", "t", "c",
                                                        certificate_path=str(tmp_path / "app.pem"))  # fmt: skip
    path.write_text('<apim-mi>\n  <rule host="a" scope="api://a/.default">\n'
                    '    <credential type="client-secret" tenant-id="t" client-id="c" secret="x"/>\n  </rule>\n'
                    '</apim-mi>\n')  # fmt: skip
    with pytest.raises(LoadError) as info:
        load_rules(path)
    assert (info.value.location.line, info.value.location.column) == (3, 6)
    assert "unknown attribute 'secret' on <credential> (allowed: client-id, client-secret, tenant-id, type)" in str(
        info.value
    )
