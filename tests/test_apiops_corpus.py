"""Real APIOps extractions from three public repositories (../shared/corpus/apiops, each folder's README names its
source and commit; skipped when absent): each loads with a clean report, and its operations answer through a real
mitmdump acting as the instance's gateway, the policies composed across scopes, named values resolved (plain, from
the overrides, from the APIOps configuration file, from a Key Vault stand-in), the backends stood in locally."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from apim_mi.sources.apiops import load_instance
from apim_mi.sources.apiops.keyvault import KeyVaultValues
from apim_mi.sources.apiops.overrides import Overrides
from apim_mi.tokens import TokenProvider, azure_credential_factory
from apiops_servers import EchoThread, KeyVaultThread
from conftest import ROOT
from emulator_helpers import use_emulator
from proxy import curl, proxy_for, write_rules

CORPUS = Path(os.environ.get("APIM_MI_APIOPS_CORPUS", ROOT.parent / "shared" / "corpus" / "apiops"))
PAGOPA = CORPUS / "pagopa+dx-playground"
REDBEARD = CORPUS / "anotherRedbeard+apimdemo-environment"
GORE = CORPUS / "christopherhouse+Gore-ApiOps-Demo"
EXTRACTIONS = [PAGOPA, REDBEARD, GORE]

pytestmark = pytest.mark.skipif(not all(p.is_dir() for p in EXTRACTIONS), reason=f"APIOps corpus not at {CORPUS}")


@pytest.mark.parametrize("extraction", EXTRACTIONS, ids=lambda p: p.name)
def test_extraction_loads_with_a_clear_report(extraction: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "apim_mi.cli", "validate", str(extraction)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "addon")})  # fmt: skip
    assert out.returncode in (0, 1), out.stdout + out.stderr  # warnings at most, never an error
    assert "Traceback" not in out.stderr and "\n0 error(s)" in out.stdout
    first = out.stdout.splitlines()[0]
    assert "APIOps extraction:" in first and "API(s)" in first and "policy document(s) loaded" in first
    if extraction == GORE:  # a real audience mistake, located: the policy asks for 'https://cognitiveservices…/'
        assert "apis/retry-2/operations/429/policy.xml:13:4:" in out.stdout and "trailing slash" in out.stdout
    if extraction == PAGOPA:  # a used secret without a local value, and where it is used
        assert "named value 'dx-d-itn-playground-be-func-01-key' has no local value" in out.stdout


@pytest.fixture(scope="module")
def echo() -> Iterator[Any]:
    with EchoThread() as server:
        yield server


@pytest.fixture(scope="module")
def vault(emulator: Any) -> Iterator[Any]:
    secrets = {
        "to-do-api-key": "todo-function-key",
        "to-do-api-key-func-v3": "todo-v3-key",
        "dx-d-itn-apimdemo-func-01-key": "func-01-key",
        "dx-d-itn-apimdemo-func-02-key": "func-02-key",
    }
    with KeyVaultThread(emulator.jwks_uri, emulator.issuer, secrets) as kv:
        yield kv


@contextmanager
def _gateway(tmp_path_factory: pytest.TempPathFactory, emulator: Any, body: str) -> Iterator[Any]:
    """A mitmdump acting as the instance a rules file (``body``) names."""
    tmp = tmp_path_factory.mktemp("corpus")
    md = proxy_for(tmp, emulator, write_rules(tmp, body))
    try:
        yield md
    finally:
        md.stop()


def _get(md: Any, url: str, *headers: str) -> tuple[int, Any]:
    args = ["-x", md.url, url]
    for h in headers:
        args[:0] = ["-H", h]
    return curl(*args)


def test_pagopa_key_vault_backend_credentials_and_segment_versions(
    tmp_path_factory: pytest.TempPathFactory, emulator: Any, echo: Any, vault: Any
) -> None:
    rules = f"""
        apim:
          extraction: {PAGOPA}
          key_vault: {{url: "{vault.url}"}}
          named_values: {{dx-d-itn-playground-be-func-01-key: local-key}}
          backends:
            to-do-api-azure-function: {{url: "{echo.url}/todo-fn"}}
            demo-function-app-01: {{url: "{echo.url}/app-01"}}
            demo-function-app-02: {{url: "{echo.url}/app-02"}}
          apis:
            function-demo: {{serviceUrl: "{echo.url}/fn-v1"}}
          subscriptions: {{AGSub: pagopa-all-apis}}
    """
    with _gateway(tmp_path_factory, emulator, rules) as md:
        key = "Ocp-Apim-Subscription-Key: pagopa-all-apis"
        status, seen = _get(md, "http://dx-d-itn-playground-pg-apim-01.azure-api.net/todo/tasks/7", key)
        assert status == 200, md.text()
        # to-do-api: set-backend-service to a backend whose credentials carry a Key Vault-backed named value,
        # then a rewrite-uri that prefixes "api/" (the API's own policy)
        assert seen["path"].endswith("/todo-fn/tasks/7") and seen["path"].startswith("/api/"), seen
        assert seen["headers"]["x-functions-key"] == "todo-function-key"  # backendInformation.json's credentials
        status, seen = _get(md, "http://dx-d-itn-playground-pg-apim-01.azure-api.net/fnapp/v1/FunctionName", key)
        assert status == 200 and seen["path"] == "/app-02/FunctionName", (status, seen)  # its policy picks app-02
        assert seen["headers"]["x-functions-key"] == "func-02-key"
        status, body = _get(md, "http://dx-d-itn-playground-pg-apim-01.azure-api.net/todo/tasks/7")
        assert status == 401 and body["statusCode"] == 401, body
        assert "todo-function-key" not in md.text()


def test_redbeard_configuration_file_named_values_and_outbound_scopes(
    tmp_path_factory: pytest.TempPathFactory, emulator: Any, echo: Any
) -> None:
    rules = f"""
        apim:
          extraction: {REDBEARD}
          configuration: {REDBEARD / "configuration.dev.yaml"}
          named_values:
            allowed-ip-address: "127.0.0.1, ::1"
            entraid-tenant: 5ca1ab1e-0000-4000-8000-000000000001
            entraid-backend-audience: api://backend
            aadb2c-audience: b2c
            aadb2c-tenant-id: b2c-tenant
            FrontDoorId: local
            live-scuc-prd-pyfuncdemo-app-key: k1
            live-scus-pyazfuncdemo-app-key: k2
            azuremaps-subscription-key: k3                 # Key Vault-backed in Azure, a local value here
          apis:
            health-check: {{serviceUrl: "{echo.url}/health"}}
            dotnetfunc-api: {{serviceUrl: "{echo.url}/func"}}
          subscriptions:
            66be28fcac212c004d070001: starter-key          # product starter: no health-check API
            66be28fcac212c004d070002: unlimited-key        # product unlimited: health-check
    """
    with _gateway(tmp_path_factory, emulator, rules) as md:
        status, body = _get(
            md, "http://red-scus-apimdemo-dev.azure-api.net/health-check/ping", "Ocp-Apim-Subscription-Key: starter-key"
        )
        assert status == 401 and "invalid subscription key" in body["message"]
        status, body = _get(
            md,
            "http://red-scus-apimdemo-dev.azure-api.net/health-check/ping",
            "Ocp-Apim-Subscription-Key: unlimited-key",
        )
        assert status == 200 and body == {"ping": True}, md.text()  # the operation's outbound
        assert echo.requests[-1]["path"] == "/health/ping"
        status, seen = _get(md, "http://red-scus-apimdemo-dev.azure-api.net/dotnetfunc/HttpTrigger1?name=x")
        assert status == 200 and seen["path"] == "/func/HttpTrigger1" and seen["query"] == "name=x"  # an open API
        status, body = _get(md, "http://red-scus-apimdemo-dev.azure-api.net/dotnetfunc/nope")
        assert (status, body) == (404, {"statusCode": 404, "message": "Resource not found"})


def test_gore_query_versions_and_subscription_scopes(
    tmp_path_factory: pytest.TempPathFactory, emulator: Any, echo: Any
) -> None:
    rules = f"""
        apim:
          extraction: {GORE}
          apis:
            dogs: {{serviceUrl: "{echo.url}/dogs-api"}}
            dogs-2025-01-07: {{serviceUrl: "{echo.url}/dogs-2025"}}
          subscriptions:
            6720ffc85ddd170760d22c0f: star-wars-key       # extracted, scoped to product star-wars-unlimited
            local-dogs: {{key: dogs-key, scope: api/dogs}}  # a local one
            local-all: {{key: all-key, scope: all}}
    """
    with _gateway(tmp_path_factory, emulator, rules) as md:
        gateway = "http://apim-apiops-dev-eastus2-001.azure-api.net"
        # the Dogs version set is versioned by the api-version query parameter
        status, seen = _get(
            md, f"{gateway}/dogs/breeds?api-version=2024-10-24&page=2", "Ocp-Apim-Subscription-Key: dogs-key"
        )
        assert status == 200 and seen["path"] == "/dogs-api/breeds", (seen, md.text())
        assert seen["query"] == "api-version=2024-10-24&page=2"
        status, body = _get(
            md, f"{gateway}/dogs/breeds?api-version=2024-10-24", "Ocp-Apim-Subscription-Key: star-wars-key"
        )
        assert status == 401 and "invalid subscription key" in body["message"]  # its product has no dogs API
        before = len(echo.requests)
        status, body = _get(md, f"{gateway}/dogs/breeds?api-version=2025-01-07", "Ocp-Apim-Subscription-Key: all-key")
        assert status == 401 and len(echo.requests) == before, body  # that version's validate-jwt wants a token
        status, body = _get(md, f"{gateway}/dogs/breeds?api-version=1999-01-01", "Ocp-Apim-Subscription-Key: all-key")
        assert status == 404


async def test_pagopa_backend_credentials_take_the_key_vault_value(
    monkeypatch: pytest.MonkeyPatch, emu: Any, vault: Any
) -> None:
    """The backend entity (apim_mi.backends) of backendInformation.json gets its x-functions-key credential from a
    Key Vault-backed named value, fetched with a real azure-identity token from the emulator."""
    use_emulator(monkeypatch, emu)
    overrides = Overrides(named_values={"dx-d-itn-playground-be-func-01-key": "k"}, key_vault={"*": vault.url})
    instance = load_instance(PAGOPA, overrides, env={})
    assert instance.targets == {}  # published when the Key Vault values arrive
    instance.publish_backends()
    before = dict(instance.targets["to-do-api-azure-function"].credentials.header)
    assert before == {"x-functions-key": ("key-vault-secret-not-fetched",)}
    tokens = TokenProvider(azure_credential_factory(10.0), timeout=10.0)
    try:
        await KeyVaultValues(instance).ensure(tokens, "managed-identity")
    finally:
        await tokens.close()
    backend = instance.targets["to-do-api-azure-function"]
    assert dict(backend.credentials.header) == {"x-functions-key": ("todo-function-key",)}
    pool = instance.targets["app-demo-pool"]
    assert pool.is_pool and [m.id for m in pool.pool] == ["demo-function-app-01", "demo-function-app-02"]
