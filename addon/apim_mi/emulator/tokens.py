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
from typing import Any, Protocol

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

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


class Principal(Protocol):
    """What a token is issued to: a managed identity (:class:`~.config.Identity`) or an app registration."""

    @property
    def client_id(self) -> str: ...

    @property
    def object_id(self) -> str: ...

    @property
    def resource_id(self) -> str: ...


class TokenMinter:
    """Signs Entra app-only access tokens: v1 (managed identities, apps) or v2 (the token-exchange audience)."""

    def __init__(self, key: SigningKey, tenant_id: str, issuer: str) -> None:
        self._key = key
        self._tenant_id = tenant_id
        self._issuer = issuer

    def mint(
        self,
        principal: Principal,
        audience: str,
        *,
        now: int,
        expires_on: int,
        tenant_id: str | None = None,
        v2: bool = False,
        appidacr: str = "2",
    ) -> MintedToken:
        """Sign a token for ``principal`` with ``aud`` exactly ``audience`` (no normalisation, as Entra).

        ``tenant_id`` issues it in another tenant (``tid`` and ``iss`` follow); ``v2`` gives the v2.0 shape Entra uses
        for the ``api://AzureADTokenExchange`` audience (``iss`` on login.microsoftonline.com, ``azp``)."""
        tenant = tenant_id or self._tenant_id
        issuer = v2_issuer(tenant) if v2 else (self._issuer if tenant == self._tenant_id else v1_issuer(tenant))
        issued_at = min(now, expires_on) - CLOCK_SKEW_BACKDATE
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": issuer,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_on,
            "aio": b64url(secrets.token_bytes(48)),
        }
        if v2:
            claims.update({"azp": principal.client_id, "azpacr": appidacr})
        else:
            claims.update({"appid": principal.client_id, "appidacr": appidacr, "idp": issuer})
        claims.update({
            "idtyp": "app",
            "oid": principal.object_id,
            "rh": "0." + b64url(secrets.token_bytes(24)) + ".",
            "sub": principal.object_id,
            "tid": tenant,
            "uti": b64url(secrets.token_bytes(16)),
            "jti": str(uuid.uuid4()),
            "ver": "2.0" if v2 else "1.0",
        })
        if principal.resource_id:
            claims["xms_mirid"] = principal.resource_id
        return MintedToken(self.sign(claims), claims)

    def sign(self, claims: dict[str, Any]) -> str:
        """RS256 with the emulator's key (also used for the workload-identity service-account token)."""
        headers = {"typ": "JWT", "kid": self._key.kid, "x5t": self._key.x5t}
        return jwt.encode(claims, self._key.private_key, algorithm="RS256", headers=headers)


def v1_issuer(tenant_id: str) -> str:
    return f"https://sts.windows.net/{tenant_id}/"


def v2_issuer(tenant_id: str) -> str:
    """The issuer of v2.0 tokens, and of a managed identity used as a federated credential (Entra's FIC docs)."""
    return f"https://login.microsoftonline.com/{tenant_id}/v2.0"
