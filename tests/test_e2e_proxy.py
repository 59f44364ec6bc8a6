"""End to end through a real mitmdump: curl and httpx → proxy (+ azure-identity → emulator) → validating backend."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import DEMO_AUDIENCE, USER_CLIENT_ID
from proxy import curl, run_mitmdump_expecting_exit, write_rules


def test_regular_mode_http_curl(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> None:
    port = backend.port
    rules = write_rules(tmp_path, f"""
        rules:
          - name: demo api
            match: {{host: "127.0.0.1:{port}", path: /api}}
            resource: "{DEMO_AUDIENCE}"
    """)
    flows = tmp_path / "flows.mitm"
    md = md_factory(emu, rules, "-w", str(flows))
    direct_status, _ = curl(f"{backend.url}/api/orders")
    assert direct_status == 401

    status, body = curl("-x", md.url, f"{backend.url}/api/orders")
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["claims"]["aud"] == DEMO_AUDIENCE
    assert body["claims"]["iss"] == emu.issuer

    # Same backend under a host name no rule matches: the proxy adds nothing.
    other = f"http://localhost:{port}/api/orders"
    before = backend.stats()
    status, _ = curl("-x", md.url, other)
    assert status == 401
    last = backend.stats()["requests"][-1]
    assert "authorization" not in [h.lower() for h in last["headers"]]
    assert backend.stats()["requests"][len(before["requests"]) :]  # it really reached the backend

    # A path outside the rule: no token either.
    status, _ = curl("-x", md.url, f"{backend.url}/health")
    assert status == 401

    md.wait_for(r"apim-mi: GET http://127\.0\.0\.1:\d+/api/orders \[demo api\]")
    md.stop()
    _assert_no_token_leaked(emu, md.text(), flows)


def _assert_no_token_leaked(emu: Any, output: str, *files: Path) -> None:
    tokens = emu.stats()["issued_tokens"]
    assert tokens, "the emulator issued no token: the test proves nothing"
    blobs = [output.encode()] + [f.read_bytes() for f in files]
    for token in tokens:
        signature = token.rsplit(".", 1)[-1].encode()
        for blob in blobs:
            assert token.encode() not in blob
            assert signature not in blob


def test_https_via_connect(tmp_path: Path, emu: Any, tls_backend: Any, certs: dict[str, Path], md_factory: Any) -> None:
    port = tls_backend.port
    rules = write_rules(tmp_path, f"""
        rules:
          - name: tls api
            match: {{host: localhost, path: /api/*, scheme: https}}
            resource: "{DEMO_AUDIENCE}"
    """)
    md = md_factory(emu, rules, "--set", f"ssl_verify_upstream_trusted_ca={certs['ca']}")
    mitm_ca = tmp_path / "confdir" / "mitmproxy-ca-cert.pem"
    url = f"https://localhost:{port}/api/secure"
    status, _ = curl("--cacert", str(certs["ca"]), url)
    assert status == 401
    status, body = curl("-x", md.url, "--cacert", str(mitm_ca), url)
    assert status == 200, body
    assert body["claims"]["aud"] == DEMO_AUDIENCE  # type: ignore[index]


def test_reverse_mode_and_async_client(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> None:
    rules = write_rules(tmp_path, f"""
        rules:
          - match: {{host: 127.0.0.1, methods: [GET, POST]}}
            resource: "{DEMO_AUDIENCE}"
    """)
    md = md_factory(emu, rules, "--mode", f"reverse:{backend.url}")

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
            return await asyncio.gather(
                client.get(f"{md.url}/api/a"),
                client.post(f"{md.url}/api/b", json={"x": 1}),
                client.delete(f"{md.url}/api/c"),
            )

    get, post, delete = asyncio.run(go())
    assert get.status_code == 200 and get.json()["claims"]["aud"] == DEMO_AUDIENCE
    assert post.status_code == 200 and post.json()["method"] == "POST"
    assert delete.status_code == 401  # DELETE is not in the rule's methods


@pytest.mark.parametrize("protocol", ["imds", "appservice"])
def test_user_assigned_identity(tmp_path: Path, emu: Any, backend: Any, md_factory: Any, protocol: str) -> None:
    rules = write_rules(tmp_path, f"""
        named_values:
          orders-app: "{DEMO_AUDIENCE}"
          uami: {USER_CLIENT_ID}
        rules:
          - match: {{host: 127.0.0.1}}
            resource: "{{{{orders-app}}}}"
            client_id: "{{{{uami}}}}"
    """)
    md = md_factory(emu, rules, protocol=protocol)
    status, body = curl("-x", md.url, f"{backend.url}/api/x")
    assert status == 200, body
    claims = body["claims"]  # type: ignore[index]
    identity = next(i for i in emu.config.user_identities if i.client_id == USER_CLIENT_ID)
    assert claims["appid"] == USER_CLIENT_ID
    assert claims["oid"] == identity.object_id
    reqs = emu.stats()["requests"]
    assert reqs and reqs[-1]["query"].get("client_id") == USER_CLIENT_ID
    expected_path = "/metadata/identity/oauth2/token" if protocol == "imds" else "/msi/token"
    assert reqs[-1]["path"] == expected_path


def test_single_flight_cold_cache_and_expiry(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> None:
    emu.configure(lifetime=6)
    rules = write_rules(tmp_path, f"""
        rules:
          - match: {{host: 127.0.0.1}}
            resource: "{DEMO_AUDIENCE}"
    """)
    md = md_factory(emu, rules, "--mode", f"reverse:{backend.url}", "--flow-detail", "0")

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(trust_env=False, timeout=30, limits=limits) as client:
            rs = await asyncio.gather(*(client.get(f"{md.url}/api/{i}") for i in range(50)))
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 50
    assert emu.stats()["token_requests"] == {f"system|{DEMO_AUDIENCE}": 1}
    asyncio.run(asyncio.sleep(6.5))  # the token is now expired
    assert asyncio.run(burst()) == [200] * 50
    assert emu.stats()["token_requests"] == {f"system|{DEMO_AUDIENCE}": 2}


def test_token_failure_fails_closed_or_is_ignored(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> None:
    emu.configure(resources=[DEMO_AUDIENCE])  # anything else → AADSTS500011
    rules = write_rules(tmp_path, """
        rules:
          - name: typo
            match: {host: 127.0.0.1, path: /closed}
            resource: "api://does-not-exist"
          - name: lenient
            match: {host: 127.0.0.1, path: /open}
            resource: "api://does-not-exist"
            ignore_error: true
    """)
    md = md_factory(emu, rules)
    seen = len(backend.stats()["requests"])
    status, body = curl("-x", md.url, f"{backend.url}/closed")
    assert status == 500
    assert set(body) == {"statusCode", "message", "activityId"}  # type: ignore[arg-type]
    assert body["statusCode"] == 500 and body["message"] == "Internal server error"  # type: ignore[index]
    assert len(backend.stats()["requests"]) == seen  # never forwarded
    md.wait_for(r"failed closed: .*AADSTS500011")

    status, _ = curl("-x", md.url, "-H", "Authorization: Bearer client-own", f"{backend.url}/open")
    assert status == 401  # forwarded unchanged; the backend rejects the client's own header
    assert len(backend.stats()["requests"]) == seen + 1


def test_bad_rules_file_refuses_to_start(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, """
        rules:
          - match: {host: example.com}
            resource: https://vault.azure.net
            hedaer: X-Token
    """)
    rc, out = run_mitmdump_expecting_exit(["--set", f"mi_rules={rules}"], confdir=tmp_path / "c")
    assert rc != 0
    assert f"{rules}:5:5: unknown field 'hedaer'" in out
    assert "Traceback" not in out


def test_non_loopback_sockets_are_blocked() -> None:
    sock = socket.socket()
    with pytest.raises(Exception) as info:
        sock.connect(("169.254.169.254", 80))
    sock.close()
    assert "169.254.169.254" in str(info.value) or "Blocked" in type(info.value).__name__
