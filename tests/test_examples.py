"""examples/: every rules file loads (and validates without warnings); each runs end to end where it can.

The examples name real Azure hosts (management.azure.com, *.vault.azure.net …). To run them unchanged, mitmdump
gets a second script after ``addon/mi.py`` that, once the rule has run, sends the request to a loopback server
instead of the real host (the Host header and the matched rule stay as they were). Clients talk HTTPS through
CONNECT; the loopback servers present the test CA's certificate, which mitmdump verifies.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from conftest import ROOT, TEST_AUDIENCES
from proxy import curl

EXAMPLES = ROOT / "examples"
# rules files: YAML, and XML rules named *.rules.xml (other .xml files are policies a rules file points to)
RULE_FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml") or p.name.endswith(".rules.xml"))

REDIRECT_SCRIPT = '''
import json, os

TARGETS = json.loads(os.environ["APIM_MI_TEST_REDIRECT"])


class Redirect:
    """After apim-mi ran (scripts run in -s order): send the request to a loopback server, keep the Host header."""

    def request(self, flow):
        target = TARGETS.get(flow.request.host) or TARGETS.get("*")
        if flow.response is None and target:
            host_header = flow.request.host_header
            host, port = target.rsplit(":", 1)
            flow.request.host, flow.request.port = host, int(port)
            flow.request.host_header = host_header


addons = [Redirect()]
'''


# -- loopback helpers ---------------------------------------------------------------------------------------------


class Echo:
    """A loopback HTTP(S) server that records requests (headers included) and answers like Key Vault's secret GET
    (``{"value": …}``) on /secrets/…, else ``{"ok": true}``."""

    SECRET = "s3cret-from-key-vault"

    def __init__(self, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                echo.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                body = {"value": Echo.SECRET} if self.path.startswith("/secrets/") else {"ok": True}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ssl_ctx is not None:
            self.server.socket = ssl_ctx.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if ssl_ctx is not None else "http"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo_tls(certs: dict[str, Path]) -> Iterator[Echo]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    server = Echo(ctx)
    yield server
    server.close()


@pytest.fixture
def echo_http() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.close()


def verified_claims(emu: Any, token: str, audience: str) -> dict[str, Any]:
    """The token's claims after checking signature (emulator JWKS), issuer and audience, as a backend would."""
    key = jwt.PyJWKClient(emu.jwks_uri).get_signing_key_from_jwt(token).key
    return jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=emu.issuer)


def run_example(tmp_path: Path, emu: Any, md_factory: Any, certs: dict[str, Path], rules: Path,
                targets: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:  # fmt: skip
    script = tmp_path / "redirect.py"
    script.write_text(REDIRECT_SCRIPT)
    monkeypatch.setenv("APIM_MI_TEST_REDIRECT", json.dumps(targets))
    return md_factory(
        emu, rules, "-s", str(script), "--set", "connection_strategy=lazy",
        "--set", f"ssl_verify_upstream_trusted_ca={certs['ca']}",
    )  # fmt: skip


def through(md: Any, url: str, *args: str) -> tuple[int, Any]:
    return curl("-x", md.url, "--cacert", str(Path(md_confdir(md)) / "mitmproxy-ca-cert.pem"), *args, url)


def md_confdir(md: Any) -> str:
    cmd = md.proc.args
    return next(a.split("=", 1)[1] for a in cmd if isinstance(a, str) and a.startswith("confdir="))


# -- every example loads ------------------------------------------------------------------------------------------


def test_examples_exist_and_are_listed() -> None:
    names = {p.name for p in RULE_FILES}
    assert len(names) >= 7, names
    listing = (EXAMPLES / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in names:
        assert f"({name})" in listing, f"examples/README.md does not list {name}"
        assert f"examples/{name}" in readme, f"README.md does not list examples/{name}"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_example_loads_and_validates_clean(path: Path) -> None:
    from apim_mi.rules import load_rules

    config = load_rules(path)
    assert config.rules
    out = subprocess.run([sys.executable, "-m", "apim_mi.cli", "validate", str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../addon/apim_mi/schema/rules.schema.json"


# -- end to end ---------------------------------------------------------------------------------------------------

# (example, URL a client calls, audience the backend must see, client id or None)
BEARER_CASES = [
    ("app-service-easy-auth.yaml", "https://orders-api.azurewebsites.net/api/orders/1",
     "api://6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b", None),
    ("azure-resource-manager.yaml", "https://management.azure.com/subscriptions?api-version=2022-12-01",
     "https://management.azure.com/", None),
    ("key-vault.yaml", "https://my-vault.vault.azure.net/secrets/db-password?api-version=7.4",
     "https://vault.azure.net", None),
    ("microsoft-graph.yaml", "https://graph.microsoft.com/v1.0/users", "https://graph.microsoft.com", None),
]  # fmt: skip


def test_backend_accepts_the_examples_audiences() -> None:
    for _, _, aud, _ in BEARER_CASES:
        assert aud in TEST_AUDIENCES


def test_bearer_examples_end_to_end(tmp_path: Path, emu: Any, tls_backend: Any, certs: dict[str, Path],
                                    md_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """One proxy per example (started together), a real curl through CONNECT, the validating backend says 200."""
    mds = {
        name: run_example(tmp_path, emu, md_factory, certs, EXAMPLES / name,
                          {"*": f"127.0.0.1:{tls_backend.port}"}, monkeypatch)
        for name, *_ in BEARER_CASES
    }  # fmt: skip
    for name, url, aud, _ in BEARER_CASES:
        status, body = through(mds[name], url)
        assert status == 200, (name, body, mds[name].text())
        assert body["claims"]["aud"] == aud, name
        assert emu.stats().count(aud) == 1, name
    # Graph: only /v1.0 and /beta get a token; other paths pass through untouched (the backend says 401)
    status, _ = through(mds["microsoft-graph.yaml"], "https://graph.microsoft.com/other")
    assert status == 401


def test_service_bus_gets_the_bare_token(tmp_path: Path, emu: Any, echo_tls: Echo, certs: dict[str, Path],
                                         md_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    md = run_example(tmp_path, emu, md_factory, certs, EXAMPLES / "service-bus-bare-token.yaml",
                     {"*": echo_tls.address}, monkeypatch)  # fmt: skip
    status, _ = through(md, "https://my-namespace.servicebus.windows.net/orders/messages", "-d", "hello")
    assert status == 200, md.text()
    (req,) = echo_tls.requests
    token = req["headers"]["Authorization"]
    assert not token.startswith("Bearer ") and token.count(".") == 2
    assert verified_claims(emu, token, "https://servicebus.azure.net")["aud"] == "https://servicebus.azure.net"


def test_per_host_identity(tmp_path: Path, emu: Any, echo_tls: Echo, certs: dict[str, Path], md_factory: Any,
                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from apim_mi.emulator import default_system_identity

    md = run_example(tmp_path, emu, md_factory, certs, EXAMPLES / "per-host-identity.yaml", {"*": echo_tls.address},
                     monkeypatch)  # fmt: skip
    cases = [
        ("https://inventory.contoso.com/items", "api://3c0c8f8e-1d2b-4a5c-9e6f-7a8b9c0d1e2f",
         "11111111-1111-1111-1111-111111111111"),
        ("https://billing.contoso.com/invoices", "api://4d1d9f9f-2e3c-4b6d-8f70-8b9cad1e2f30",
         "22222222-2222-2222-2222-222222222222"),
        ("https://hr.contoso.com/people", "api://5e2ea0a0-3f4d-4c7e-9081-9cadbe2f3041",
         default_system_identity().client_id),
    ]  # fmt: skip
    for i, (url, aud, appid) in enumerate(cases):
        status, _ = through(md, url)
        assert status == 200, md.text()
        token = echo_tls.requests[i]["headers"]["Authorization"].removeprefix("Bearer ")
        assert verified_claims(emu, token, aud)["appid"] == appid


def _send_request_supported() -> bool:
    from apim_mi.policy.statements import HANDLERS

    return "send-request" in HANDLERS


def test_send_request_forwards_the_token_to_key_vault(tmp_path: Path, emu: Any, echo_tls: Echo, echo_http: Echo,
                                                      certs: dict[str, Path], md_factory: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    if not _send_request_supported():
        pytest.skip("send-request is not implemented yet (not in apim_mi.policy.statements.HANDLERS)")
    # the example as shipped, with the Key Vault URL (a named value) pointed at a loopback stand-in
    work = tmp_path / "example"
    work.mkdir()
    (work / "send-request-key-vault.xml").write_text((EXAMPLES / "send-request-key-vault.xml").read_text())
    data = yaml.safe_load((EXAMPLES / "send-request-key-vault.yaml").read_text())
    data["named_values"]["key-vault-secret-url"] = f"{echo_http.url}/secrets/legacy-api-key?api-version=7.4"
    rules = work / "rules.yaml"
    rules.write_text(yaml.safe_dump(data))
    md = run_example(tmp_path, emu, md_factory, certs, rules, {"*": echo_tls.address}, monkeypatch)
    status, body = through(md, "https://legacy.contoso.com/api/report")
    assert status == 200, (body, md.text())
    (side,) = echo_http.requests
    assert side["path"].startswith("/secrets/legacy-api-key")
    token = side["headers"]["Authorization"].removeprefix("Bearer ")
    assert verified_claims(emu, token, "https://vault.azure.net")["aud"] == "https://vault.azure.net"
    (main,) = echo_tls.requests
    assert main["headers"]["X-Api-Key"] == Echo.SECRET
    assert "Authorization" not in main["headers"]  # the Key Vault token went only to Key Vault
