"""An APIOps extraction as read from disk: plain dataclasses, no policies compiled, no values resolved."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import Location


@dataclass(frozen=True)
class VersionSet:
    """``version sets/<name>/versionSetInformation.json``: how a version is told apart (Segment, Query, Header)."""

    name: str
    display_name: str
    scheme: str = "Segment"
    query_name: str = ""
    header_name: str = ""


@dataclass(frozen=True)
class OperationDef:
    """One operation: ``name`` is the operation's resource name (the OpenAPI ``operationId``)."""

    name: str
    method: str
    url_template: str
    display_name: str
    location: Location


@dataclass
class ApiDef:
    """``apis/<name>/apiInformation.json`` and what sits next to it."""

    name: str
    display_name: str
    path: str
    service_url: str
    info: Location
    protocols: tuple[str, ...] = ("https",)
    subscription_required: bool = True
    key_header: str = "Ocp-Apim-Subscription-Key"
    key_query: str = "subscription-key"
    version: str = ""
    version_set: VersionSet | None = None
    revision: str = "1"
    is_current: bool = True
    api_type: str = "http"
    spec: str = ""  # "openapi", "wsdl", "wadl", "graphql" or "" (none)
    operations: list[OperationDef] = field(default_factory=list)
    policy: Path | None = None
    operation_policies: dict[str, Path] = field(default_factory=dict)
    workspace: str = ""

    @property
    def root_name(self) -> str:
        """``orders;rev=2`` → ``orders``: the API a revision belongs to."""
        return self.name.split(";rev=", 1)[0]


@dataclass
class ProductDef:
    name: str
    display_name: str
    info: Location
    state: str = "published"
    subscription_required: bool = True
    approval_required: bool = False
    subscriptions_limit: int | None = None
    apis: set[str] = field(default_factory=set)
    policy: Path | None = None
    workspace: str = ""


@dataclass
class NamedValueDef:
    """``named values/<name>/namedValueInformation.json``. Policies use the *display name*."""

    name: str
    display_name: str
    info: Location
    value: str | None = None
    secret: bool = False
    key_vault: str = ""  # the secret identifier URL
    identity_client_id: str = ""


@dataclass
class BackendDef:
    """``backends/<name>/backendInformation.json``: its ARM ``properties`` as they are (``apim_mi.backends`` parses
    them once named values are known)."""

    name: str
    info: Location
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.properties.get("url") or "")

    @property
    def members(self) -> list[str]:
        """Pool member ids (the last segment of each ARM id)."""
        pool = self.properties.get("pool")
        services = pool.get("services") if isinstance(pool, dict) else None
        return [str(s["id"]).rstrip("/").rsplit("/", 1)[-1] for s in services or [] if isinstance(s, dict) and
                s.get("id")]  # fmt: skip


@dataclass
class SubscriptionDef:
    """``subscriptions/<name>/subscriptionInformation.json``; keys are never extracted, they come from overrides.

    ``scope`` is ``("all", "")``, ``("api", name)`` or ``("product", name)``."""

    name: str
    display_name: str
    scope: tuple[str, str]
    info: Location
    state: str = "active"
    allow_tracing: bool = False
    keys: list[str] = field(default_factory=list)


@dataclass
class Extraction:
    """A whole ``apimartifacts/`` folder. ``warnings`` are located strings for ``apim-mi validate``."""

    root: Path
    global_policy: Path | None = None
    workspace_policies: dict[str, Path] = field(default_factory=dict)
    apis: dict[str, ApiDef] = field(default_factory=dict)
    products: dict[str, ProductDef] = field(default_factory=dict)
    named_values: dict[str, NamedValueDef] = field(default_factory=dict)
    backends: dict[str, BackendDef] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionDef] = field(default_factory=dict)
    version_sets: dict[str, VersionSet] = field(default_factory=dict)
    fragments: dict[str, Path] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: the ARM id of the APIM service, from the first resource id that names it (``context.Deployment.ServiceId``)
    service_id: str = ""

    @property
    def service_name(self) -> str:
        return self.service_id.rsplit("/", 1)[-1]
