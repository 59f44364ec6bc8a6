"""The emulator's Entra token endpoint over HTTPS, driven by the real azure-identity credentials (sync and aio):
client secret, certificate, client assertion (a managed identity as a federated credential) and workload identity,
plus the errors Entra gives for each way of getting it wrong, and ``apim-mi emulator --print-env``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trustme
from apim_mi.emulator import (
    DEFAULT_APP_CLIENT_ID,
    DEFAULT_OTHER_TENANT_ID,
    WORKLOAD_ISSUER,
    WORKLOAD_SUBJECT,
    AppRegistration,
    EmulatorConfig,
    EmulatorThread,
    FederatedCredential,
)
from apim_mi.emulator.entra import workload_identity_token
from apim_mi.emulator.tokens import SigningKey, TokenMinter, v2_issuer
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    CertificateCredential,
    ClientAssertionCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.identity import aio as identity_aio
from emulator_helpers import FAST, USER_CLIENT_ID, USER_OBJECT_ID, use_emulator

ROOT = Path(__file__).resolve().parents[1]
SECRET = "not-a-real-secret-0123456789"
FIC_APP = "5ca1ab1e-0000-4000-8000-0000000000f1"  # trusts only the user-assigned identity 1111…
SCOPE = "api://00000000-0000-0000-0000-00000000a11c/.default"
AUDIENCE = SCOPE.removesuffix("/.default")
EXCHANGE = "api://AzureADTokenExchange/.default"


@pytest.fixture(scope="module")
def app_cert() -> trustme.LeafCert:
    """An RSA client certificate (azure-identity signs assertions with RSA only)."""
    return trustme.CA().issue_cert("apim-mi-app", key_type=trustme.KeyType.RSA)


@pytest.fixture(scope="module")
def entra(app_cert: trustme.LeafCert, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorThread]:
    apps = [
        AppRegistration(secrets=(SECRET,), certificates=(app_cert.cert_chain_pems[0].bytes(),)),
        AppRegistration(
            client_id=FIC_APP,
            name="fic-app",
            federated=(FederatedCredential(v2_issuer(EmulatorConfig().tenant_id), USER_OBJECT_ID),),
        ),
    ]
    with EmulatorThread(EmulatorConfig(apps=apps), https_port=0) as emu:
        ca_file = tmp_path_factory.mktemp("entra") / "ca.pem"
        ca_file.write_bytes(emu.ca_pem)
        emu.ca_file = str(ca_file)  # type: ignore[attr-defined]
        yield emu


@pytest.fixture
def emu(entra: EmulatorThread, monkeypatch: pytest.MonkeyPatch) -> EmulatorThread:
    entra.reset()
    use_emulator(monkeypatch, entra)
    return entra


def entra_kwargs(emu: Any) -> dict[str, Any]:
    return {"authority": emu.authority_url, "connection_verify": emu.ca_file, **FAST}


def verified(emu: Any, token: str, audience: str = AUDIENCE) -> dict[str, Any]:
    """The token's claims after checking its signature with the emulator's key, as a backend would."""
    key = emu.emulator.signing_key.private_key.public_key()
    return jwt.decode(token, key, algorithms=["RS256"], audience=audience)


def post_token(emu: Any, form: dict[str, str], tenant: str | None = None) -> httpx.Response:
    return httpx.post(emu.token_endpoint(tenant), data=form, verify=emu.ca_file, trust_env=False)


def mi_assertion(client_id: str = USER_CLIENT_ID) -> str:
    """A managed-identity token for the token-exchange audience, from the emulator's IMDS endpoint."""
    return ManagedIdentityCredential(client_id=client_id, **FAST).get_token(EXCHANGE).token


# -- the four credentials, sync and aio ----------------------------------------------------------------------------


def test_client_secret_sync(emu: Any) -> None:
    cred = ClientSecretCredential(emu.tenant_id, DEFAULT_APP_CLIENT_ID, SECRET, disable_instance_discovery=True,
                                  **entra_kwargs(emu))  # fmt: skip
    claims = verified(emu, cred.get_token(SCOPE).token)
    assert claims["appid"] == DEFAULT_APP_CLIENT_ID and claims["tid"] == emu.tenant_id
    assert claims["appidacr"] == "1" and claims["ver"] == "1.0" and claims["iss"] == emu.issuer
    assert emu.token_requests(AUDIENCE, DEFAULT_APP_CLIENT_ID) == 1


async def test_client_secret_aio_other_tenant(emu: Any) -> None:
    async with identity_aio.ClientSecretCredential(DEFAULT_OTHER_TENANT_ID, DEFAULT_APP_CLIENT_ID, SECRET,
                                                   **entra_kwargs(emu)) as cred:  # fmt: skip
        claims = verified(emu, (await cred.get_token(SCOPE)).token)
    assert claims["tid"] == DEFAULT_OTHER_TENANT_ID
    assert claims["iss"] == f"https://sts.windows.net/{DEFAULT_OTHER_TENANT_ID}/"


def test_certificate_sync(emu: Any, app_cert: trustme.LeafCert, tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_bytes(app_cert.private_key_and_cert_chain_pem.bytes())
    cred = CertificateCredential(emu.tenant_id, DEFAULT_APP_CLIENT_ID, str(pem), disable_instance_discovery=True,
                                 **entra_kwargs(emu))  # fmt: skip
    claims = verified(emu, cred.get_token(SCOPE).token)
    assert claims["appid"] == DEFAULT_APP_CLIENT_ID and claims["appidacr"] == "2"


async def test_certificate_aio(emu: Any, app_cert: trustme.LeafCert, tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_bytes(app_cert.private_key_and_cert_chain_pem.bytes())
    async with identity_aio.CertificateCredential(emu.tenant_id, DEFAULT_APP_CLIENT_ID, str(pem),
                                                  **entra_kwargs(emu)) as cred:  # fmt: skip
        claims = verified(emu, (await cred.get_token(SCOPE)).token)
    assert claims["appid"] == DEFAULT_APP_CLIENT_ID


def test_certificate_of_another_key_is_refused(emu: Any, tmp_path: Path) -> None:
    pem = tmp_path / "other.pem"
    pem.write_bytes(trustme.CA().issue_cert("x", key_type=trustme.KeyType.RSA).private_key_and_cert_chain_pem.bytes())
    cred = CertificateCredential(emu.tenant_id, DEFAULT_APP_CLIENT_ID, str(pem), disable_instance_discovery=True,
                                 **entra_kwargs(emu))  # fmt: skip
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        cred.get_token(SCOPE)


def test_managed_identity_as_federated_credential_sync(emu: Any) -> None:
    """The MI's token for api://AzureADTokenExchange is v2.0 (iss login.microsoftonline.com/<tid>/v2.0, sub = its
    object id); the app trusting that subject gets its token in the other tenant."""
    assertion = mi_assertion()
    mi_claims = jwt.decode(assertion, options={"verify_signature": False})
    assert mi_claims["aud"] == "api://AzureADTokenExchange" and mi_claims["ver"] == "2.0"
    assert mi_claims["iss"] == v2_issuer(emu.tenant_id) and mi_claims["sub"] == USER_OBJECT_ID
    cred = ClientAssertionCredential(DEFAULT_OTHER_TENANT_ID, FIC_APP, lambda: assertion, **entra_kwargs(emu))
    claims = verified(emu, cred.get_token(SCOPE).token)
    assert claims["appid"] == FIC_APP and claims["tid"] == DEFAULT_OTHER_TENANT_ID
    record = emu.stats().requests[-1]
    assert record.protocol == "entra" and "client_assertion" not in record.query
    assert record.query["client_assertion_type"].endswith("jwt-bearer")


async def test_managed_identity_as_federated_credential_aio(emu: Any) -> None:
    async with identity_aio.ManagedIdentityCredential(client_id=USER_CLIENT_ID, **FAST) as mi:
        assertion = (await mi.get_token(EXCHANGE)).token
    async with identity_aio.ClientAssertionCredential(emu.tenant_id, FIC_APP, lambda: assertion,
                                                      **entra_kwargs(emu)) as cred:  # fmt: skip
        assert verified(emu, (await cred.get_token(SCOPE)).token)["appid"] == FIC_APP


def test_federated_credential_of_another_identity_is_refused(emu: Any) -> None:
    """FIC_APP trusts user-assigned identity 1111…; 2222…'s exchange token names its own subject."""
    assertion = mi_assertion("22222222-2222-2222-2222-222222222222")
    cred = ClientAssertionCredential(emu.tenant_id, FIC_APP, lambda: assertion, **entra_kwargs(emu))
    with pytest.raises(ClientAuthenticationError, match="AADSTS70021") as info:
        cred.get_token(SCOPE)
    assert "Assertion Subject: '22222222-0000-4000-8000-0000000000b2'" in info.value.message
    assert "trusts this issuer for the subject(s) 11111111-0000-4000-8000-0000000000b1" in info.value.message


def test_managed_identity_token_for_another_audience_is_refused(emu: Any) -> None:
    vault = ManagedIdentityCredential(client_id=USER_CLIENT_ID, **FAST).get_token("https://vault.azure.net/.default")
    cred = ClientAssertionCredential(emu.tenant_id, FIC_APP, lambda: vault.token, **entra_kwargs(emu))
    with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
        cred.get_token(SCOPE)


def test_workload_identity_sync_and_aio(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = emu.workload_identity_env(tmp_path)
    assert set(env) == {"AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE",
                        "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sync = WorkloadIdentityCredential(connection_verify=emu.ca_file, **FAST)
    assert verified(emu, sync.get_token(SCOPE).token)["appid"] == DEFAULT_APP_CLIENT_ID

    async def aio() -> str:
        async with identity_aio.WorkloadIdentityCredential(connection_verify=emu.ca_file, **FAST) as cred:
            return (await cred.get_token(SCOPE)).token

    import asyncio

    assert verified(emu, asyncio.run(aio()))["appid"] == DEFAULT_APP_CLIENT_ID
    service_account = jwt.decode(Path(env["AZURE_FEDERATED_TOKEN_FILE"]).read_text(), options={"verify_signature": 0})
    assert (service_account["iss"], service_account["sub"]) == (WORKLOAD_ISSUER, WORKLOAD_SUBJECT)


async def test_workload_token_file_is_rotated(tmp_path: Path) -> None:
    """--print-env keeps the service-account token fresh (rewritten at half its 24 h life), as AKS rotates it."""
    import asyncio

    from apim_mi.emulator import Emulator

    emulator = Emulator(EmulatorConfig())
    token_file = tmp_path / "federated-token"
    emulator.write_workload_token(token_file)
    first = token_file.read_text()
    rotation = asyncio.create_task(emulator.rotate_workload_token(token_file, 0.05))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if token_file.read_text() != first:
                break
    finally:
        rotation.cancel()
    assert token_file.read_text() != first
    assert jwt.decode(token_file.read_text(), options={"verify_signature": False})["sub"] == WORKLOAD_SUBJECT


# -- errors, sent by hand --------------------------------------------------------------------------------------------


def _form(**extra: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": DEFAULT_APP_CLIENT_ID, "scope": SCOPE, **extra}


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        (_form(client_secret="wrong"), 401, 7000215),
        (_form(), 401, 7000218),
        (_form(client_secret=SECRET, scope="api://x/read"), 400, 1002012),
        (_form(client_secret=SECRET, scope=f"{SCOPE} https://vault.azure.net/.default"), 400, 70011),
        (_form(client_secret=SECRET, client_id="99999999-9999-9999-9999-999999999999"), 400, 700016),
        (_form(client_secret=SECRET, grant_type="password"), 400, 70003),
        ({"grant_type": "client_credentials", "client_id": DEFAULT_APP_CLIENT_ID}, 400, 900144),
        (_form(client_assertion="not.a.jwt", client_assertion_type="urn:ietf:params:oauth:client-assertion-type:"
                                                                     "jwt-bearer"), 401, 50027),
    ],
    ids=["bad-secret", "no-credential", "not-default-scope", "two-scopes", "unknown-app", "grant", "no-scope",
         "garbage-assertion"],
)  # fmt: skip
def test_errors(emu: Any, form: dict[str, str], status: int, code: int) -> None:
    reply = post_token(emu, form)
    assert reply.status_code == status
    body = reply.json()
    assert body["error_codes"] == [code] and body["error_description"].startswith(f"AADSTS{code}:")


def test_unknown_tenant_and_unaccepted_resource(emu: Any) -> None:
    reply = post_token(emu, _form(client_secret=SECRET), tenant="00000000-dead-beef-0000-000000000000")
    assert reply.status_code == 400 and reply.json()["error_codes"] == [90002]
    emu.configure(resources=["https://vault.azure.net"])
    reply = post_token(emu, _form(client_secret=SECRET))
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_resource"


def test_expired_and_forged_workload_tokens(emu: Any) -> None:
    key = emu.emulator.signing_key
    minter = TokenMinter(key, emu.tenant_id, emu.issuer)
    expired = workload_identity_token(minter, now=int(time.time()) - 7200, lifetime=60)
    reply = post_token(emu, _form(client_assertion=expired, client_assertion_type=JWT))
    assert reply.json()["error_codes"] == [700024]
    forged = workload_identity_token(TokenMinter(SigningKey.generate(), emu.tenant_id, emu.issuer))
    reply = post_token(emu, _form(client_assertion=forged, client_assertion_type=JWT))
    assert reply.status_code == 401 and reply.json()["error_codes"] == [700027]


JWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_faults_apply_to_the_token_endpoint(emu: Any) -> None:
    emu.add_faults({"kind": "status", "status": 503, "client_id": DEFAULT_APP_CLIENT_ID})
    reply = post_token(emu, _form(client_secret=SECRET))
    assert reply.status_code == 503 and reply.json()["error"] == "temporarily_unavailable"
    assert post_token(emu, _form(client_secret=SECRET)).status_code == 200


def test_discovery_on_the_https_listener_points_at_it(emu: Any) -> None:
    doc = httpx.get(f"{emu.authority_url}/{DEFAULT_OTHER_TENANT_ID}/v2.0/.well-known/openid-configuration",
                    verify=emu.ca_file, trust_env=False).json()  # fmt: skip
    assert doc["token_endpoint"] == emu.token_endpoint(DEFAULT_OTHER_TENANT_ID)
    assert doc["issuer"] == f"https://sts.windows.net/{DEFAULT_OTHER_TENANT_ID}/"


# -- apim-mi emulator --print-env ------------------------------------------------------------------------------------

CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    from azure.identity import WorkloadIdentityCredential
    from azure.identity.aio import WorkloadIdentityCredential as AioWorkloadIdentityCredential

    async def aio():
        async with AioWorkloadIdentityCredential() as cred:
            return (await cred.get_token(sys.argv[1])).token

    print(json.dumps([WorkloadIdentityCredential().get_token(sys.argv[1]).token, asyncio.run(aio())]))
""")


def test_print_env_is_all_a_workload_identity_client_needs(tmp_path: Path) -> None:
    """The exports of ``apim-mi emulator --print-env`` alone (CA bundle included) let the real sync and aio
    WorkloadIdentityCredential get tokens in a fresh process; the CA kept in --state-dir survives a restart."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith("AZURE_")}
    env["PYTHONPATH"] = str(ROOT / "addon")
    cmd = [sys.executable, "-m", "apim_mi.cli", "emulator", "--port", "0", "--print-env", "--state-dir",
           str(tmp_path / "state")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(7)]
        assert lines[0].startswith("# apim-mi emulator on http://127.0.0.1:")
        exports = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines[1:])
        assert set(exports) == {"AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID", "AZURE_CLIENT_ID",
                                "AZURE_FEDERATED_TOKEN_FILE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}  # fmt: skip
        assert exports["AZURE_AUTHORITY_HOST"].startswith("https://127.0.0.1:")
        client = subprocess.run([sys.executable, "-c", CLIENT, SCOPE], env={**env, **exports}, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert client.returncode == 0, client.stderr
        tokens = json.loads(client.stdout)
        claims = [jwt.decode(t, options={"verify_signature": False}) for t in tokens]
        assert [c["appid"] for c in claims] == [DEFAULT_APP_CLIENT_ID] * 2
        assert (tmp_path / "state" / "ca-key.pem").stat().st_mode & 0o077 == 0
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in stderr
    assert "Entra: https://127.0.0.1:" in stderr
