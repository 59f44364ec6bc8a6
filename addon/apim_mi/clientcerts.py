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


def validated_downstream(config: Any) -> bool:
    """Does any rule check the client's own certificate (validate-client-certificate, which needs mitmproxy to ask
    for one: ``request_client_cert``)?"""

    def walk(statements: list[Any]) -> bool:
        return any(s.name == "validate-client-certificate" or walk(s.children) for s in statements)

    return any(walk(rule.policy.sections.get(section, [])) for rule in config.rules for section in rule.policy.sections)


def presented_upstream(config: Any) -> bool:
    """Does any rule present a client certificate on the forwarded request (authentication-certificate outside a
    send-request)?"""

    def walk(statements: list[Any]) -> bool:
        return any(s.name == "authentication-certificate" or (s.name != "send-request" and walk(s.children))
                   for s in statements)  # fmt: skip

    return any(walk(rule.policy.sections.get(section, [])) for rule in config.rules for section in rule.policy.sections)


# -- certificates clients present (validate-client-certificate, context.Request.Certificate) -------------------------


_NET_NAMES = {"ST": "S", "emailAddress": "E", "1.2.840.113549.1.9.1": "E"}


def distinguished_name(name: Any) -> str:
    """.NET's ``X500DistinguishedName.Name``: the most specific RDN first, ``", "`` between them, a value with a
    special character in double quotes (``O="Contoso, Inc."``)."""

    def value(text: str) -> str:
        return f'"{text.replace('"', '""')}"' if any(c in text for c in ',+="\n<>;') or text.startswith("#") else text

    return ", ".join(
        "+".join(f"{_NET_NAMES.get(a.rfc4514_attribute_name, a.rfc4514_attribute_name)}={value(str(a.value))}"
                 for a in rdn)
        for rdn in reversed(name.rdns)
    )  # fmt: skip


@dataclass(frozen=True)
class DistinguishedName:
    """.NET's ``X500DistinguishedName`` (``Certificate.SubjectName.Name``)."""

    name: str


@dataclass(frozen=True)
class PresentedCertificate:
    """``context.Request.Certificate``: the X509Certificate2 members APIM's expressions use, from the certificate
    the client presented on its TLS connection to the proxy (mitmproxy's ``request_client_cert``)."""

    thumbprint: str
    serial_number: str
    subject: str
    issuer: str
    not_before: Any  # datetime (UTC)
    not_after: Any
    raw_data: bytes
    subject_name: DistinguishedName
    issuer_name: DistinguishedName
    #: the leaf and the rest of the chain the client sent, as cryptography certificates
    chain: tuple[Any, ...] = ()

    @classmethod
    def of(cls, chain: list[Any]) -> PresentedCertificate:
        from cryptography.hazmat.primitives import hashes, serialization

        leaf = chain[0]
        subject, issuer = distinguished_name(leaf.subject), distinguished_name(leaf.issuer)
        return cls(
            thumbprint=leaf.fingerprint(hashes.SHA1()).hex().upper(),
            serial_number=f"{leaf.serial_number:X}".rjust(2, "0"),
            subject=subject,
            issuer=issuer,
            not_before=leaf.not_valid_before_utc.replace(tzinfo=None),
            not_after=leaf.not_valid_after_utc.replace(tzinfo=None),
            raw_data=leaf.public_bytes(serialization.Encoding.DER),
            subject_name=DistinguishedName(subject),
            issuer_name=DistinguishedName(issuer),
            chain=tuple(chain),
        )


def presented(certificate_list: Any) -> PresentedCertificate | None:
    """The certificate a client connection presented (mitmproxy's ``Client.certificate_list``), or None."""
    if not certificate_list:
        return None
    return PresentedCertificate.of([c.to_cryptography() for c in certificate_list])


def load_ca(path: Path) -> list[Any]:
    """The certificates of a PEM or DER file without a private key (``certificates:`` entries with ``ca: true``)."""
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as e:
        raise CertificateError(f"cannot read {path}: {e.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise CertificateError(f"not a PEM or DER certificate ({e})") from None
