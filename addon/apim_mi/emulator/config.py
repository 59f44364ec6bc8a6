"""Emulator configuration: tenant, identities, accepted resources, token timing.

The defaults are fixed, documented values so that rules files, READMEs and tests can name them:

* tenant ``5ca1ab1e-0000-4000-8000-000000000001``
* system-assigned identity: client id ``5ca1ab1e-0000-4000-8000-00000000000a``,
  object id ``5ca1ab1e-0000-4000-8000-00000000000b``
* user-assigned identities ``11111111-1111-1111-1111-111111111111`` (the client id used in the SPEC's example
  ``rules.yaml``) and ``22222222-2222-2222-2222-222222222222``
* ``resources=None``: any resource is accepted (a local emulator should not get in the way of an unknown API's
  app-ID URI). Pass a list (e.g. :data:`WELL_KNOWN_RESOURCES` plus your own) to get Entra's AADSTS500011 error for
  anything else, exactly as a real tenant answers a typo in ``resource``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_TENANT_ID = "5ca1ab1e-0000-4000-8000-000000000001"
DEFAULT_PORT = 8479
DEFAULT_LIFETIME = 3600
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
DEFAULT_RESOURCE_GROUP = "apim-mi"

#: Resources of well-known Azure services plus the demo app of the SPEC's example rules (app-ID URI and bare GUID).
WELL_KNOWN_RESOURCES: tuple[str, ...] = (
    "https://management.azure.com/",
    "https://management.azure.com",
    "https://management.core.windows.net/",
    "https://vault.azure.net",
    "https://storage.azure.com/",
    "https://storage.azure.com",
    "https://graph.microsoft.com",
    "https://servicebus.azure.net",
    "https://servicebus.azure.net/",
    "https://eventhubs.azure.net",
    "https://eventhubs.azure.net/",
    "https://cognitiveservices.azure.com",
    "https://database.windows.net/",
    "https://signalr.azure.com",
    "api://00000000-0000-0000-0000-00000000a11c",
    "00000000-0000-0000-0000-00000000a11c",
)

SYSTEM = "system"

#: The second tenant the emulator serves (for cross-tenant app tokens); its app tokens carry this ``tid``.
DEFAULT_OTHER_TENANT_ID = "5ca1ab1e-0000-4000-8000-000000000002"
#: The app registration the Entra token endpoint knows by default (multi-tenant, present in every emulator tenant).
DEFAULT_APP_CLIENT_ID = "5ca1ab1e-0000-4000-8000-0000000000a1"
#: Audiences of a managed-identity (or workload-identity) token used as a federated credential, per cloud.
EXCHANGE_AUDIENCES: tuple[str, ...] = (
    "api://AzureADTokenExchange",
    "api://AzureADTokenExchangeUSGov",
    "api://AzureADTokenExchangeChina",
)
#: Issuer and subject of the Kubernetes service-account token the emulator writes for workload identity.
WORKLOAD_ISSUER = "https://oidc.apim-mi.localhost/"
WORKLOAD_SUBJECT = "system:serviceaccount:default:apim-mi"

# A fixed namespace so that an identity given only by client id gets the same object id on every run.
_OBJECT_ID_NAMESPACE = uuid.UUID("5ca1ab1e-0000-4000-8000-0000000000ff")


@dataclass(frozen=True)
class Identity:
    """A managed identity the emulator can issue tokens for (system- or user-assigned)."""

    client_id: str
    object_id: str
    name: str
    system_assigned: bool = False
    resource_id: str = ""

    def __post_init__(self) -> None:
        if not self.resource_id:
            object.__setattr__(self, "resource_id", _default_resource_id(self.name, self.system_assigned))

    @property
    def key(self) -> str:
        """Counter key: ``"system"`` for the system-assigned identity, else the client id."""
        return SYSTEM if self.system_assigned else self.client_id

    def matches(self, selector: str, value: str) -> bool:
        """Whether this identity answers to ``selector=value`` (GUIDs and ARM ids compare case-insensitively)."""
        wanted = value.strip().lower()
        if selector == "client_id":
            return self.client_id.lower() == wanted
        if selector in ("object_id", "principal_id"):
            return self.object_id.lower() == wanted
        return self.resource_id.lower() == wanted

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "object_id": self.object_id,
            "name": self.name,
            "system_assigned": self.system_assigned,
            "resource_id": self.resource_id,
        }


def _default_resource_id(name: str, system_assigned: bool) -> str:
    base = f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourcegroups/{DEFAULT_RESOURCE_GROUP}/providers"
    if system_assigned:
        return f"{base}/Microsoft.ApiManagement/service/{name}"
    return f"{base}/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"


def default_system_identity() -> Identity:
    return Identity(
        client_id="5ca1ab1e-0000-4000-8000-00000000000a",
        object_id="5ca1ab1e-0000-4000-8000-00000000000b",
        name="apim-mi-local",
        system_assigned=True,
    )


def default_user_identities() -> list[Identity]:
    return [
        Identity("11111111-1111-1111-1111-111111111111", "11111111-0000-4000-8000-0000000000b1", "apim-mi-user-1"),
        Identity("22222222-2222-2222-2222-222222222222", "22222222-0000-4000-8000-0000000000b2", "apim-mi-user-2"),
    ]


def parse_identity(spec: str) -> Identity:
    """Parse ``CLIENT_ID[:OBJECT_ID[:NAME]]``; a missing object id is derived from the client id (stable)."""
    parts = spec.split(":", 2)
    client_id = parts[0].strip()
    if not client_id:
        raise ValueError(f"identity {spec!r}: the client id is empty (expected CLIENT_ID[:OBJECT_ID[:NAME]])")
    object_id = parts[1].strip() if len(parts) > 1 and parts[1].strip() else derived_object_id(client_id)
    name = parts[2].strip() if len(parts) > 2 and parts[2].strip() else f"uami-{client_id[:8]}"
    return Identity(client_id, object_id, name)


def derived_object_id(client_id: str) -> str:
    return str(uuid.uuid5(_OBJECT_ID_NAMESPACE, client_id.lower()))


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential of an app registration: tokens from ``issuer`` about ``subject``."""

    issuer: str
    subject: str
    audiences: tuple[str, ...] = ("api://AzureADTokenExchange",)

    def to_json(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "subject": self.subject, "audiences": list(self.audiences)}


@dataclass(frozen=True)
class AppRegistration:
    """An app the Entra token endpoint issues client-credentials tokens to, in every tenant the emulator serves.

    It authenticates with one of ``secrets``, a certificate assertion signed by the key of one of ``certificates``
    (PEM), or a federated assertion matching one of ``federated``. ``federated=None`` trusts every managed identity
    of the emulator (subject = its object id, issuer = the v2.0 issuer of the emulator's tenant) and the emulator's
    workload-identity service account: the zero-configuration setup of tests and demos.
    """

    client_id: str = DEFAULT_APP_CLIENT_ID
    name: str = "apim-mi-app"
    secrets: tuple[str, ...] = field(default=(), repr=False)
    certificates: tuple[bytes, ...] = field(default=(), repr=False)
    federated: tuple[FederatedCredential, ...] | None = None

    @property
    def object_id(self) -> str:
        """The app's service principal (the same in every tenant here; stable per client id)."""
        return derived_object_id(self.client_id)

    @property
    def resource_id(self) -> str:
        return ""

    def to_json(self) -> dict[str, Any]:
        federated = None if self.federated is None else [f.to_json() for f in self.federated]
        return {
            "client_id": self.client_id,
            "object_id": self.object_id,
            "name": self.name,
            "secrets": len(self.secrets),
            "certificates": len(self.certificates),
            "federated": federated,
        }


#: Fields that can change while the emulator runs (``Emulator.configure`` and ``POST /_emulator/config``).
TUNABLE_FIELDS = ("token_lifetime", "latency_ms", "resources", "refresh_in")
CONFIG_ALIASES = {"lifetime": "token_lifetime", "latency": "latency_ms"}


def _check_tunable(name: str, value: Any) -> None:
    if name == "resources":
        if value is not None and (not isinstance(value, list) or not all(isinstance(r, str) for r in value)):
            raise ValueError("resources must be a list of strings or null")
        return
    if value is None and name == "refresh_in":
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


@dataclass
class EmulatorConfig:
    """Everything an :class:`~apim_mi.emulator.Emulator` serves. Tokens, lifetimes and latency are in seconds/ms.

    ``resources=None`` (or empty) accepts any resource; a list restricts to exactly those strings (no trailing-slash
    or case normalisation: ``X`` and ``X/`` are different resources, as in Entra). ``identity_header=None`` makes the
    emulator pick a random App Service secret. ``key_path`` keeps the RSA signing key across restarts (created on
    first use). ``ca_dir`` keeps the local CA of the HTTPS (Entra) listener the same way. ``arc_key_dir`` is where
    the Azure Arc challenge writes its key files (real clients read only ``/var/opt/azcmagent/tokens``; None = a
    private temporary directory).
    """

    tenant_id: str = DEFAULT_TENANT_ID
    system_identity: Identity | None = field(default_factory=default_system_identity)
    user_identities: list[Identity] = field(default_factory=default_user_identities)
    resources: list[str] | None = None
    token_lifetime: int = DEFAULT_LIFETIME
    latency_ms: int = 0
    refresh_in: int | None = None
    identity_header: str | None = None
    key_path: str | None = None
    ca_dir: str | None = None
    arc_key_dir: str | None = None
    issuer: str | None = None
    log_limit: int = 10_000
    other_tenants: list[str] = field(default_factory=lambda: [DEFAULT_OTHER_TENANT_ID])
    apps: list[AppRegistration] = field(default_factory=lambda: [AppRegistration()])

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject settings that would produce tokens azure-identity cannot use."""
        if self.token_lifetime < 1:
            raise ValueError(f"token_lifetime must be >= 1 second, got {self.token_lifetime}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.refresh_in is not None and self.refresh_in < 1:
            raise ValueError(f"refresh_in must be >= 1 second, got {self.refresh_in}")
        if self.log_limit < 1:
            raise ValueError(f"log_limit must be >= 1, got {self.log_limit}")

    @property
    def token_issuer(self) -> str:
        """The ``iss`` of v1 managed-identity tokens: ``https://sts.windows.net/<tenant>/``."""
        return self.issuer or f"https://sts.windows.net/{self.tenant_id}/"

    @property
    def identities(self) -> list[Identity]:
        head = [self.system_identity] if self.system_identity else []
        return head + list(self.user_identities)

    @property
    def tenants(self) -> list[str]:
        """Every tenant the Entra endpoints answer for (the first is the managed identities' home tenant)."""
        return [self.tenant_id, *(t for t in self.other_tenants if t.lower() != self.tenant_id.lower())]

    def knows_tenant(self, tenant: str) -> str | None:
        """The tenant id as configured, for a path segment naming it (case-insensitive), else None."""
        return next((t for t in self.tenants if t.lower() == tenant.lower()), None)

    def app(self, client_id: str) -> AppRegistration | None:
        wanted = client_id.strip().lower()
        return next((a for a in self.apps if a.client_id.lower() == wanted), None)

    def accepts_resource(self, resource: str) -> bool:
        return not self.resources or resource in self.resources

    def updated(self, changes: dict[str, Any]) -> EmulatorConfig:
        """A copy with the runtime-tunable fields changed (``lifetime``/``latency`` are aliases, as on the CLI)."""
        clean = {CONFIG_ALIASES.get(name, name): value for name, value in changes.items()}
        unknown = set(clean) - set(TUNABLE_FIELDS)
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; allowed: {sorted(TUNABLE_FIELDS)}")
        for name, value in clean.items():
            _check_tunable(name, value)
        return replace(self, **clean)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "issuer": self.token_issuer,
            "identities": [i.to_json() for i in self.identities],
            "resources": self.resources,
            "token_lifetime": self.token_lifetime,
            "latency_ms": self.latency_ms,
            "refresh_in": self.refresh_in,
            "other_tenants": self.tenants[1:],
            "apps": [a.to_json() for a in self.apps],
        }
