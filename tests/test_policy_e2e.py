"""The reference pages' examples through a real mitmdump, with the emulator as managed identity and the validating
backend (which also plays the second service): manual header from output-token-variable-name, a token in a
send-request to a second service, a bare token for Service Bus (checked by validate-jwt against the emulator's
OpenID configuration), choose picking the resource from a header, and check-header/return-response/rewrite-uri/
set-query-parameter/on-error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_AUDIENCE
from proxy import curl, write_rules

DATA = Path(__file__).resolve().parent / "data" / "e2e"


@pytest.fixture
def proxy(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> Any:
    for f in DATA.glob("*.xml"):
        shutil.copy(f, tmp_path / f.name)
    host = f"127.0.0.1:{backend.port}"
    rules = write_rules(tmp_path, f"""
        named_values:
          demo-app: "{DEMO_AUDIENCE}"
          openid-config: "{emu.openid_configuration_url}"
        rules:
          - {{name: manual header, match: {{host: "{host}", path: /manual}}, policy: manual-header.xml}}
          - {{name: second service, match: {{host: "{host}", path: /orders}}, policy: second-service.xml}}
          - {{name: service bus, match: {{host: "{host}", path: /bus}}, policy: service-bus.xml}}
          - {{name: choose, match: {{host: "{host}", path: /choose}}, policy: choose-resource.xml}}
          - {{name: gatekeeper, match: {{host: "{host}", path: /gate}}, policy: gatekeeper.xml}}
          - {{name: backend options, match: {{host: "{host}", path: /fwd}}, policy: backend-options.xml}}
    """)
    return md_factory(emu, rules)


def test_reference_examples_end_to_end(proxy: Any, emu: Any, backend: Any) -> None:
    base = backend.url
    # authentication-managed-identity: "Use managed identity and set header manually"
    status, body = curl("-x", proxy.url, f"{base}/manual/1")
    assert status == 200, body
    assert body["claims"]["aud"] == DEMO_AUDIENCE

    # send-request to a second service with its own managed-identity token; the main request gets another one
    backend.reset()
    status, body = curl("-x", proxy.url, "-D", "-", f"{base}/orders/7")
    assert isinstance(body, str) and "200" in body.splitlines()[0], body
    headers, _, payload = body.partition("\n\n")
    assert json.loads(payload)["claims"]["aud"] == DEMO_AUDIENCE
    assert "x-second-audience: https://management.azure.com/" in headers.lower()
    requests = backend.stats()["requests"]
    assert [r["path"] for r in requests] == ["/second-service", "/orders/7"]
    assert [r["status"] for r in requests] == [200, 200]
    assert [r["claims"]["aud"] for r in requests] == ["https://management.azure.com/", DEMO_AUDIENCE]
    assert "x-second-status" in [h.lower() for h in requests[1]["headers"]]

    # Service Bus: the bare token (no "Bearer ") — validate-jwt accepts it, the Bearer-only backend does not
    backend.reset()
    status, body = curl("-x", proxy.url, "-d", "hello", f"{base}/bus/messages")
    assert status == 401 and body["error_description"] == "No bearer token in the Authorization header", body
    assert "x-token-audience" in [h.lower() for h in backend.stats()["requests"][-1]["headers"]]

    # choose: the resource comes from a request header
    status, body = curl("-x", proxy.url, "-H", "X-Target: orders", f"{base}/choose/1")
    assert status == 200 and body["claims"]["aud"] == "https://orders.contoso.test", body
    status, body = curl("-x", proxy.url, f"{base}/choose/1")
    assert status == 200 and body["claims"]["aud"] == DEMO_AUDIENCE, body


def test_gatekeeper_policies_end_to_end(proxy: Any, backend: Any) -> None:
    base = backend.url
    status, body = curl("-x", proxy.url, f"{base}/gate/5")
    assert (status, body) == (403, {"statusCode": 403, "message": "Missing or wrong key"})
    status, body = curl("-x", proxy.url, "-H", "X-Api-Key: letmein", f"{base}/gate/5?ping=1")
    assert (status, body) == (200, {"pong": True})
    backend.reset()
    status, body = curl("-x", proxy.url, "-H", "X-Api-Key: letmein", f"{base}/gate/5?id=9")
    assert status == 200, body
    assert body["path"] == "/api/v2/9" and body["query"] == "source=apim-mi" and body["claims"]["aud"] == DEMO_AUDIENCE
    status, body = curl("-x", proxy.url, "-D", "-", f"{base}/gate/5")
    assert "x-error-reason: headernotfound" in body.lower()  # type: ignore[union-attr]


def test_backend_section_decides_whether_and_how_to_forward(proxy: Any, backend: Any) -> None:
    base = backend.url
    backend.reset()
    status, body = curl("-x", proxy.url, "-D", "-", f"{base}/fwd/1?local=1")
    assert isinstance(body, str) and body.startswith("HTTP/1.1 200"), body
    assert "x-outbound: 200" in body.lower()
    assert backend.stats()["requests"] == []  # no forward-request: the backend is never called

    status, body = curl("-x", proxy.url, "-D", "-", f"{base}/fwd/2")
    assert isinstance(body, str) and body.startswith("HTTP/1.1 200") and "x-outbound: 200" in body.lower(), body
    status, body = curl("-x", proxy.url, f"{base}/fwd/3?anonymous=1")  # no token: the backend answers 401
    assert (status, body) == (502, "forward-request: BackendErrorStatusCode")
    assert [r["status"] for r in backend.stats()["requests"]] == [200, 401]
