"""The emulator's other managed-identity protocols, each driven by the real clients: Cloud Shell and Service Fabric
with azure-identity sync and aio (and MSAL for Service Fabric; MSAL has no Cloud Shell source), Azure Arc with sync,
aio and MSAL inside a private mount namespace (tests/arc_namespace.py); then ``apim-mi token`` and a mitmdump
proxy over each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msal
import pytest
import requests
from apim_mi.emulator import EmulatorConfig, EmulatorThread
from apim_mi.emulator.protocols import CLOUD_SHELL_PATH, SERVICE_FABRIC_PATH
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential
from azure.identity import aio as identity_aio
from emulator_helpers import FAST, USER_CLIENT_ID, use_emulator
from proxy import ROOT, clean_env, curl, proxy_for, write_rules

RESOURCE = "https://vault.azure.net"
SCOPE = RESOURCE + "/.default"


@pytest.fixture(scope="module")
def protocols_emulator(emulator: Any) -> Iterator[EmulatorThread]:
    """With the HTTPS listener (Service Fabric) and the session emulator's key, so the shared backend validates."""
    with EmulatorThread(EmulatorConfig(), key=emulator.emulator.signing_key, https_port=0) as emu:
        yield emu


@pytest.fixture
def emu(protocols_emulator: EmulatorThread) -> EmulatorThread:
    protocols_emulator.reset()
    return protocols_emulator


def verified(emu: Any, token: str, audience: str = RESOURCE) -> dict[str, Any]:
    key = emu.emulator.signing_key.private_key.public_key()
    return dict(jwt.decode(token, key, algorithms=["RS256"], audience=audience))


def requests_of(emu: Any, protocol: str) -> list[Any]:
    return [r for r in emu.stats().requests if r.protocol == protocol]


# -- Cloud Shell ----------------------------------------------------------------------------------------------------


def test_cloud_shell_sync_and_aio(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, emu, "cloudshell")  # type: ignore[arg-type]
    assert verified(emu, ManagedIdentityCredential(**FAST).get_token(SCOPE).token)["aud"] == RESOURCE

    async def aio() -> str:
        async with identity_aio.ManagedIdentityCredential(**FAST) as cred:
            return (await cred.get_token(SCOPE)).token

    import asyncio

    assert verified(emu, asyncio.run(aio()))["oid"]
    seen = requests_of(emu, "cloudshell")
    assert [(r.method, r.status, r.query.get("resource")) for r in seen] == [("POST", 200, RESOURCE)] * 2
    assert seen[0].headers.get("Metadata") == "true"
    with pytest.raises(ValueError):  # Cloud Shell has no user-assigned identities: azure-identity says so up front
        ManagedIdentityCredential(client_id=USER_CLIENT_ID)


def test_cloud_shell_protocol_errors(emu: Any) -> None:
    url = emu.url + CLOUD_SHELL_PATH
    assert httpx.post(url, data={"resource": RESOURCE}, trust_env=False).status_code == 400  # no Metadata header
    assert httpx.get(url, headers={"Metadata": "true"}, trust_env=False).status_code == 405
    r = httpx.post(url, data={}, headers={"Metadata": "true"}, trust_env=False)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


# -- Service Fabric -------------------------------------------------------------------------------------------------


def test_service_fabric_sync_pins_the_thumbprint(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, emu, "servicefabric")  # type: ignore[arg-type]
    env = emu.env("servicefabric")
    assert env["IDENTITY_ENDPOINT"].startswith("https://127.0.0.1:") and len(env["IDENTITY_SERVER_THUMBPRINT"]) == 40
    assert verified(emu, ManagedIdentityCredential(**FAST).get_token(SCOPE).token)["aud"] == RESOURCE
    seen = requests_of(emu, "servicefabric")
    assert [(r.status, r.query.get("api-version")) for r in seen] == [(200, "2019-07-01-preview")]
    monkeypatch.setenv("IDENTITY_SERVER_THUMBPRINT", "0" * 40)
    with pytest.raises((ClientAuthenticationError, CredentialUnavailableError, requests.exceptions.SSLError)):
        ManagedIdentityCredential(**FAST).get_token(SCOPE)


def test_service_fabric_aio(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    use_emulator(monkeypatch, emu, "servicefabric")  # type: ignore[arg-type]

    async def aio() -> str:
        async with identity_aio.ManagedIdentityCredential(**FAST) as cred:
            return (await cred.get_token(SCOPE)).token

    assert verified(emu, asyncio.run(aio()))["aud"] == RESOURCE
    assert [r.status for r in requests_of(emu, "servicefabric")] == [200]


def test_service_fabric_msal(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    use_emulator(monkeypatch, emu, "servicefabric")  # type: ignore[arg-type]
    client = msal.ManagedIdentityClient(msal.SystemAssignedManagedIdentity(), http_client=requests.Session())
    result = client.acquire_token_for_client(resource=RESOURCE)
    assert "access_token" in result, result
    assert verified(emu, result["access_token"])["aud"] == RESOURCE


def test_service_fabric_errors_have_its_shape(emu: Any) -> None:
    url = emu.env("servicefabric")["IDENTITY_ENDPOINT"]
    ca = emu.ca_pem.decode()
    import ssl

    ctx = ssl.create_default_context(cadata=ca)
    r = httpx.get(url, params={"api-version": "2019-07-01-preview", "resource": RESOURCE}, verify=ctx, trust_env=False)
    assert r.status_code == 401 and r.json()["error"]["code"] == "SecretHeaderNotFound"
    r = httpx.get(url, params={"api-version": "2019-07-01-preview"}, headers={"Secret": emu.identity_header},
                  verify=ctx, trust_env=False)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "ArgumentNullOrEmpty"
    assert url.endswith(SERVICE_FABRIC_PATH)


# -- apim-mi token and the proxy over each --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["cloudshell", "servicefabric"])
def test_apim_mi_token_over(protocol: str, emu: Any) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "apim-mi"), "token", "--credential", "managed-identity",
         "--resource", RESOURCE, "--json"],
        env=clean_env(emu.env(protocol)), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["claims"]["aud"] == RESOURCE
    assert [r.status for r in requests_of(emu, protocol)] == [200]


@pytest.mark.parametrize("protocol", ["cloudshell", "servicefabric"])
def test_proxy_over(protocol: str, emu: Any, backend: Any, tmp_path: Path) -> None:
    rules = write_rules(tmp_path, f"""
        rules:
          - name: orders
            match: {{host: "127.0.0.1:{backend.port}"}}
            resource: https://orders.contoso.test
    """)  # fmt: skip
    md = proxy_for(tmp_path, emu, rules, protocol=protocol)
    try:
        for _ in range(2):
            status, body = curl("-x", md.url, f"{backend.url}/api/orders")
            assert status == 200, (body, md.text())
        assert body["claims"]["aud"] == "https://orders.contoso.test"  # type: ignore[index]
        assert [r.status for r in requests_of(emu, protocol)] == [200]  # one token request, then the cache
    finally:
        md.stop()


# -- Azure Arc ------------------------------------------------------------------------------------------------------


def _mount_namespace_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _mount_namespace_available(), reason="needs a private mount namespace (root or userns)")
def test_azure_arc_in_a_private_mount_namespace(tmp_path: Path) -> None:
    """sync, aio, MSAL, apim-mi token and the proxy, with the key file in a tmpfs the host never sees."""
    host_before = sorted(p.name for p in Path("/var/opt").iterdir()) if Path("/var/opt").exists() else None
    script = Path(__file__).resolve().parent / "arc_namespace.py"
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "--", "sh", "-c",
         'mkdir -p /var/opt && mount -t tmpfs tmpfs /var/opt && exec "$@"', "_", sys.executable, str(script),
         str(tmp_path)],
        env=clean_env({"PYTHONPATH": str(ROOT / "addon")}), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sync_system"]["aud"] == RESOURCE and result["sync_system"]["appid"] != USER_CLIENT_ID
    for client in ("sync_user", "aio_user", "msal_user"):
        assert result[client].get("appid") == USER_CLIENT_ID, (client, result[client])
    assert result["cli"]["claims"]["appid"] == USER_CLIENT_ID
    assert result["proxy"] == {"status": 200, "aud": "https://orders.contoso.test"}
    statuses = [status for _protocol, status, _ in result["arc_requests"]]
    assert statuses == [401, 200] * 4, result["arc_requests"]  # each token: the challenge, then the proof
    assert result["key_files_left"] and result["key_files_after_stop"] == []
    host_after = sorted(p.name for p in Path("/var/opt").iterdir()) if Path("/var/opt").exists() else None
    assert host_after == host_before  # nothing reached the host's /var/opt
