"""Shared fixtures: network guard, the emulator, the validating backend, test certificates.

Non-loopback sockets are blocked for the whole suite by pytest-socket (``--allow-hosts`` in pyproject.toml); the
README's test command additionally runs pytest in a private network namespace where only ``lo`` exists, which also
covers the mitmdump subprocesses. No test constructs a credential before the emulator's variables are set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addon"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import MI_ENV, Mitmdump, proxy_for  # noqa: E402

# Audiences the shared backend accepts (exact strings: X and X/ differ).
DEMO_AUDIENCE = "api://00000000-0000-0000-0000-00000000a11c"
TEST_AUDIENCES = [
    DEMO_AUDIENCE, "https://orders.contoso.test", "https://management.azure.com/",
    # examples/ (tests/test_examples.py)
    "api://6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b", "https://vault.azure.net", "https://graph.microsoft.com",
]  # fmt: skip
USER_CLIENT_ID = "11111111-1111-1111-1111-111111111111"


@pytest.fixture(autouse=True, scope="session")
def _no_azure_env() -> Iterator[None]:
    """No managed-identity or proxy variable leaks in from the machine; IMDS, if ever asked, is a closed port."""
    saved = {k: os.environ.pop(k) for k in MI_ENV if k in os.environ}
    os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:9"
    yield
    os.environ.pop("AZURE_POD_IDENTITY_AUTHORITY_HOST", None)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def emulator() -> Iterator[object]:
    from apim_mi.emulator import EmulatorConfig, EmulatorThread

    with EmulatorThread(EmulatorConfig()) as emu:
        yield emu


@pytest.fixture
def emu(emulator: object) -> object:
    """The shared emulator with counters, faults and settings reset for this test."""
    emulator.reset()  # type: ignore[attr-defined]
    return emulator


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA and a localhost/127.0.0.1 server certificate for the HTTPS backend."""
    import trustme

    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    ca.cert_pem.write_to_path(paths["ca"])
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(paths["cert"], append=True)
    leaf.private_key_pem.write_to_path(paths["key"])
    return paths


def _backend(emulator: object, ssl_ctx: object | None) -> Iterator[object]:
    from apim_mi.backend import DemoBackendThread

    with DemoBackendThread(
        jwks_uri=emulator.jwks_uri, issuer=emulator.issuer, audiences=TEST_AUDIENCES, ssl=ssl_ctx  # type: ignore[attr-defined]
    ) as backend:
        yield backend


@pytest.fixture(scope="session")
def backend(emulator: object) -> Iterator[object]:
    """The validating backend over plain HTTP."""
    yield from _backend(emulator, None)


@pytest.fixture(scope="session")
def tls_backend(emulator: object, certs: dict[str, Path]) -> Iterator[object]:
    """The validating backend over HTTPS with the test CA's certificate."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    yield from _backend(emulator, ctx)


@pytest.fixture
def md_factory(tmp_path: Path):
    started: list[Mitmdump] = []

    def make(emu: Any, rules: Path, *extra: str, protocol: str = "imds") -> Mitmdump:
        md = proxy_for(tmp_path, emu, rules, *extra, protocol=protocol)
        started.append(md)
        return md

    yield make
    for md in started:
        md.stop()
