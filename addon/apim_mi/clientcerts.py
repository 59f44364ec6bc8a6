"""Client certificates for ``authentication-certificate``: loaded from the PEM/PFX files the rules file names (or a
PFX ``body`` from an expression), then presented on the upstream TLS connection.

Two paths use one ``ClientCertificate``: send-request's aiohttp call gets an ``ssl.SSLContext`` with it, and the
forwarded request gets it on mitmproxy's server connection (``tls_start_server``, pyOpenSSL). The private key never
leaves memory except for the moment ``ssl`` needs a file, in a private temporary directory.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


class CertificateError(ValueError):
    """A certificate that cannot be found or read."""


@dataclass(frozen=True)
class ClientCertificate:
    """A certificate chain and its private key, as PEM; ``thumbprint`` is the SHA-1 of the leaf (as APIM shows)."""

    cert_pem: bytes
    key_pem: bytes
    thumbprint: str
    subject: str

    def ssl_context(self, cafile: str | None = None) -> ssl.SSLContext:
        """A client context that verifies the server (default CAs, ``SSL_CERT_FILE``) and presents this cert."""
        context = ssl.create_default_context(cafile=cafile)
        with tempfile.TemporaryDirectory(prefix="apim-mi-cert-") as d:
            path = Path(d) / "client.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.cert_pem + b"\n" + self.key_pem)
            context.load_cert_chain(path)
        return context

    def apply(self, ssl_conn: Any) -> None:
        """Presents the certificate on a pyOpenSSL connection before its handshake (mitmproxy's server side)."""
        from OpenSSL import crypto

        ssl_conn.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, self.cert_pem))
        ssl_conn.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, self.key_pem))


def _from_objects(cert: Any, key: Any, chain: list[Any] | None = None) -> ClientCertificate:
    from cryptography.hazmat.primitives import hashes, serialization

    if cert is None or key is None:
        raise CertificateError("the certificate or its private key is missing")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    for extra in chain or []:
        pem += extra.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return ClientCertificate(pem, key_pem, cert.fingerprint(hashes.SHA1()).hex().upper(), cert.subject.rfc4514_string())


def from_pfx(data: bytes, password: str | None) -> ClientCertificate:
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, cert, chain = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    except ValueError as e:
        raise CertificateError(f"not a PFX/PKCS#12 certificate or wrong password ({e})") from None
    return _from_objects(cert, key, list(chain))


def from_pem(data: bytes, password: str | None) -> ClientCertificate:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        certs = x509.load_pem_x509_certificates(data)
        key = load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"the PEM file needs the certificate and its private key ({e})") from None
    return _from_objects(certs[0], key, certs[1:])


@lru_cache(maxsize=64)
def _load_file(path: str, mtime: float, password: str | None) -> ClientCertificate:
    data = Path(path).read_bytes()
    if path.lower().endswith((".pfx", ".p12")) or not data.lstrip().startswith(b"-----"):
        return from_pfx(data, password)
    return from_pem(data, password)


def load_file(path: Path, password: str | None = None) -> ClientCertificate:
    """A PEM (certificate + key) or PFX file, cached until the file changes."""
    try:
        return _load_file(str(path), path.stat().st_mtime, password)
    except OSError as e:
        raise CertificateError(f"cannot read {path}: {e.strerror}") from None


class UpstreamCertificates:
    """Which client certificate the next upstream TLS connection of a client connection presents, per address.

    The request hook records it (``expect``); mitmproxy's ``tls_start_server`` applies it when it opens the
    connection (``apply``). Entries go when their client connection closes (``forget``)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, tuple[str, int]], ClientCertificate] = {}

    def expect(self, client_id: str, address: tuple[str, int], cert: ClientCertificate) -> None:
        self._pending[(client_id, address)] = cert

    def pending(self, client_id: str, address: tuple[str, int] | None) -> bool:
        return (client_id, address) in self._pending

    def apply(self, client_id: str, address: tuple[str, int] | None, ssl_conn: Any) -> ClientCertificate | None:
        cert = self._pending.get((client_id, address)) if address is not None else None
        if cert is not None and ssl_conn is not None:
            cert.apply(ssl_conn)
        return cert

    def forget(self, client_id: str) -> None:
        for key in [k for k in self._pending if k[0] == client_id]:
            del self._pending[key]


def presented_upstream(config: Any) -> bool:
    """Does any rule present a client certificate on the forwarded request (authentication-certificate outside a
    send-request)?"""

    def walk(statements: list[Any]) -> bool:
        return any(s.name == "authentication-certificate" or (s.name != "send-request" and walk(s.children))
                   for s in statements)  # fmt: skip

    return any(walk(rule.policy.sections.get(section, [])) for rule in config.rules for section in rule.policy.sections)
