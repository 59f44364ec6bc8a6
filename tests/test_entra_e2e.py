"""``workload-identity`` and ``default`` rules end to end through a real mitmdump, offline: the emulator's HTTPS
Entra token endpoint checks the federated service-account token (workload identity, as AKS injects it) or the client
secret (DefaultAzureCredential's EnvironmentCredential), and the backend validates the token the proxy added.
``apim-mi token`` uses the same two credentials."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apim_mi.emulator import DEFAULT_APP_CLIENT_ID, AppRegistration, EmulatorConfig, EmulatorThread
from proxy import ROOT, clean_env, curl, start_mitmdump, write_rules

SECRET = "not-a-real-secret-e2e-0123456789"
AUDIENCE = "https://orders.contoso.test"


@pytest.fixture(scope="module")
def entra(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorThread, Path]]:
    """An emulator with the HTTPS Entra listener and an app with a secret, signing with the session emulator's key
    (so the shared backend validates its tokens)."""
    config = EmulatorConfig(apps=[AppRegistration(secrets=(SECRET,))])
    with EmulatorThread(config, key=emulator.emulator.signing_key, https_port=0) as emu:
        yield emu, tmp_path_factory.mktemp("entra-e2e")


def workload_env(emu: EmulatorThread, directory: Path) -> dict[str, str]:
    return emu.workload_identity_env(directory)


def secret_env(emu: EmulatorThread, directory: Path) -> dict[str, str]:
    env = workload_env(emu, directory)
    del env["AZURE_FEDERATED_TOKEN_FILE"]
    return {**env, "AZURE_CLIENT_SECRET": SECRET}


CASES = {"workload-identity": workload_env, "default": secret_env}


@pytest.mark.parametrize("credential", list(CASES))
def test_rule_injects_an_entra_token_through_mitmdump(
    credential: str, entra: tuple[EmulatorThread, Path], backend: Any, tmp_path: Path
) -> None:
    emu, directory = entra
    emu.reset()
    rules = write_rules(tmp_path, f"""
        credential: {credential}
        rules:
          - name: orders
            match: {{host: "127.0.0.1:{backend.port}", path: /api}}
            resource: {AUDIENCE}
    """)  # fmt: skip
    md = start_mitmdump(["--set", f"mi_rules={rules}"], env=CASES[credential](emu, directory), confdir=tmp_path / "c")
    try:
        for _ in range(3):
            status, body = curl("-x", md.url, f"{backend.url}/api/orders")
            assert status == 200, (body, md.text())
        assert isinstance(body, dict)
        claims = body["claims"]
        assert claims["aud"] == AUDIENCE and claims["appid"] == DEFAULT_APP_CLIENT_ID and claims["tid"] == emu.tenant_id
        entra_requests = [r for r in emu.stats().requests if r.protocol == "entra"]
        assert [r.status for r in entra_requests] == [200]  # one token for three requests
        sent = entra_requests[0].query
        if credential == "workload-identity":
            assert sent["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        else:
            assert "client_secret" not in sent  # recorded without the secret
        assert sent["scope"] == AUDIENCE + "/.default" and sent["grant_type"] == "client_credentials"
        assert f"credential: {credential}" in md.text()
    finally:
        md.stop()


@pytest.mark.parametrize("credential", list(CASES))
def test_apim_mi_token(credential: str, entra: tuple[EmulatorThread, Path]) -> None:
    emu, directory = entra
    out = subprocess.run(
        [str(Path(sys.executable).parent / "apim-mi"), "token", "--credential", credential, "--resource", AUDIENCE,
         "--json"],
        env=clean_env(CASES[credential](emu, directory)), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    claims = json.loads(out.stdout)["claims"]
    assert claims["aud"] == AUDIENCE and claims["appid"] == DEFAULT_APP_CLIENT_ID


def test_wrong_secret_fails_closed_with_entras_error(entra: tuple[EmulatorThread, Path], backend: Any,
                                                     tmp_path: Path) -> None:  # fmt: skip
    emu, directory = entra
    rules = write_rules(tmp_path, f"""
        credential: default
        rules:
          - name: orders
            match: {{host: "127.0.0.1:{backend.port}"}}
            resource: {AUDIENCE}
    """)  # fmt: skip
    emu.reset()
    # Were DefaultAzureCredential to go past the failed EnvironmentCredential, IMDS would be next: point it at the
    # emulator, which would count it, instead of anywhere else.
    env = {**secret_env(emu, directory), "AZURE_CLIENT_SECRET": "wrong", **emu.env("imds")}
    md = start_mitmdump(["--set", f"mi_rules={rules}", "--set", "mi_timeout=5"], env=env, confdir=tmp_path / "c")
    try:
        status, body = curl("-x", md.url, f"{backend.url}/api/orders")
        assert status == 500 and isinstance(body, dict) and body["message"] == "Internal server error"
        md.wait_for(r"failed closed: .*AADSTS7000215")
        assert {r.protocol for r in emu.stats().requests} == {"entra"}  # the chain stopped at the wrong secret
    finally:
        md.stop()
