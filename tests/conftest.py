"""Shared fixtures: network guard, the emulator, the validating backend, test certificates.

Non-loopback sockets are blocked for the whole suite by pytest-socket (``--allow-hosts`` in pyproject.toml); the
README's test command additionally runs pytest in a private network namespace where only ``lo`` exists, which also
covers the mitmdump subprocesses. No test constructs a credential before the emulator's variables are set.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Real-world policies copied from public samples, kept beside the repository, not in it (its README names each source).
REALWORLD = Path(os.environ.get("APIM_MI_REALWORLD_CORPUS", ROOT.parent / "shared" / "corpus" / "realworld"))
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


@pytest.fixture(scope="module")
def standin(emulator: object) -> Iterator[object]:
    """The OpenAI / Content Safety stand-in (accepts only managed-identity tokens), fresh for each module."""
    from apim_mi.openai_backend import OpenAIBackendThread

    with OpenAIBackendThread(emulator.jwks_uri, emulator.issuer) as s:  # type: ignore[attr-defined]
        yield s


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


# -- mutual TLS (authentication-certificate) -------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a server certificate for 127.0.0.1, and a client certificate as PEM and as PFX (password 'pw')."""
    import trustme
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, load_pem_private_key, pkcs12
    from cryptography.x509 import load_pem_x509_certificate

    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("orders-client@contoso.test", common_name="orders-client")
    ca.cert_pem.write_to_path(d / "ca.pem")
    server.private_key_and_cert_chain_pem.write_to_path(d / "server.pem")
    client.private_key_and_cert_chain_pem.write_to_path(d / "client.pem")
    cert = load_pem_x509_certificate(client.cert_chain_pems[0].bytes())
    key = load_pem_private_key(client.private_key_pem.bytes(), None)
    pfx = pkcs12.serialize_key_and_certificates(b"client", key, cert, None, BestAvailableEncryption(b"pw"))  # type: ignore[arg-type]
    (d / "client.pfx").write_bytes(pfx)
    return {"dir": d, "ca": ca}


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        data = json.dumps({"client": subject.get("commonName")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def mtls_backend(pki: dict[str, Any]) -> Iterator[str]:
    """An HTTPS backend on 127.0.0.1 that refuses TLS clients without a certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["dir"] / "server.pem")
    context.load_verify_locations(pki["dir"] / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED


    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def finish_request(self, request: Any, client_address: Any) -> None:
            """The TLS handshake in the connection's own thread: one slow client cannot stall the others."""
            request.settimeout(10)
            tls = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
                super().finish_request(tls, client_address)
            except (ssl.SSLError, OSError):
                pass
            finally:
                tls.close()  # wrap_socket detached the accepted socket: shutdown_request cannot close it

    server = Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
