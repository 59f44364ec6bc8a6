"""RS256 signing key, JWKS entry and Entra-v1-shaped managed-identity access tokens.

Entra publishes its keys with ``kid == x5t`` (the base64url SHA-1 thumbprint of the key's certificate) and an
``x5c`` chain. The emulator does the same with a self-signed certificate derived *deterministically* from the RSA
key (fixed validity, serial from the key, PKCS#1 v1.5 signature), so a key loaded from a PEM file keeps its ``kid``
across restarts and validators that cached the JWKS stay valid.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .config import Identity

#: Entra backdates ``iat``/``nbf`` by five minutes to absorb clock skew; the emulator does too.
CLOCK_SKEW_BACKDATE = 300

_CERT_NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_CERT_NOT_AFTER = dt.datetime(2049, 12, 31, tzinfo=dt.UTC)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_to_b64url(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class SigningKey:
    """One RSA key plus its self-signed certificate; ``kid`` is the certificate thumbprint like Entra's."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def from_private_key(cls, key: rsa.RSAPrivateKey) -> SigningKey:
        return cls(key, _self_signed_certificate(key))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load a PEM private key, or create one (mode 0600) so that restarts keep the same ``kid``."""
        file = Path(path)
        if file.exists():
            key = serialization.load_pem_private_key(file.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{file}: not an RSA private key")
            return cls.from_private_key(key)
        signing_key = cls.generate()
        pem = signing_key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return signing_key

    @property
    def kid(self) -> str:
        return self.x5t

    @property
    def x5t(self) -> str:
        return b64url(self.certificate.fingerprint(hashes.SHA1()))  # x5t is SHA-1 by definition (RFC 7517)

    def jwk(self, issuer: str | None = None) -> dict[str, Any]:
        """The public key as Entra lists it in its JWKS (``kty, use, kid, x5t, n, e, x5c`` [, ``issuer``])."""
        numbers = self.private_key.public_key().public_numbers()
        entry: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.x5t,
            "n": _int_to_b64url(numbers.n),
            "e": _int_to_b64url(numbers.e),
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")],
        }
        if issuer:
            entry["issuer"] = issuer
        return entry


def _self_signed_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    serial = int.from_bytes(hashlib.sha256(public_der).digest()[:16], "big") >> 1 or 1
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apim-mi emulator token signing")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_CERT_NOT_BEFORE)
        .not_valid_after(_CERT_NOT_AFTER)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class MintedToken:
    """A signed token and the claims inside it (the claims are safe to log; the token is not)."""

    access_token: str
    claims: dict[str, Any]

    @property
    def expires_on(self) -> int:
        return int(self.claims["exp"])

    @property
    def not_before(self) -> int:
        return int(self.claims["nbf"])


class TokenMinter:
    """Signs Entra v1 app-only access tokens for managed identities."""

    def __init__(self, key: SigningKey, tenant_id: str, issuer: str) -> None:
        self._key = key
        self._tenant_id = tenant_id
        self._issuer = issuer

    def mint(self, identity: Identity, audience: str, *, now: int, expires_on: int) -> MintedToken:
        """Sign a token for ``identity`` with ``aud`` exactly ``audience`` (no normalisation, as Entra)."""
        issued_at = min(now, expires_on) - CLOCK_SKEW_BACKDATE
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": self._issuer,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_on,
            "aio": b64url(secrets.token_bytes(48)),
            "appid": identity.client_id,
            "appidacr": "2",
            "idp": self._issuer,
            "idtyp": "app",
            "oid": identity.object_id,
            "rh": "0." + b64url(secrets.token_bytes(24)) + ".",
            "sub": identity.object_id,
            "tid": self._tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "jti": str(uuid.uuid4()),
            "ver": "1.0",
            "xms_mirid": identity.resource_id,
        }
        headers = {"typ": "JWT", "kid": self._key.kid, "x5t": self._key.x5t}
        token = jwt.encode(claims, self._key.private_key, algorithm="RS256", headers=headers)
        return MintedToken(token, claims)
