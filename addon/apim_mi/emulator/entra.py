"""The emulator's Entra ID token endpoint (client credentials), and the local CA that serves it over HTTPS.

azure-identity and MSAL only talk to an ``https://`` authority, so the endpoint listens on its own TLS port with a
certificate from a local CA (trustme) for ``127.0.0.1``, ``::1`` and ``localhost``::

    POST {authority}/{tenant}/oauth2/v2.0/token
         grant_type=client_credentials & client_id=<app> & scope=<resource>/.default & <client authentication>

The client authentication is one of

* ``client_secret``: one of the app's secrets (``ClientSecretCredential``);
* a certificate assertion (``CertificateCredential``): a JWT with ``iss == sub == client_id`` and ``aud`` the token
  endpoint, signed (RS256 ``x5t`` or PS256 ``x5t#S256``) by the key of one of the app's certificates;
* a federated assertion (``ClientAssertionCredential``, ``WorkloadIdentityCredential``): a token the emulator signed
  -- a managed-identity token for ``api://AzureADTokenExchange`` (managed identity as a federated credential) or the
  workload-identity service-account token -- whose issuer, subject and audience match a federated credential of the
  app.

The reply is Entra's v2 shape; errors carry Entra's AADSTS codes and OAuth error names.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .config import (
    EXCHANGE_AUDIENCES,
    WORKLOAD_ISSUER,
    WORKLOAD_SUBJECT,
    AppRegistration,
    EmulatorConfig,
    FederatedCredential,
)
from .tokens import MintedToken, SigningKey, TokenMinter, v2_issuer

TOKEN_PATH = "/{tenant}/oauth2/v2.0/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Form fields that are secrets: never logged or recorded.
SECRET_FIELDS = frozenset({"client_secret", "client_assertion"})
#: Lifetime of the workload-identity service-account token the emulator writes (AKS projects 24 h tokens too).
WORKLOAD_TOKEN_LIFETIME = 86_400

_CA_CERT, _CA_KEY = "ca.pem", "ca-key.pem"


class EntraError(Exception):
    """An error reply of the token endpoint: HTTP status, OAuth ``error`` and an ``AADSTS…`` description."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description


def error_body(code: str, description: str) -> dict[str, Any]:
    """Entra's error JSON (``error_codes`` holds the AADSTS number when the description starts with one)."""
    number = description[6:].split(":", 1)[0] if description.startswith("AADSTS") else ""
    body: dict[str, Any] = {
        "error": code,
        "error_description": description,
        "error_codes": [int(number)] if number.isdigit() else [],
        "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }
    return body


def oauth_error(status: int) -> str:
    """The OAuth ``error`` Entra pairs with an HTTP status (for injected faults)."""
    if status in (429, 503):
        return "temporarily_unavailable"
    return "server_error" if status >= 500 else "invalid_request"


def token_body(minted: MintedToken, refresh_in: int | None) -> dict[str, Any]:
    """Entra v2's client-credentials reply (``expires_in`` an integer, as Entra sends it)."""
    expires_in = max(minted.expires_on - int(time.time()), 0)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": minted.access_token,
    }
    if refresh_in is not None:
        body["refresh_in"] = refresh_in
    return body


# -- request checks ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """A parsed client-credentials request (the credential itself stays in the form)."""

    client_id: str
    scope: str
    resource: str


def parse_grant(form: Mapping[str, str]) -> Grant:
    """grant_type, client_id and exactly one ``…/.default`` scope; the resource is the scope without ``/.default``."""
    grant_type = form.get("grant_type", "")
    if not grant_type:
        raise EntraError(400, "invalid_request", _missing("grant_type"))
    if grant_type != "client_credentials":
        raise EntraError(
            400,
            "unsupported_grant_type",
            f"AADSTS70003: The app requested an unsupported grant type '{grant_type}'; the emulator "
            "supports client_credentials only.",
        )
    client_id = form.get("client_id", "").strip()
    if not client_id:
        raise EntraError(400, "invalid_request", _missing("client_id"))
    scope = form.get("scope", "").strip()
    if not scope:
        raise EntraError(400, "invalid_request", _missing("scope"))
    scopes = scope.split()
    if len(scopes) > 1:
        raise EntraError(
            400,
            "invalid_scope",
            f"AADSTS70011: The provided value for the input parameter 'scope' is not valid. The scope "
            f"{scope} is not valid. Client credential flows take one resource's /.default scope.",
        )
    if not scope.endswith("/.default"):
        raise EntraError(
            400,
            "invalid_scope",
            f"AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows "
            "must have a scope value with /.default suffixed to the resource identifier (application ID "
            "URI).",
        )
    return Grant(client_id, scope, scope.removesuffix("/.default"))


def _missing(name: str) -> str:
    return f"AADSTS900144: The request body must contain the following parameter: '{name}'."


def unknown_app(client_id: str, tenant: str) -> EntraError:
    return EntraError(
        400,
        "unauthorized_client",
        f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory "
        f"'{tenant}'. This can happen if the application has not been installed by the administrator "
        "of the tenant or consented to by any user in the tenant.",
    )


def authenticate(
    form: Mapping[str, str], app: AppRegistration, config: EmulatorConfig, key: SigningKey, token_url: str
) -> str:
    """Check the request's client authentication; returns ``appidacr`` ("1" secret, "2" certificate/assertion)."""
    secret, assertion = form.get("client_secret"), form.get("client_assertion")
    if secret and assertion:
        raise EntraError(
            400,
            "invalid_request",
            "AADSTS90023: Only one client authentication (client_secret or client_assertion) may be sent.",
        )
    if secret:
        if not any(hmac.compare_digest(secret.encode(), s.encode()) for s in app.secrets):
            raise EntraError(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the "
                "request is the client secret value, not the client secret ID, for a secret added to "
                f"app '{app.client_id}'.",
            )
        return "1"
    if not assertion:
        raise EntraError(
            401,
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' "
            "or 'client_secret'.",
        )
    if form.get("client_assertion_type") != JWT_BEARER:
        raise EntraError(400, "invalid_request", f"AADSTS50027: client_assertion_type must be '{JWT_BEARER}'.")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise EntraError(401, "invalid_client", "AADSTS50027: JWT token is invalid or malformed.") from None
    if claims.get("iss") == app.client_id and claims.get("sub") == app.client_id:
        _check_certificate_assertion(assertion, header, app, token_url)
    else:
        _check_federated_assertion(assertion, claims, app, config, key)
    return "2"


def _check_certificate_assertion(assertion: str, header: Mapping[str, Any], app: AppRegistration, url: str) -> None:
    certificate = _registered_certificate(header, app)
    try:
        claims = jwt.decode(
            assertion,
            certificate.public_key(),
            algorithms=["RS256", "PS256"],  # type: ignore[arg-type]
            options={"verify_aud": False, "require": ["exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise _time_range() from None
    except jwt.PyJWTError as exc:
        raise _bad_signature(f"{exc}") from None
    if str(claims["aud"]).rstrip("/").lower() != url.rstrip("/").lower():
        raise EntraError(
            401,
            "invalid_client",
            f"AADSTS700212: The audience '{claims['aud']}' of the client assertion is not the token endpoint '{url}'.",
        )


def _registered_certificate(header: Mapping[str, Any], app: AppRegistration) -> x509.Certificate:
    wanted = [(hashes.SHA256(), header.get("x5t#S256")), (hashes.SHA1(), header.get("x5t"))]
    for pem in app.certificates:
        certificate = x509.load_pem_x509_certificate(pem)
        for algorithm, thumbprint in wanted:
            if thumbprint and _b64url_equal(thumbprint, certificate.fingerprint(algorithm)):
                return certificate
    raise EntraError(
        401,
        "invalid_client",
        "AADSTS700027: Client assertion failed signature validation. (Reason - The key was not found.) "
        f"No certificate of app '{app.client_id}' has the thumbprint in the assertion's header.",
    )


def _b64url_equal(text: str, digest: bytes) -> bool:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == digest
    except ValueError:
        return False


def _check_federated_assertion(
    assertion: str, claims: Mapping[str, Any], app: AppRegistration, config: EmulatorConfig, key: SigningKey
) -> None:
    issuer, subject = str(claims.get("iss", "")), str(claims.get("sub", ""))
    audiences = claims.get("aud", [])
    audiences = [audiences] if isinstance(audiences, str) else [str(a) for a in audiences]
    trusted = federated_credentials(app, config)
    by_issuer = [f for f in trusted if f.issuer == issuer]
    by_subject = [f for f in by_issuer if f.subject == subject]
    matching = [f for f in by_subject if set(audiences) & set(f.audiences)]
    if not matching:
        raise EntraError(
            400,
            "invalid_client",
            "AADSTS70021: No matching federated identity record found for presented assertion. "
            f"Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. Assertion Audience: "
            f"'{', '.join(audiences)}'. "
            f"{_closest_mismatch(by_issuer, by_subject, app)}",
        )
    try:
        jwt.decode(
            assertion,
            key.private_key.public_key(),
            algorithms=["RS256"],
            options={"verify_aud": False, "require": ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise _time_range() from None
    except jwt.PyJWTError as exc:
        raise _bad_signature(f"the issuer's keys do not verify it ({exc})") from None


def _closest_mismatch(
    by_issuer: list[FederatedCredential], by_subject: list[FederatedCredential], app: AppRegistration
) -> str:
    if by_subject:
        return f"App '{app.client_id}' trusts that subject for the audience(s) {', '.join(by_subject[0].audiences)}."
    if by_issuer:
        subjects = ", ".join(sorted({f.subject for f in by_issuer}))
        return f"App '{app.client_id}' trusts this issuer for the subject(s) {subjects}."
    return f"App '{app.client_id}' has no federated credential for this issuer."


def federated_credentials(app: AppRegistration, config: EmulatorConfig) -> tuple[FederatedCredential, ...]:
    """The app's federated credentials; by default every managed identity and the workload service account."""
    if app.federated is not None:
        return app.federated
    issuer = v2_issuer(config.tenant_id)
    out = [FederatedCredential(issuer, identity.object_id, EXCHANGE_AUDIENCES) for identity in config.identities]
    out.append(FederatedCredential(WORKLOAD_ISSUER, WORKLOAD_SUBJECT, EXCHANGE_AUDIENCES))
    return tuple(out)


def _time_range() -> EntraError:
    return EntraError(401, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range.")


def _bad_signature(reason: str) -> EntraError:
    return EntraError(401, "invalid_client", f"AADSTS700027: Client assertion failed signature validation. {reason}")


def workload_identity_token(
    minter: TokenMinter, *, now: int | None = None, lifetime: int = WORKLOAD_TOKEN_LIFETIME
) -> str:
    """A Kubernetes service-account token like the one AKS projects into ``AZURE_FEDERATED_TOKEN_FILE``."""
    now = int(time.time()) if now is None else now
    return minter.sign(
        {
            "aud": [EXCHANGE_AUDIENCES[0]],
            "iss": WORKLOAD_ISSUER,
            "sub": WORKLOAD_SUBJECT,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "apim-mi", "uid": str(uuid.uuid4())}},
        }
    )


# -- TLS -----------------------------------------------------------------------------------------------------------


class LocalCA:
    """The CA that signs the emulator's HTTPS certificate; kept in a directory so restarts stay trusted."""

    def __init__(self, ca: trustme.CA) -> None:
        self._ca = ca

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str] | None) -> LocalCA:
        """The CA saved in ``directory`` (created there on first use; the key file mode 0600), or a fresh one."""
        if directory is None:
            return cls(trustme.CA(organization_name="apim-mi emulator"))
        folder = Path(directory)
        cert_file, key_file = folder / _CA_CERT, folder / _CA_KEY
        if cert_file.exists() and key_file.exists():
            return cls(trustme.CA.from_pem(cert_file.read_bytes(), key_file.read_bytes()))
        local = cls(trustme.CA(organization_name="apim-mi emulator"))
        folder.mkdir(parents=True, exist_ok=True)
        _write_private(key_file, local._ca.private_key_pem.bytes())
        cert_file.write_bytes(local.pem)
        return local

    @property
    def pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    @cached_property
    def server_cert(self) -> trustme.LeafCert:
        """The HTTPS listener's certificate: every loopback name."""
        return self._ca.issue_cert("127.0.0.1", "::1", "localhost")

    @cached_property
    def server_context(self) -> ssl.SSLContext:
        """TLS for the emulator's HTTPS listener."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        return context

    @property
    def server_thumbprint(self) -> str:
        """SHA-1 of the listener certificate's DER, as Service Fabric's ``IDENTITY_SERVER_THUMBPRINT`` pins it."""
        der = ssl.PEM_cert_to_DER_cert(self.server_cert.cert_chain_pems[0].bytes().decode("ascii"))
        return hashlib.sha1(der).hexdigest()

    def write(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``ca.pem`` (this CA only) and ``ca-bundle.pem`` (this CA plus the public roots from certifi, so a
        process trusting the bundle still reaches real HTTPS hosts); returns both paths."""
        import certifi

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        cert_file, bundle = folder / _CA_CERT, folder / "ca-bundle.pem"
        cert_file.write_bytes(self.pem)
        bundle.write_bytes(Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + self.pem)
        return cert_file, bundle


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
