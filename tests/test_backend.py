"""The demo backend validating emulator tokens: 401s that say why, 200 that echoes claims and never the token."""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import pytest
from apim_mi.backend import DemoBackend, DemoBackendThread, add_arguments, resolve_source
from apim_mi.backend import main as backend_main
from apim_mi.emulator import Emulator, EmulatorConfig, EmulatorThread, SigningKey, TokenMinter
from apim_mi.emulator.config import default_system_identity
from azure.identity.aio import ManagedIdentityCredential
from emulator_helpers import (
    DEMO_AUDIENCE,
    SYSTEM_CLIENT_ID,
    USER_CLIENT_ID,
    USER_OBJECT_ID,
    raw_token,
    running_emulator,
    use_emulator,
)
from multidict import CIMultiDict

ROOT = Path(__file__).resolve().parent.parent
OTHER_AUDIENCE = "https://orders.contoso.test"


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
async def em(signing_key: SigningKey) -> AsyncIterator[Emulator]:
    async for emu in running_emulator(EmulatorConfig(), signing_key):
        yield emu


@pytest.fixture
async def backend(em: Emulator) -> AsyncIterator[DemoBackend]:
    async with DemoBackend(em.jwks_uri, em.issuer, [DEMO_AUDIENCE, OTHER_AUDIENCE]) as demo:
        yield demo


async def call(url: str, token: str | None = None, *, headers: Any = None,
               ssl_ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], dict[str, Any], str]:  # fmt: skip
    """(status, headers, JSON body, raw body text) of a request to the backend."""
    sent = CIMultiDict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession(trust_env=False) as session, session.post(
        url, headers=sent, data=b"payload", ssl=ssl_ctx if ssl_ctx is not None else True
    ) as resp:
        text = await resp.text()
        return resp.status, dict(resp.headers), await resp.json(content_type=None), text


async def token_for(em: Emulator, resource: str, **params: str) -> str:
    status, _, body = await raw_token(em, resource, **params)
    assert status == 200, body
    return str(body["access_token"])


async def test_no_token_is_401_with_challenge(backend: DemoBackend) -> None:
    status, headers, body, _ = await call(f"{backend.url}/api/orders")
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="demo-backend"')
    assert f'resource_id="{DEMO_AUDIENCE}"' in challenge and "error=" not in challenge  # RFC 6750 §3.1
    assert body["ok"] is False and body["expected_audiences"] == [DEMO_AUDIENCE, OTHER_AUDIENCE]
    status, headers, _, _ = await call(f"{backend.url}/api/orders", headers={"Authorization": "Basic dTpw"})
    assert status == 401 and "error=" not in headers["WWW-Authenticate"]


async def test_valid_token_from_azure_identity(
    em: Emulator, backend: DemoBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_emulator(monkeypatch, em, "imds")
    async with ManagedIdentityCredential(client_id=USER_CLIENT_ID) as cred:
        token = (await cred.get_token(f"{DEMO_AUDIENCE}/.default")).token
    status, _, body, text = await call(f"{backend.url}/api/orders?x=1", token, headers={"X-Trace": "1"})
    assert status == 200, body
    assert (body["method"], body["path"], body["query"], body["body_bytes"]) == ("POST", "/api/orders", "x=1", 7)
    claims = body["claims"]
    assert claims["aud"] == DEMO_AUDIENCE and claims["iss"] == em.issuer and claims["tid"] == em.tenant_id
    assert (claims["appid"], claims["oid"]) == (USER_CLIENT_ID, USER_OBJECT_ID)
    assert isinstance(claims["exp"], int)
    assert "Authorization" in body["headers"] and "X-Trace" in body["headers"]
    signature = token.rsplit(".", 1)[1]
    assert token not in text and signature not in text

    stats = backend.stats()
    assert (stats.total, stats.accepted, stats.rejected) == (1, 1, 0)
    assert stats.claims == [claims] and stats["requests"][-1]["status"] == 200
    async with aiohttp.ClientSession(trust_env=False) as session, session.get(f"{backend.url}/_backend/stats") as r:
        served = await r.text()
    assert r.status == 200 and token not in served and signature not in served and USER_CLIENT_ID in served


async def test_wrong_audience_names_the_expected_one(em: Emulator, backend: DemoBackend) -> None:
    for aud in ("api://someone-else", f"{DEMO_AUDIENCE}/", DEMO_AUDIENCE.upper()):
        status, headers, body, _ = await call(f"{backend.url}/x", await token_for(em, aud))
        assert status == 401
        challenge = headers["WWW-Authenticate"]
        assert 'error="invalid_token"' in challenge
        assert f"The audience '{aud}' is invalid" in challenge
        assert f"'{DEMO_AUDIENCE}'" in challenge and f'resource_id="{DEMO_AUDIENCE}"' in challenge
        assert body["error"] == "invalid_token" and aud in body["error_description"]
    assert backend.stats().rejected == 3


async def test_expired_and_not_yet_valid_tokens(em: Emulator, backend: DemoBackend) -> None:
    em.add_faults("expired")
    status, headers, _, _ = await call(f"{backend.url}/x", await token_for(em, DEMO_AUDIENCE))
    assert status == 401 and "The token expired at" in headers["WWW-Authenticate"]

    minter = TokenMinter(em.signing_key, em.tenant_id, em.issuer)
    now = int(time.time())
    future = minter.mint(default_system_identity(), DEMO_AUDIENCE, now=now + 3600, expires_on=now + 7200)
    status, headers, _, _ = await call(f"{backend.url}/x", future.access_token)
    assert status == 401 and "is not valid before" in headers["WWW-Authenticate"]


async def test_signature_issuer_and_algorithm_checks(em: Emulator, backend: DemoBackend) -> None:
    identity = default_system_identity()
    now = int(time.time())
    stranger = SigningKey.generate()
    foreign = TokenMinter(stranger, em.tenant_id, em.issuer).mint(identity, DEMO_AUDIENCE, now=now, expires_on=now + 60)
    status, headers, _, _ = await call(f"{backend.url}/x", foreign.access_token)
    assert status == 401 and "signature key was not found" in headers["WWW-Authenticate"]

    claims = dict(foreign.claims)
    forged = jwt.encode(claims, stranger.private_key, algorithm="RS256", headers={"kid": em.signing_key.kid})
    status, headers, _, _ = await call(f"{backend.url}/x", forged)
    assert status == 401 and "The signature is invalid" in headers["WWW-Authenticate"]

    other_issuer = TokenMinter(em.signing_key, em.tenant_id, "https://sts.windows.net/evil/")
    token = other_issuer.mint(identity, DEMO_AUDIENCE, now=now, expires_on=now + 60).access_token
    status, headers, _, _ = await call(f"{backend.url}/x", token)
    assert status == 401 and "The issuer 'https://sts.windows.net/evil/' is invalid" in headers["WWW-Authenticate"]

    unsigned = jwt.encode(claims, None, algorithm="none")
    for bad, reason in ((unsigned, "algorithm 'none'"), ("not.a.jwt", "malformed"), ("abc", "malformed")):
        status, headers, _, _ = await call(f"{backend.url}/x", bad)
        assert status == 401 and reason in headers["WWW-Authenticate"]
    assert backend.jwks_fetches <= 2  # one fetch, plus at most one refetch for the unknown kid


async def test_two_authorization_headers_are_rejected(em: Emulator, backend: DemoBackend) -> None:
    token = await token_for(em, DEMO_AUDIENCE)
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    status, answer, body, _ = await call(f"{backend.url}/x", headers=headers)
    assert status == 400 and 'error="invalid_request"' in answer["WWW-Authenticate"]
    assert "2 Authorization headers" in body["error_description"]


async def test_header_values_are_escaped(em: Emulator, backend: DemoBackend) -> None:
    token = await token_for(em, 'api://quote"back\\slash')
    status, headers, _, _ = await call(f"{backend.url}/x", token)
    assert status == 401
    assert "The audience 'api://quote\\\"back\\\\slash' is invalid" in headers["WWW-Authenticate"]


async def test_jwks_is_cached(em: Emulator, backend: DemoBackend) -> None:
    token = await token_for(em, OTHER_AUDIENCE)
    for _ in range(5):
        assert (await call(f"{backend.url}/x", token))[0] == 200
    assert backend.jwks_fetches == 1 and em.stats().jwks_requests == 1


async def test_unreachable_jwks_is_503(em: Emulator) -> None:
    token = await token_for(em, DEMO_AUDIENCE)
    async with DemoBackend("http://127.0.0.1:9/keys", em.issuer, [DEMO_AUDIENCE]) as demo:
        status, _, body, _ = await call(f"{demo.url}/x", token)
    assert status == 503 and "could not be fetched" in body["error_description"]


async def test_https(em: Emulator, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    demo = DemoBackend(em.jwks_uri, em.issuer, [DEMO_AUDIENCE])
    url = await demo.start(ssl=server_ctx)
    try:
        assert url.startswith("https://127.0.0.1:")
        status, _, body, _ = await call(f"{url}/secure", await token_for(em, DEMO_AUDIENCE), ssl_ctx=client_ctx)
        assert status == 200 and body["claims"]["aud"] == DEMO_AUDIENCE
    finally:
        await demo.stop()


async def test_refuses_non_loopback(em: Emulator) -> None:
    demo = DemoBackend(em.jwks_uri, em.issuer, [DEMO_AUDIENCE])
    with pytest.raises(ValueError, match="non-loopback"):
        await demo.start("0.0.0.0")
    with pytest.raises(ValueError):
        DemoBackend(em.jwks_uri, em.issuer, [])


def test_threaded_backend_and_emulator(signing_key: SigningKey) -> None:
    with EmulatorThread(key=signing_key) as emu, DemoBackendThread(emu.jwks_uri, emu.issuer, [DEMO_AUDIENCE]) as be:
        with httpx.Client(trust_env=False) as client:
            reply = client.get(f"{emu.url}/metadata/identity/oauth2/token",
                               params={"api-version": "2018-02-01", "resource": DEMO_AUDIENCE},
                               headers={"Metadata": "true"})  # fmt: skip
            token = reply.json()["access_token"]
            assert client.get(f"{be.url}/a").status_code == 401
            ok = client.get(f"{be.url}/a", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["claims"]["appid"] == SYSTEM_CLIENT_ID
        stats = be.stats()
        assert (stats["total"], stats["accepted"], stats["rejected"]) == (2, 1, 1)
        assert "Authorization" not in stats["requests"][0]["headers"]
        be.reset()
        assert be.stats().total == 0


def test_resolve_source_and_cli_errors() -> None:
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--emulator", "http://127.0.0.1:8479/", "--audience", "a"])
    jwks_uri, issuers = resolve_source(args)
    assert jwks_uri == "http://127.0.0.1:8479/5ca1ab1e-0000-4000-8000-000000000001/discovery/v2.0/keys"
    assert issuers == ["https://sts.windows.net/5ca1ab1e-0000-4000-8000-000000000001/"]
    assert backend_main(["--audience", "a"]) == 2  # no key source
    assert backend_main(["--jwks-uri", "http://127.0.0.1:1/k", "--audience", "a", "--host", "0.0.0.0"]) == 2


def test_cli_serves_and_stops_cleanly(signing_key: SigningKey) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env["PYTHONPATH"] = str(ROOT / "addon")
    with EmulatorThread(key=signing_key) as emu:
        cmd = [sys.executable, "-m", "apim_mi.backend", "--emulator", emu.url, "--audience", DEMO_AUDIENCE,
               "--port", "0", "--log-level", "WARNING"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split(" on ", 1)[1].split(" ", 1)[0]
            with httpx.Client(trust_env=False) as client:
                token = client.get(f"{emu.url}/metadata/identity/oauth2/token",
                                   params={"api-version": "2018-02-01", "resource": DEMO_AUDIENCE},
                                   headers={"Metadata": "true"}).json()["access_token"]  # fmt: skip
                assert client.get(f"{url}/x", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        finally:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in stderr
