"""App-registration credentials for rules: a managed identity as a federated credential, a client secret, a certificate.

A rule (or a rules file) whose ``credential`` is a mapping gets its tokens as an *app registration*, through
azure-identity's Entra credentials, instead of as the managed identity itself:

* ``managed-identity-fic``: ``ClientAssertionCredential`` whose assertion is the managed identity's token for
  ``api://AzureADTokenExchange`` (or a sovereign cloud's audience). That token comes from the same
  :class:`~apim_mi.tokens.TokenProvider` (single-flight, background refresh, keep-last-good), so both steps follow
  the same rules; the secretless cross-tenant pattern Microsoft recommends.
* ``client-secret`` / ``client-certificate``: ``ClientSecretCredential`` / ``CertificateCredential``, for local runs
  of the same rules (Microsoft.Identity.Web's ``ClientSecret`` / ``ClientCertificates``).
* ``federated-token-file``: ``WorkloadIdentityCredential`` for this app with a token file (AKS workload identity;
  Microsoft.Identity.Web's ``SignedAssertionFilePath``), the file ``AZURE_FEDERATED_TOKEN_FILE`` names by default.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

FIC = "managed-identity-fic"
CLIENT_SECRET = "client-secret"
CLIENT_CERTIFICATE = "client-certificate"
TOKEN_FILE = "federated-token-file"
#: Per type: the fields it may have besides type, tenant_id and client_id, and which of them it needs.
FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    FIC: (frozenset({"managed_identity_client_id", "audience"}), frozenset()),
    CLIENT_SECRET: (frozenset({"client_secret"}), frozenset({"client_secret"})),
    CLIENT_CERTIFICATE: (frozenset({"certificate_path"}), frozenset({"certificate_path"})),
    TOKEN_FILE: (frozenset({"token_file"}), frozenset()),
}
TYPES: tuple[str, ...] = tuple(FIELDS)
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
#: The token-exchange audience per cloud (Entra's documented values for a managed identity as a federated credential).
EXCHANGE_AUDIENCES: tuple[str, ...] = (
    EXCHANGE_AUDIENCE,
    "api://AzureADTokenExchangeUSGov",
    "api://AzureADTokenExchangeChina",
)
#: The source of the managed-identity token that is the assertion (the emulator serves the same protocol).
ASSERTION_SOURCE = "managed-identity"


@dataclass(frozen=True)
class CredentialSpec:
    """An app registration's credential; hashable, so it is part of a token's cache key. ``str()`` is safe to log."""

    type: str
    tenant_id: str
    client_id: str
    managed_identity_client_id: str = ""
    audience: str = EXCHANGE_AUDIENCE
    client_secret: str = field(default="", repr=False)
    certificate_path: str = ""
    token_file: str = ""

    def __str__(self) -> str:
        how = {
            FIC: f"managed identity {self.managed_identity_client_id or 'system-assigned'} as federated credential",
            CLIENT_SECRET: "client secret",
            CLIENT_CERTIFICATE: f"certificate {self.certificate_path}",
            TOKEN_FILE: f"federated token file {self.token_file or '$AZURE_FEDERATED_TOKEN_FILE'}",
        }[self.type]
        return f"{self.type} (app {self.client_id} in tenant {self.tenant_id}, {how})"

    @property
    def federated(self) -> bool:
        return self.type == FIC

    def managed_identity(self, client_id: str = "") -> str:
        """The managed identity whose token is the assertion: the policy's ``client-id`` if it names one."""
        return client_id or self.managed_identity_client_id


def parse_credential(raw: Mapping[str, Any]) -> CredentialSpec:
    """A rules file's ``credential:`` mapping; ``ValueError`` names the field that is wrong."""
    kind = raw.get("type")
    if kind not in TYPES:
        raise ValueError(f"credential type {kind!r} is not one of: {', '.join(TYPES)}")
    optional, needed = FIELDS[kind]
    allowed = {"type", "tenant_id", "client_id"} | optional
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(
            f"credential: unknown field '{unknown[0]}' for type {kind} (allowed: {', '.join(sorted(allowed))})"
        )
    for name in sorted({"tenant_id", "client_id"} | needed):
        if not str(raw.get(name) or "").strip():
            raise ValueError(f"credential: {kind} needs '{name}'")
    audience = str(raw.get("audience") or EXCHANGE_AUDIENCE)
    if audience not in EXCHANGE_AUDIENCES:
        raise ValueError(
            f"credential: audience '{audience}' is not a token-exchange audience ({', '.join(EXCHANGE_AUDIENCES)})"
        )
    return CredentialSpec(
        type=kind,
        tenant_id=str(raw["tenant_id"]).strip(),
        client_id=str(raw["client_id"]).strip(),
        managed_identity_client_id=str(raw.get("managed_identity_client_id") or "").strip(),
        audience=audience,
        client_secret=str(raw.get("client_secret") or ""),
        certificate_path=str(raw.get("certificate_path") or ""),
        token_file=str(raw.get("token_file") or ""),
    )


class ManagedIdentityAssertionCredential:
    """azure-identity's async ``ClientAssertionCredential`` for the app, its assertion the managed identity's
    exchange token, awaited from ``assertion`` (the token provider) before each call."""

    def __init__(self, spec: CredentialSpec, assertion: Callable[[], Awaitable[str]], **kwargs: Any) -> None:
        from azure.identity.aio import ClientAssertionCredential

        self._assertion = assertion
        self._current = ""
        self._inner = ClientAssertionCredential(spec.tenant_id, spec.client_id, lambda: self._current, **kwargs)

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self._current = await self._assertion()
        return await self._inner.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        await self._inner.close()


def app_credential(spec: CredentialSpec, assertion: Callable[[], Awaitable[str]] | None, **kwargs: Any) -> Any:
    """The azure-identity async credential for ``spec`` (``assertion`` is needed for ``managed-identity-fic``)."""
    from azure.identity import aio

    if spec.type == CLIENT_SECRET:
        return aio.ClientSecretCredential(spec.tenant_id, spec.client_id, spec.client_secret, **kwargs)
    if spec.type == CLIENT_CERTIFICATE:
        return aio.CertificateCredential(spec.tenant_id, spec.client_id, spec.certificate_path, **kwargs)
    if spec.type == TOKEN_FILE:
        if spec.token_file:
            kwargs["token_file_path"] = spec.token_file
        return aio.WorkloadIdentityCredential(tenant_id=spec.tenant_id, client_id=spec.client_id, **kwargs)
    if assertion is None:
        raise ValueError("a managed-identity-fic credential needs the managed identity's token")
    return ManagedIdentityAssertionCredential(spec, assertion, **kwargs)
