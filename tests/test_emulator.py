"""The managed-identity emulator against the real azure-identity clients (async and sync), JWKS and admin API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from apim_mi.emulator import (
    DEFAULT_TENANT_ID,
    Emulator,
    EmulatorConfig,
    EmulatorThread,
    Fault,
    FaultKind,
    SigningKey,
    parse_identity,
)
from apim_mi.emulator.cli import main as emulator_main
from apim_mi.emulator.faults import FaultQueue
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError
from azure.identity import ManagedIdentityCredential as SyncManagedIdentityCredential
from azure.identity.aio import ManagedIdentityCredential
from emulator_helpers import (
    DEMO_AUDIENCE,
    FAST,
    SYSTEM_CLIENT_ID,
    SYSTEM_OBJECT_ID,
    USER_CLIENT_ID,
    USER_OBJECT_ID,
    get_json,
    post_json,
    raw_token,
    running_emulator,
    use_emulator,
)
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
VAULT = "https://vault.azure.net"


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
async def em(signing_key: SigningKey) -> AsyncIterator[Emulator]:
    async for emu in running_emulator(None, signing_key):
        yield emu


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


# -- azure-identity (async) over IMDS and App Service -----------------------------------------------------------------


async def test_imds_system_assigned(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, em, "imds")
    async with ManagedIdentityCredential() as cred:
        first = await cred.get_token(f"{DEMO_AUDIENCE}/.default")
        for _ in range(5):
            assert (await cred.get_token(f"{DEMO_AUDIENCE}/.default")).token == first.token
    claims = claims_of(first.token)
    assert claims["aud"] == DEMO_AUDIENCE
    assert claims["appid"] == SYSTEM_CLIENT_ID
    assert claims["oid"] == claims["sub"] == SYSTEM_OBJECT_ID
    assert claims["tid"] == DEFAULT_TENANT_ID
    assert claims["iss"] == em.issuer == f"https://sts.windows.net/{DEFAULT_TENANT_ID}/"
    assert (claims["idtyp"], claims["ver"]) == ("app", "1.0")
    assert claims["exp"] == first.expires_on
    assert "Microsoft.ApiManagement/service" in str(claims["xms_mirid"])
    header = jwt.get_unverified_header(first.token)
    assert header["alg"] == "RS256" and header["kid"] == header["x5t"] == em.signing_key.kid

    stats = em.stats()
    assert stats.count(DEMO_AUDIENCE) == 1
    assert stats["token_requests"] == {f"system|{DEMO_AUDIENCE}": 1}
    assert stats.issued_tokens == [first.token]
    record = stats.requests[-1]
    assert record.path == "/metadata/identity/oauth2/token"
    assert record.query == {"api-version": "2018-02-01", "resource": DEMO_AUDIENCE}
    assert record.headers["Metadata"] == "true"
    assert record.status == 200


@pytest.mark.parametrize(
    ("kwargs", "sent"),
    [
        ({"client_id": USER_CLIENT_ID}, ("client_id", USER_CLIENT_ID)),
        ({"identity_config": {"object_id": USER_OBJECT_ID}}, ("object_id", USER_OBJECT_ID)),
        (
            {"identity_config": {"resource_id": "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/resourcegroups/"
                                                "apim-mi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
                                                "apim-mi-user-1"}},
            ("resource_id", None),
        ),
    ],
    ids=["client_id", "object_id", "resource_id"],
)  # fmt: skip
async def test_imds_user_assigned(
    em: Emulator, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, object], sent: tuple[str, str | None]
) -> None:
    use_emulator(monkeypatch, em, "imds")
    async with ManagedIdentityCredential(**kwargs) as cred:  # type: ignore[arg-type]
        token = await cred.get_token(VAULT)
        await cred.get_token(f"{VAULT}/.default")
    claims = claims_of(token.token)
    assert (claims["aud"], claims["appid"], claims["oid"]) == (VAULT, USER_CLIENT_ID, USER_OBJECT_ID)
    name, value = sent
    query = em.stats().requests[-1].query
    assert name in query and (value is None or query[name] == value)
    assert em.token_requests(VAULT, USER_CLIENT_ID) == 1
    assert em.token_requests(VAULT) == 0  # not the system identity


@pytest.mark.parametrize("client_id", [None, USER_CLIENT_ID], ids=["system", "user"])
async def test_app_service(em: Emulator, monkeypatch: pytest.MonkeyPatch, client_id: str | None) -> None:
    use_emulator(monkeypatch, em, "appservice")
    async with ManagedIdentityCredential(client_id=client_id) as cred:
        token = await cred.get_token(f"{DEMO_AUDIENCE}/.default")
        await cred.get_token(f"{DEMO_AUDIENCE}/.default")
    claims = claims_of(token.token)
    assert claims["aud"] == DEMO_AUDIENCE
    assert claims["appid"] == (client_id or SYSTEM_CLIENT_ID)
    record = em.stats().requests[-1]
    assert record.path == "/msi/token" and record.protocol == "appservice"
    assert record.query["api-version"] == "2019-08-01"
    assert record.query["resource"] == DEMO_AUDIENCE
    assert record.query.get("client_id") == client_id
    assert record.headers["X-IDENTITY-HEADER"] == em.identity_header
    assert em.token_requests(DEMO_AUDIENCE, client_id) == 1


async def test_app_service_reply_shape(em: Emulator) -> None:
    status, _, body = await raw_token(em, VAULT, protocol="appservice", client_id=USER_CLIENT_ID)
    assert status == 200
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert (body["resource"], body["client_id"], body["token_type"]) == (VAULT, USER_CLIENT_ID, "Bearer")
    assert body["expires_on"].isdigit()


async def test_imds_reply_shape_and_echo(em: Emulator) -> None:
    status, headers, body = await raw_token(em, VAULT, object_id=USER_OBJECT_ID)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert set(body) == {"access_token", "expires_in", "expires_on", "ext_expires_in", "not_before", "resource",
                         "token_type", "object_id"}  # fmt: skip
    assert all(isinstance(v, str) for v in body.values())
    assert body["object_id"] == USER_OBJECT_ID and body["resource"] == VAULT
    assert int(body["expires_on"]) - int(time.time()) in range(3590, 3601)


def test_sync_credential_imds_and_emulator_thread(monkeypatch: pytest.MonkeyPatch, signing_key: SigningKey) -> None:
    """The sync credential goes through MSAL; it needs a lifetime over 300 s to cache."""
    with EmulatorThread(EmulatorConfig(), key=signing_key) as emu:
        use_emulator(monkeypatch, emu, "imds")
        cred = SyncManagedIdentityCredential(client_id=USER_CLIENT_ID)
        with cred:
            token = cred.get_token(f"{DEMO_AUDIENCE}/.default")
            again = cred.get_token(f"{DEMO_AUDIENCE}/.default")
        assert again.token == token.token
        assert claims_of(token.token)["appid"] == USER_CLIENT_ID
        stats = emu.stats()
        assert stats.count(DEMO_AUDIENCE, USER_CLIENT_ID) == 1
        assert stats.requests[-1].headers.get("x-client-SKU") == "MSAL.Python"
        emu.add_faults(503)
        assert emu.stats().faults_pending[0]["status"] == 503
        emu.reset()
        assert emu.stats().total_requests == 0 and not emu.stats().faults_pending


def test_sync_credential_app_service(monkeypatch: pytest.MonkeyPatch, signing_key: SigningKey) -> None:
    with EmulatorThread(EmulatorConfig(), key=signing_key) as emu:
        use_emulator(monkeypatch, emu, "appservice")
        with SyncManagedIdentityCredential() as cred:
            token = cred.get_token(VAULT)
        assert claims_of(token.token)["aud"] == VAULT
        assert emu.stats().requests[-1].headers["X-IDENTITY-HEADER"] == emu.identity_header


async def test_trailing_slash_is_another_resource(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, em)
    async with ManagedIdentityCredential() as cred:
        bare = await cred.get_token("https://management.azure.com/.default")
        slash = await cred.get_token("https://management.azure.com//.default")
        await cred.get_token("https://management.azure.com//.default")
    assert claims_of(bare.token)["aud"] == "https://management.azure.com"
    assert claims_of(slash.token)["aud"] == "https://management.azure.com/"
    assert em.token_requests("https://management.azure.com") == 1
    assert em.token_requests("https://management.azure.com/") == 1


async def test_concurrent_cold_requests_are_fast(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """No single-flight in azure-identity 1.27: N concurrent calls are N requests; the backlog keeps them fast."""
    use_emulator(monkeypatch, em)
    started = time.perf_counter()
    async with ManagedIdentityCredential() as cred:
        tokens = await asyncio.gather(*(cred.get_token(VAULT) for _ in range(20)))
    assert time.perf_counter() - started < 1.0
    assert len({claims_of(t.token)["uti"] for t in tokens}) == em.token_requests(VAULT) == 20


@pytest.fixture(scope="module")
def thread_emu(signing_key: SigningKey) -> Iterator[EmulatorThread]:
    with EmulatorThread(key=signing_key) as emu:
        yield emu


@settings(max_examples=60, deadline=None)
@given(resource=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40))
def test_any_resource_is_the_audience_verbatim(thread_emu: EmulatorThread, resource: str) -> None:
    """No normalisation of any kind: case, slashes, spaces and unicode come back exactly as requested."""
    with httpx.Client(trust_env=False) as client:
        reply = client.get(f"{thread_emu.url}/metadata/identity/oauth2/token", headers={"Metadata": "true"},
                           params={"api-version": "2018-02-01", "resource": resource})  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.json()["resource"] == resource
    assert claims_of(reply.json()["access_token"])["aud"] == resource


# -- errors azure-identity must surface ---------------------------------------------------------------------------


async def test_metadata_header_required(em: Emulator) -> None:
    status, _, body = await raw_token(em, VAULT, headers={"Metadata": "false"})
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": "Required metadata header not specified"}
    assert em.stats().total_requests == 1 and em.token_requests(VAULT) == 0


async def test_app_service_secret_required(em: Emulator) -> None:
    status, _, body = await raw_token(em, VAULT, protocol="appservice", headers={"X-IDENTITY-HEADER": "nope"})
    assert (status, body) == (401, {"statusCode": 401, "message": "Unauthorized"})


async def test_forwarded_requests_are_refused_like_imds(em: Emulator) -> None:
    status, _, body = await raw_token(em, VAULT, headers={"X-Forwarded-For": "10.0.0.1"})
    assert status == 400 and "X-Forwarded-For" in body["error_description"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"api-version": "2017-01-01"}, "api-version"),
        ({"_resource": ""}, "audience"),
        ({"client_id": USER_CLIENT_ID, "object_id": USER_OBJECT_ID}, "Only one identity selector"),
    ],
)
async def test_bad_imds_requests(em: Emulator, params: dict[str, str], fragment: str) -> None:
    resource = params.pop("_resource", VAULT)
    status, _, body = await raw_token(em, resource, **params)
    assert status == 400 and body["error"] == "invalid_request" and fragment in body["error_description"]


@pytest.mark.parametrize("protocol", ["imds", "appservice"])
async def test_unknown_resource_when_restricted(
    signing_key: SigningKey, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    config = EmulatorConfig(resources=[DEMO_AUDIENCE])
    async for emu in running_emulator(config, signing_key):
        use_emulator(monkeypatch, emu, protocol)  # type: ignore[arg-type]
        async with ManagedIdentityCredential(**FAST) as cred:
            assert claims_of((await cred.get_token(DEMO_AUDIENCE)).token)["aud"] == DEMO_AUDIENCE
            with pytest.raises((CredentialUnavailableError, ClientAuthenticationError)) as info:
                await cred.get_token("api://typo-app/.default")
        assert "AADSTS500011" in str(info.value)
        assert "The resource principal named api://typo-app was not found" in str(info.value)
        status, _, body = await raw_token(emu, f"{DEMO_AUDIENCE}/")  # X/ is not X
        assert status == 400
    if protocol == "imds":
        assert body["error"] == "invalid_resource" and DEFAULT_TENANT_ID in body["error_description"]


async def test_unknown_identity(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, em)
    async with ManagedIdentityCredential(client_id="99999999-9999-9999-9999-999999999999", **FAST) as cred:
        with pytest.raises(CredentialUnavailableError, match="Identity not found"):
            await cred.get_token(VAULT)
    assert em.token_requests(VAULT, "99999999-9999-9999-9999-999999999999") == 1
    status, _, body = await raw_token(em, VAULT, protocol="appservice", client_id="nope")
    assert status == 400 and set(body) == {"statusCode", "message", "correlationId"}


async def test_no_system_identity(signing_key: SigningKey) -> None:
    async for emu in running_emulator(EmulatorConfig(system_identity=None), signing_key):
        status, _, body = await raw_token(emu, VAULT)
        assert (status, body["error_description"]) == (400, "Identity not found")
        status, _, _ = await raw_token(emu, VAULT, client_id=USER_CLIENT_ID)
        assert status == 200


# -- faults ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429, 410, 404])
async def test_retryable_status_then_token(em: Emulator, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    use_emulator(monkeypatch, em)
    em.add_faults({"kind": "status", "status": status})
    async with ManagedIdentityCredential(**FAST) as cred:
        token = await cred.get_token(VAULT)
    assert claims_of(token.token)["aud"] == VAULT
    assert [r.status for r in em.stats().requests] == [status, 200]
    assert em.stats().requests[0].fault == "status"


async def test_status_fault_shapes_and_retry_after(em: Emulator) -> None:
    em.add_faults({"status": 503, "retry_after": 2}, Fault(FaultKind.STATUS, status=429, message="slow down"))
    status, headers, body = await raw_token(em, VAULT)
    assert (status, headers["Retry-After"], body["error"]) == (503, "2", "service_unavailable")
    status, _, body = await raw_token(em, VAULT, protocol="appservice")
    assert (status, body["statusCode"], body["message"]) == (429, 429, "slow down")
    assert "correlationId" in body


async def test_retries_exhausted(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, em)
    em.add_faults({"status": 500, "times": None})  # sticky
    async with ManagedIdentityCredential(**FAST) as cred:
        with pytest.raises(ClientAuthenticationError):
            await cred.get_token(VAULT)
    assert em.token_requests(VAULT) == 3  # 1 + retry_total=2
    em.clear_faults()
    assert (await raw_token(em, VAULT))[0] == 200


@pytest.mark.parametrize("kind", ["malformed", "empty"])
async def test_malformed_or_empty_200_is_an_error(em: Emulator, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    use_emulator(monkeypatch, em)
    em.add_faults(kind)
    async with ManagedIdentityCredential(**FAST) as cred:
        with pytest.raises(ClientAuthenticationError):
            await cred.get_token(VAULT)
        assert claims_of((await cred.get_token(VAULT)).token)["aud"] == VAULT  # the fault was consumed
    assert em.stats().issued_count == 1


async def test_dropped_connection_is_retried(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, em)
    em.add_faults("drop")
    async with ManagedIdentityCredential(**FAST) as cred:
        await cred.get_token(VAULT)
    assert em.token_requests(VAULT) == 2 and em.stats().requests[0].status is None


async def test_timeout_fault_and_prompt_stop(signing_key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    async for emu in running_emulator(None, signing_key):
        use_emulator(monkeypatch, emu)
        emu.add_faults({"kind": "timeout", "delay_ms": 30_000, "times": None})
        started = time.perf_counter()
        async with ManagedIdentityCredential(retry_total=0, read_timeout=0.3) as cred:
            with pytest.raises(CredentialUnavailableError):
                await cred.get_token(VAULT)
        assert time.perf_counter() - started < 2
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 2  # the sleeping handler did not hold up stop()


async def test_slow_reply_and_latency(em: Emulator) -> None:
    em.add_faults({"kind": "slow", "delay_ms": 200})
    started = time.perf_counter()
    assert (await raw_token(em, VAULT))[0] == 200
    assert time.perf_counter() - started >= 0.2
    em.configure(latency=100)
    started = time.perf_counter()
    assert (await raw_token(em, VAULT))[0] == 200
    assert time.perf_counter() - started >= 0.1


async def test_wrong_audience_and_expired_tokens(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, em)
    em.add_faults({"kind": "wrong_audience", "audience": "api://other"}, "expired")
    async with ManagedIdentityCredential() as cred:
        wrong = await cred.get_token(VAULT)
    assert claims_of(wrong.token)["aud"] == "api://other"
    _, _, body = await raw_token(em, VAULT)
    claims = claims_of(body["access_token"])
    assert claims["exp"] < time.time() and int(body["expires_on"]) == claims["exp"] and body["resource"] == VAULT


async def test_faults_target_resource_and_identity(em: Emulator) -> None:
    em.add_faults({"status": 500, "resource": "api://a"}, {"status": 503, "client_id": USER_CLIENT_ID})
    assert (await raw_token(em, "api://b"))[0] == 200
    assert (await raw_token(em, "api://b", client_id=USER_CLIENT_ID))[0] == 503
    assert (await raw_token(em, "api://a"))[0] == 500
    assert (await raw_token(em, "api://a"))[0] == 200
    assert em.stats().faults_pending == []


def test_fault_specs() -> None:
    assert Fault.parse(500) == Fault(FaultKind.STATUS, status=500)
    assert Fault.parse("503").status == 503
    assert Fault.parse("timeout").effective_delay_ms == 60_000
    assert Fault.parse({"kind": "slow", "delay_ms": 5}).delay_ms == 5
    for bad in ("explode", {"kind": "status", "status": "500"}, {"statuz": 1}, {"status": 200}, True, {"times": 0,
                "kind": "drop"}):  # fmt: skip
        with pytest.raises(ValueError):
            Fault.parse(bad)  # type: ignore[arg-type]
    queue = FaultQueue()
    queue.add(Fault(FaultKind.DROP, times=2))
    assert [queue.take("r", "system") is not None for _ in range(3)] == [True, True, False]


# -- JWKS, discovery, keys ------------------------------------------------------------------------------------------


async def test_jwks_with_pyjwkclient_and_discovery(em: Emulator) -> None:
    _, _, body = await raw_token(em, DEMO_AUDIENCE, client_id=USER_CLIENT_ID)
    token = body["access_token"]
    for path in ("/v2.0/.well-known/openid-configuration", "/.well-known/openid-configuration"):
        status, _, doc = await get_json(f"{em.url}/{em.tenant_id}{path}")
        assert status == 200 and doc["issuer"] == em.issuer and doc["jwks_uri"].startswith(em.url)
        client = jwt.PyJWKClient(doc["jwks_uri"])
        key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
        claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=DEMO_AUDIENCE, issuer=em.issuer)
        assert claims["appid"] == USER_CLIENT_ID
    status, _, keys = await get_json(f"{em.url}/common/discovery/keys")
    assert status == 200 and keys["keys"][0]["kid"] == em.signing_key.kid and keys["keys"][0]["x5c"]
    status, _, error = await get_json(f"{em.url}/someone-else/discovery/v2.0/keys")
    assert status == 400 and "AADSTS90002" in error["error_description"]


def test_key_file_keeps_kid_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    first = SigningKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load_or_create(path).kid == first.kid
    assert Emulator(EmulatorConfig(key_path=str(path))).signing_key.kid == first.kid


# -- admin API, configuration, binding ------------------------------------------------------------------------------


async def test_admin_api(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = f"{em.url}/_emulator"
    assert (await get_json(f"{admin}/health"))[2]["status"] == "ok"
    status, config = await post_json(f"{admin}/config", {"lifetime": 600, "resources": [VAULT], "refresh_in": 60})
    assert status == 200 and config["token_lifetime"] == 600 and config["resources"] == [VAULT]
    status, body = await post_json(f"{admin}/faults", [500, {"kind": "drop", "resource": "api://x"}])
    assert status == 200 and len(body["faults_pending"]) == 2
    assert (await raw_token(em, VAULT))[0] == 500
    status, _, reply = await raw_token(em, VAULT)
    assert int(reply["expires_in"]) in range(590, 601) and reply["refresh_in"] == 60
    assert (await raw_token(em, "https://graph.microsoft.com"))[0] == 400
    _, _, stats = await get_json(f"{admin}/stats")
    assert stats["total_requests"] == 3 and stats["token_requests"] == {f"system|{VAULT}": 2,
                                                                        "system|https://graph.microsoft.com": 1}
    assert stats["issued_tokens"] == [reply["access_token"]]
    assert stats["requests"][0]["query"]["resource"] == VAULT
    assert (await post_json(f"{admin}/config", {"token_lifetime": "long"}))[0] == 400
    assert (await post_json(f"{admin}/config", {"colour": 1}))[0] == 400
    assert (await post_json(f"{admin}/faults", [{"kind": "explode"}]))[0] == 400
    assert (await post_json(f"{admin}/reset", {}))[0] == 200
    _, _, stats = await get_json(f"{admin}/stats")
    assert stats["total_requests"] == 0 and stats["faults_pending"] == [] and stats["issued_tokens"] == []
    _, _, config = await get_json(f"{admin}/config")
    assert (config["token_lifetime"], config["resources"], config["refresh_in"]) == (3600, None, None)


async def test_refresh_in_reaches_azure_identity(em: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, em)
    em.configure(refresh_in=120)
    async with ManagedIdentityCredential() as cred:
        info = await cred.get_token_info(VAULT)
    assert info.refresh_on is not None and 110 <= info.refresh_on - time.time() <= 121


async def test_refuses_non_loopback_without_opt_in(signing_key: SigningKey) -> None:
    emu = Emulator(key=signing_key)
    with pytest.raises(ValueError, match="non-loopback"):
        await emu.start(host="0.0.0.0")
    assert not emu.running


def test_config_validation_and_identity_specs() -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(token_lifetime=0)
    with pytest.raises(ValueError):
        EmulatorConfig().updated({"latency_ms": -1})
    spec = parse_identity("33333333-3333-3333-3333-333333333333")
    assert spec.object_id == parse_identity("33333333-3333-3333-3333-333333333333").object_id != spec.client_id
    full = parse_identity("c:o:my-name")
    assert (full.client_id, full.object_id, full.name) == ("c", "o", "my-name")
    assert full.resource_id.endswith("/userAssignedIdentities/my-name")
    with pytest.raises(ValueError):
        parse_identity(":x")


# -- standalone CLI -------------------------------------------------------------------------------------------------


def test_cli_serves_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env["PYTHONPATH"] = str(ROOT / "addon")
    cmd = [sys.executable, "-m", "apim_mi.emulator", "--port", "0", "--json", "--lifetime", "900",
           "--identity", "44444444-4444-4444-4444-444444444444", "--key", str(tmp_path / "k.pem")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["env"]["imds"] == {"AZURE_POD_IDENTITY_AUTHORITY_HOST": started["url"]}
        assert started["env"]["appservice"]["IDENTITY_ENDPOINT"] == started["url"] + "/msi/token"

        async def probe() -> dict[str, object]:
            return (await get_json(f"{started['url']}/_emulator/config"))[2]

        config = asyncio.run(probe())
        assert config["token_lifetime"] == 900
        assert [i["client_id"] for i in config["identities"]] == [SYSTEM_CLIENT_ID,  # type: ignore[union-attr]
                                                                  "44444444-4444-4444-4444-444444444444"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in stderr


def test_cli_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert emulator_main(["--port", str(busy.getsockname()[1])]) == 1
    assert "cannot listen on" in capsys.readouterr().err
    assert emulator_main(["--bogus"]) == 2
    assert emulator_main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "non-loopback" in capsys.readouterr().err
    assert emulator_main(["--fault", "explode"]) == 2
    assert emulator_main(["--lifetime", "0"]) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    "args",
    [
        ["apim_mi.emulator", "--port", "0"],
        ["apim_mi.backend", "--jwks-uri", "http://127.0.0.1:1/t/discovery/v2.0/keys", "--audience", "api://a",
         "--port", "0", "--log-level", "WARNING"],
    ],
    ids=["emulator", "backend"],
)  # fmt: skip
def test_cli_stops_cleanly_on_a_signal_sent_right_after_the_startup_line(args: list[str], sig: int) -> None:
    """The handlers are installed before the line is printed, so a caller may signal as soon as it has read it."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env["PYTHONPATH"] = str(ROOT / "addon")
    proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert " on http://127.0.0.1:" in proc.stdout.readline()
    finally:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in stderr
