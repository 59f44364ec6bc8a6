"""The emulator's aiohttp server: token endpoints (IMDS, App Service, Azure Arc, Service Fabric, Cloud Shell, Entra),
JWKS, OIDC discovery, admin API."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from aiohttp import web

from . import entra, protocols
from .config import EXCHANGE_AUDIENCES, SYSTEM, EmulatorConfig, Identity
from .faults import DEFAULT_WRONG_AUDIENCE, REPLACING_KINDS, Fault, FaultKind, FaultQueue
from .serving import LoopbackServer, require_loopback
from .serving import is_loopback_host as is_loopback_host  # re-exported: the package exports it from here
from .tokens import MintedToken, Principal, SigningKey, TokenMinter, v1_issuer

log = logging.getLogger("apim_mi.emulator")

Protocol = Literal["imds", "appservice", "arc", "servicefabric", "cloudshell", "entra"]

IMDS_PATH = "/metadata/identity/oauth2/token"
APP_SERVICE_PATH = "/msi/token"
ADMIN_PREFIX = "/_emulator"
IMDS_API_VERSIONS = frozenset({"2018-02-01", "2019-03-11", "2019-06-01", "2019-08-01", "2021-02-01", "2021-10-01"})
APP_SERVICE_API_VERSION = "2019-08-01"

#: Every variable that steers azure-identity's managed-identity source selection. Delete them all (never set them
#: to "") before applying :meth:`Emulator.env`, or a credential may pick another source (or the real IMDS).
MANAGED_IDENTITY_ENV_VARS: tuple[str, ...] = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_TOKEN_CREDENTIALS",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)

_IMDS_SELECTORS = ("client_id", "object_id", "msi_res_id", "resource_id")
_APP_SERVICE_SELECTORS = ("client_id", "object_id", "principal_id", "mi_res_id", "msi_res_id", "resource_id")
#: Per protocol: the api-versions accepted (None = no api-version parameter) and the identity selectors.
_QUERY_RULES: dict[str, tuple[frozenset[str] | None, tuple[str, ...]]] = {
    "imds": (IMDS_API_VERSIONS, _IMDS_SELECTORS),
    "appservice": (frozenset({APP_SERVICE_API_VERSION}), _APP_SERVICE_SELECTORS),
    "arc": (protocols.ARC_API_VERSIONS, protocols.ARC_SELECTORS),
    "servicefabric": (frozenset({protocols.SERVICE_FABRIC_API_VERSION}), ()),
    "cloudshell": (None, ()),
}
_UNLOGGED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_KNOWN_TENANT_ALIASES = frozenset({"common", "organizations"})

# IMDS error codes by status (the IMDS spec's enum) for injected status faults.
_IMDS_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized_client", "Unauthorized client"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "IMDS is updating; try again later"),
    405: ("method_not_allowed", "Method not allowed"),
    410: ("service_unavailable", "IMDS is updating; try again later"),
    429: ("too_many_requests", "Too many requests; the token endpoint is throttling"),
    500: ("server_error", "An unexpected error occurred while fetching the token"),
    503: ("service_unavailable", "The token service is temporarily unavailable"),
}


@dataclass
class RequestRecord:
    """One request to a token endpoint, as the emulator saw it (never contains an access token)."""

    time: float
    protocol: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    identity: str | None = None
    resource: str | None = None
    status: int | None = None
    fault: str | None = None


@dataclass
class EmulatorStats:
    """A snapshot of the emulator's counters; ``stats["key"]`` reads the JSON form the admin API serves.

    ``token_requests`` maps ``"<identity>|<resource>"`` (identity = ``"system"`` or the client id) to the number of
    requests that passed the protocol's header check; ``total_requests`` counts every token-endpoint request.
    """

    total_requests: int
    token_requests: dict[str, int]
    issued_tokens: list[str]
    requests: list[RequestRecord]
    faults_pending: list[dict[str, Any]]
    jwks_requests: int = 0

    def count(self, resource: str, client_id: str | None = None) -> int:
        """Token requests for ``resource`` by ``client_id`` (None or "system" = the system-assigned identity)."""
        wanted = (client_id or SYSTEM).lower()
        total = 0
        for key, n in self.token_requests.items():
            identity, _, res = key.partition("|")
            if res == resource and identity.lower() == wanted:
                total += n
        return total

    @property
    def issued_count(self) -> int:
        return len(self.issued_tokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "total_requests": self.total_requests,
            "token_requests": dict(self.token_requests),
            "issued_count": self.issued_count,
            "issued_tokens": list(self.issued_tokens),
            "requests": [asdict(r) for r in self.requests],
            "faults_pending": list(self.faults_pending),
            "jwks_requests": self.jwks_requests,
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]


def token_key(identity: str, resource: str) -> str:
    """The counter key for ``(identity, resource)``: ``"system|https://vault.azure.net"``."""
    return f"{identity}|{resource}"


@dataclass
class _State:
    """Counters and logs; reset by :meth:`Emulator.reset`."""

    limit: int
    total_requests: int = 0
    jwks_requests: int = 0
    token_requests: Counter[str] = field(default_factory=Counter)
    issued_tokens: deque[str] = field(init=False)
    requests: deque[RequestRecord] = field(init=False)

    def __post_init__(self) -> None:
        self.issued_tokens = deque(maxlen=self.limit)
        self.requests = deque(maxlen=self.limit)


@dataclass(frozen=True)
class _TokenRequest:
    protocol: Protocol
    resource: str
    selector: tuple[str, str] | None
    identity: Identity | None

    @property
    def key(self) -> str:
        if self.identity is not None:
            return self.identity.key
        return self.selector[1] if self.selector else SYSTEM


class _Reject(Exception):
    """A protocol-level error reply (status, error code, description)."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description


class Emulator(LoopbackServer):
    """A local managed-identity endpoint speaking IMDS, App Service 2019-08-01, Azure Arc, Service Fabric, Cloud Shell
    and Entra client credentials to azure-identity and MSAL.

    One instance owns one RSA signing key, one App Service secret, counters, a request log and a fault queue.
    All methods must be called from the loop that runs the server (use :class:`EmulatorThread` from other threads).
    """

    _what = "emulator"

    def __init__(self, config: EmulatorConfig | None = None, *, key: SigningKey | None = None) -> None:
        super().__init__()
        self._config = config or EmulatorConfig()
        self._initial_config = self._config
        if key is None:
            key = SigningKey.load_or_create(self._config.key_path) if self._config.key_path else SigningKey.generate()
        self._key = key
        self._minter = TokenMinter(key, self._config.tenant_id, self._config.token_issuer)
        self._identity_header = self._config.identity_header or secrets.token_urlsafe(24)
        self._faults = FaultQueue()
        self._state = _State(self._config.log_limit)
        self._closing = asyncio.Event()
        self._ca: entra.LocalCA | None = None
        self._authority_url: str | None = None
        self._arc_keys: protocols.ArcKeys | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False, https_port: int | None = None
    ) -> str:
        """Listen on ``host:port`` (0 = ephemeral) and return the base URL. Non-loopback needs ``allow_remote``.

        ``https_port`` (0 = ephemeral) adds the HTTPS listener of the Entra token endpoint (:attr:`authority_url`),
        with a certificate from the local CA (:attr:`ca_pem`; kept in ``config.ca_dir`` when set)."""
        url = await self._listen(host, port, allow_remote=allow_remote)
        if https_port is not None:
            try:
                if self._ca is None:
                    self._ca = entra.LocalCA.load_or_create(self._config.ca_dir)
                self._authority_url = await self._add_site(host, https_port, self._ca.server_context)
            except BaseException:
                await self.stop()
                raise
        log.info("managed-identity emulator listening on %s (tenant %s)", url, self.tenant_id)
        return url

    def _starting(self) -> None:
        # A fresh event per run: the last stop set the old one, and delayed replies of this run must wait again.
        self._closing = asyncio.Event()

    async def stop(self) -> None:
        """Stop serving; pending delayed replies (latency, timeout faults) are dropped at once."""
        self._closing.set()
        self._authority_url = None
        if self._arc_keys is not None:
            self._arc_keys.close()
            self._arc_keys = None
        await super().stop()

    # -- accessors (url, port and running come from LoopbackServer) ------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    @property
    def tenant_id(self) -> str:
        return self._config.tenant_id

    @property
    def identity_header(self) -> str:
        """The App Service ``IDENTITY_HEADER`` secret clients must send as ``X-IDENTITY-HEADER``."""
        return self._identity_header

    @property
    def issuer(self) -> str:
        return self._config.token_issuer

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/{self.tenant_id}/discovery/v2.0/keys"

    @property
    def openid_configuration_url(self) -> str:
        return f"{self.url}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def signing_key(self) -> SigningKey:
        return self._key

    @property
    def has_authority(self) -> bool:
        return self._authority_url is not None

    @property
    def authority_url(self) -> str:
        """The Entra authority (``AZURE_AUTHORITY_HOST``): the HTTPS listener started with ``https_port``."""
        if self._authority_url is None:
            raise RuntimeError("the emulator's Entra endpoint is not running (start it with https_port=…)")
        return self._authority_url

    @property
    def ca_pem(self) -> bytes:
        """The local CA that signs the HTTPS listener's certificate (trust it: ``connection_verify=<file>``)."""
        if self._ca is None:
            raise RuntimeError("the emulator's Entra endpoint is not running (start it with https_port=…)")
        return self._ca.pem

    def token_endpoint(self, tenant: str | None = None) -> str:
        return f"{self.authority_url}/{tenant or self.tenant_id}/oauth2/v2.0/token"

    def workload_identity_env(self, directory: str | os.PathLike[str]) -> dict[str, str]:
        """Write the CA files and a service-account token (``federated-token``) into ``directory`` and return the
        environment of workload identity on AKS, pointing at this emulator's Entra endpoint, with the CA bundle
        trusted by requests (sync azure-identity) and OpenSSL (aiohttp). With it, ``ManagedIdentityCredential`` and
        ``DefaultAzureCredential`` use workload identity, as on AKS; ``env("imds")`` is the managed-identity one."""
        assert self._ca is not None
        _ca_file, bundle = self._ca.write(directory)
        token_file = Path(directory) / "federated-token"
        self.write_workload_token(token_file)
        return {
            "AZURE_AUTHORITY_HOST": self.authority_url,
            "AZURE_TENANT_ID": self.tenant_id,
            "AZURE_CLIENT_ID": self._config.apps[0].client_id if self._config.apps else "",
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
            "SSL_CERT_FILE": str(bundle),
            "REQUESTS_CA_BUNDLE": str(bundle),
        }

    def write_workload_token(self, path: str | os.PathLike[str]) -> None:
        """(Re)write the workload-identity service-account token (a fresh one, valid 24 h), as AKS rotates it."""
        Path(path).write_text(entra.workload_identity_token(self._minter), "ascii")

    async def rotate_workload_token(self, path: str | os.PathLike[str], every: float) -> None:
        """Rewrite the token file every ``every`` seconds until cancelled (azure-identity re-reads it)."""
        while True:
            await asyncio.sleep(every)
            self.write_workload_token(path)

    def env(self, protocol: Protocol = "imds") -> dict[str, str]:
        """The environment azure-identity needs to use this emulator (after deleting MANAGED_IDENTITY_ENV_VARS).
        ``servicefabric`` needs the HTTPS listener (``https_port``); ``arc`` clients read the key file from
        ``/var/opt/azcmagent/tokens`` only (``EmulatorConfig.arc_key_dir``)."""
        if protocol == "imds":
            return {"AZURE_POD_IDENTITY_AUTHORITY_HOST": self.url}
        if protocol == "appservice":
            return {"IDENTITY_ENDPOINT": self.url + APP_SERVICE_PATH, "IDENTITY_HEADER": self._identity_header}
        if protocol == "arc":
            return {"IDENTITY_ENDPOINT": self.url + protocols.ARC_PATH, "IMDS_ENDPOINT": self.url}
        if protocol == "servicefabric":
            assert self._ca is not None, "Service Fabric needs the HTTPS listener (start with https_port=…)"
            return {
                "IDENTITY_ENDPOINT": self.authority_url + protocols.SERVICE_FABRIC_PATH,
                "IDENTITY_HEADER": self._identity_header,
                "IDENTITY_SERVER_THUMBPRINT": self._ca.server_thumbprint,
            }
        if protocol == "cloudshell":
            return {"MSI_ENDPOINT": self.url + protocols.CLOUD_SHELL_PATH}
        raise ValueError(
            f"unknown protocol {protocol!r}; expected imds, appservice, arc, servicefabric or cloudshell"
        )

    # -- test / admin controls -------------------------------------------------------------------------------------

    def stats(self) -> EmulatorStats:
        state = self._state
        return EmulatorStats(
            total_requests=state.total_requests,
            token_requests=dict(state.token_requests),
            issued_tokens=list(state.issued_tokens),
            requests=list(state.requests),
            faults_pending=self._faults.pending(),
            jwks_requests=state.jwks_requests,
        )

    def token_requests(self, resource: str, client_id: str | None = None) -> int:
        return self.stats().count(resource, client_id)

    def add_faults(self, *faults: Fault | str | int | Mapping[str, Any]) -> list[Fault]:
        parsed = [Fault.parse(f) for f in faults]
        self._faults.add(*parsed)
        return parsed

    def clear_faults(self) -> None:
        self._faults.clear()

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change ``token_lifetime``, ``latency_ms``, ``resources`` or ``refresh_in`` while running."""
        self._config = self._config.updated(changes)
        return self._config

    def reset(self) -> None:
        """Back to the state after start: counters, logs, issued tokens and faults cleared, and runtime
        :meth:`configure` changes undone (key, secret and identities stay), so one shared emulator can serve many
        tests without one test's lifetime or resource list leaking into the next."""
        self._config = self._initial_config
        self._state = _State(self._config.log_limit)
        self._faults.clear()

    # -- app -------------------------------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", IMDS_PATH, self._imds)
        app.router.add_route("*", APP_SERVICE_PATH, self._app_service)
        app.router.add_route("*", protocols.ARC_PATH, self._arc)
        app.router.add_route("*", protocols.SERVICE_FABRIC_PATH, self._service_fabric)
        app.router.add_route("*", protocols.CLOUD_SHELL_PATH, self._cloud_shell)
        app.router.add_get(f"{ADMIN_PREFIX}/health", self._admin_health)
        app.router.add_get(f"{ADMIN_PREFIX}/stats", self._admin_stats)
        app.router.add_get(f"{ADMIN_PREFIX}/config", self._admin_get_config)
        app.router.add_post(f"{ADMIN_PREFIX}/config", self._admin_config)
        app.router.add_post(f"{ADMIN_PREFIX}/faults", self._admin_faults)
        app.router.add_delete(f"{ADMIN_PREFIX}/faults", self._admin_clear_faults)
        app.router.add_post(f"{ADMIN_PREFIX}/reset", self._admin_reset)
        app.router.add_post(entra.TOKEN_PATH, self._entra_token)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._jwks)
        app.router.add_get("/{tenant}/discovery/keys", self._jwks)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid_v2)
        app.router.add_get("/{tenant}/.well-known/openid-configuration", self._openid_v1)
        return app

    # -- token endpoints -------------------------------------------------------------------------------------------

    async def _imds(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request, "imds")
        if request.method != "GET":
            return self._finish(record, _imds_error(405, "method_not_allowed", "Method not allowed"))
        if request.headers.get("Metadata", "").lower() != "true":
            return self._finish(
                record, _imds_error(400, "invalid_request", "Required metadata header not specified")
            )
        if "X-Forwarded-For" in request.headers:
            return self._finish(
                record, _imds_error(400, "invalid_request", "Request contains X-Forwarded-For header")
            )
        return await self._serve_token(request, record, "imds")

    async def _app_service(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request, "appservice")
        sent = request.headers.get("X-IDENTITY-HEADER", "")
        if not hmac.compare_digest(sent.encode(), self._identity_header.encode()):
            return self._finish(record, web.json_response({"statusCode": 401, "message": "Unauthorized"}, status=401))
        if request.method != "GET":
            return self._finish(record, _app_service_error(405, "Method not allowed"))
        return await self._serve_token(request, record, "appservice")

    async def _arc(self, request: web.Request) -> web.StreamResponse:
        """Azure Arc: the first request gets a key-file challenge, the second proves it read the file."""
        record = self._record(request, "arc")
        rejected = _metadata_request_error(request, "GET")
        if rejected is not None:
            return self._finish(record, rejected)
        if self._arc_keys is None:
            self._arc_keys = protocols.ArcKeys(self._config.arc_key_dir)
        authorization = request.headers.get("Authorization", "")
        if not authorization:
            return self._finish(record, protocols.arc_challenge(self._arc_keys.challenge()))
        if not self._arc_keys.accepts(authorization):
            return self._finish(record, _imds_error(401, "unauthorized_client", "Invalid key in Authorization"))
        return await self._serve_token(request, record, "arc")

    async def _service_fabric(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request, "servicefabric")
        if not hmac.compare_digest(request.headers.get("Secret", "").encode(), self._identity_header.encode()):
            error = protocols.service_fabric_error(401, "SecretHeaderNotFound", "Secret is not found in the request")
            return self._finish(record, error)
        if request.method != "GET":
            return self._finish(record, protocols.service_fabric_error(405, "MethodNotAllowed", "Use GET"))
        return await self._serve_token(request, record, "servicefabric")

    async def _cloud_shell(self, request: web.Request) -> web.StreamResponse:
        """Cloud Shell: a form POST; the resource is in the body, not the query."""
        record = self._record(request, "cloudshell")
        rejected = _metadata_request_error(request, "POST")
        if rejected is not None:
            return self._finish(record, rejected)
        record.query = {k: str(v) for k, v in (await request.post()).items()}
        return await self._serve_token(request, record, "cloudshell")

    async def _serve_token(self, request: web.Request, record: RequestRecord, protocol: Protocol) -> web.StreamResponse:
        error = _ERROR_REPLIES.get(protocol, _imds_error)
        try:
            token_request = self._parse_token_request(record.query, protocol)
        except _Reject as reject:
            return self._finish(record, error(reject.status, reject.code, reject.description))
        record.identity, record.resource = token_request.key, token_request.resource
        self._state.token_requests[token_key(token_request.key, token_request.resource)] += 1
        fault = self._faults.take(token_request.resource, token_request.key)
        record.fault = fault.kind.value if fault else None
        if self._config.latency_ms and await self._sleep(self._config.latency_ms):
            return self._finish(record, _drop(request))
        if fault is not None and fault.kind in REPLACING_KINDS:
            return self._finish(record, await self._apply_fault(request, fault, protocol))
        if fault is not None and fault.kind is FaultKind.SLOW and await self._sleep(fault.delay_ms):
            return self._finish(record, _drop(request))
        try:
            identity = self._check_token_request(token_request)
        except _Reject as reject:
            return self._finish(record, error(reject.status, reject.code, reject.description))
        minted = self._mint(identity, token_request.resource, fault, v2=token_request.resource in EXCHANGE_AUDIENCES)
        self._state.issued_tokens.append(minted.access_token)
        body = _token_body(minted, token_request, identity, self._config.refresh_in)
        log.info(
            "issued token: protocol=%s identity=%s resource=%s aud=%s exp=%s",
            protocol, token_request.key, token_request.resource, minted.claims["aud"], minted.expires_on,
        )
        return self._finish(record, web.json_response(body))

    def _parse_token_request(self, query: Mapping[str, str], protocol: Protocol) -> _TokenRequest:
        api_version = query.get("api-version")
        versions, names = _QUERY_RULES[protocol]
        if protocol == "imds" and not api_version:
            raise _Reject(400, "invalid_request", 'Required query variable "api-version" is missing')
        if protocol == "imds" and api_version not in IMDS_API_VERSIONS:
            raise _Reject(400, "invalid_request", f"Invalid version: api-version {api_version!r}")
        if versions is not None and api_version not in versions:
            raise _Reject(400, "invalid_request", f"api-version must be {' or '.join(sorted(versions))}")
        resource = query.get("resource", "")
        if not resource:
            raise _Reject(400, "invalid_request", "Required audience parameter not specified")
        selectors = [(name, query[name]) for name in names if query.get(name)]
        if len(selectors) > 1:
            given = ", ".join(name for name, _ in selectors)
            raise _Reject(400, "invalid_request", f"Only one identity selector may be specified, got {given}")
        selector = selectors[0] if selectors else None
        return _TokenRequest(protocol, resource, selector, self._resolve_identity(selector))

    def _resolve_identity(self, selector: tuple[str, str] | None) -> Identity | None:
        if selector is None:
            return self._config.system_identity
        name, value = selector
        return next((i for i in self._config.identities if i.matches(name, value)), None)

    def _check_token_request(self, token_request: _TokenRequest) -> Identity:
        if token_request.identity is None:
            if token_request.protocol == "imds":
                raise _Reject(400, "invalid_request", "Identity not found")
            raise _Reject(400, "invalid_request", "Unable to load the proper Managed Identity.")
        if not self._config.accepts_resource(token_request.resource):
            raise _Reject(400, "invalid_resource", _aadsts500011(token_request.resource, self.tenant_id))
        return token_request.identity

    def _mint(self, principal: Principal, resource: str, fault: Fault | None, **options: Any) -> MintedToken:
        now = int(time.time())
        audience, expires_on = resource, now + self._config.token_lifetime
        if fault is not None and fault.kind is FaultKind.WRONG_AUDIENCE:
            audience = fault.audience or DEFAULT_WRONG_AUDIENCE
        if fault is not None and fault.kind is FaultKind.EXPIRED:
            expires_on = now - 60
        return self._minter.mint(principal, audience, now=now, expires_on=expires_on, **options)

    async def _entra_token(self, request: web.Request) -> web.StreamResponse:
        """Entra's v2 token endpoint, client credentials only (see :mod:`apim_mi.emulator.entra`)."""
        record = self._record(request, "entra")
        form = {k: str(v) for k, v in (await request.post()).items()}
        record.query = {k: v for k, v in form.items() if k not in entra.SECRET_FIELDS}
        config = self._config
        try:
            tenant = config.knows_tenant(request.match_info["tenant"])
            if tenant is None:
                raise entra.EntraError(400, "invalid_request", _aadsts90002(request.match_info["tenant"]))
            grant = entra.parse_grant(form)
            app = config.app(grant.client_id)
            if app is None:
                raise entra.unknown_app(grant.client_id, tenant)
            if not config.accepts_resource(grant.resource):
                raise entra.EntraError(400, "invalid_resource", _aadsts500011(grant.resource, tenant))
            token_url = f"{request.scheme}://{request.host}{request.path}"
            appidacr = entra.authenticate(form, app, config, self._key, token_url)
        except entra.EntraError as exc:
            body = entra.error_body(exc.code, exc.description)
            return self._finish(record, web.json_response(body, status=exc.status))
        record.identity, record.resource = app.client_id, grant.resource
        self._state.token_requests[token_key(app.client_id, grant.resource)] += 1
        fault = self._faults.take(grant.resource, app.client_id)
        record.fault = fault.kind.value if fault else None
        if config.latency_ms and await self._sleep(config.latency_ms):
            return self._finish(record, _drop(request))
        if fault is not None and fault.kind in REPLACING_KINDS:
            return self._finish(record, await self._apply_fault(request, fault, "entra"))
        if fault is not None and fault.kind is FaultKind.SLOW and await self._sleep(fault.delay_ms):
            return self._finish(record, _drop(request))
        minted = self._mint(app, grant.resource, fault, tenant_id=tenant, appidacr=appidacr)
        self._state.issued_tokens.append(minted.access_token)
        log.info("issued token: protocol=entra app=%s tenant=%s aud=%s exp=%s",
                 app.client_id, tenant, minted.claims["aud"], minted.expires_on)  # fmt: skip
        return self._finish(record, web.json_response(entra.token_body(minted, config.refresh_in)))

    async def _apply_fault(self, request: web.Request, fault: Fault, protocol: Protocol) -> web.StreamResponse:
        kind = fault.kind
        if kind is FaultKind.STATUS:
            return _status_fault(fault, protocol)
        if kind is FaultKind.TIMEOUT:
            await self._sleep(fault.effective_delay_ms)
            return _drop(request)
        if kind is FaultKind.DROP:
            return _drop(request)
        if kind is FaultKind.MALFORMED:
            return web.Response(status=200, body=b'{"access_token": "eyJ0eXAiOiJKV1Qi', content_type="application/json")
        return web.Response(status=200, body=b"", content_type="application/json")

    async def _sleep(self, delay_ms: int) -> bool:
        """Wait ``delay_ms``; True when the emulator is shutting down meanwhile (the reply is then dropped)."""
        try:
            await asyncio.wait_for(self._closing.wait(), delay_ms / 1000)
        except TimeoutError:
            return False
        return True

    def _record(self, request: web.Request, protocol: str) -> RequestRecord:
        query = {k: v[0] for k, v in parse_qs(request.rel_url.raw_query_string, keep_blank_values=True).items()}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _UNLOGGED_HEADERS}
        record = RequestRecord(time.time(), protocol, request.method, request.path, query, headers)
        self._state.total_requests += 1
        self._state.requests.append(record)
        return record

    @staticmethod
    def _finish(record: RequestRecord, response: web.StreamResponse) -> web.StreamResponse:
        record.status = response.status if not isinstance(response, _Dropped) else None
        return response

    # -- JWKS and discovery ----------------------------------------------------------------------------------------

    def _check_tenant(self, request: web.Request) -> str:
        """The tenant the path names (an alias such as ``common`` means the emulator's own); 400 if unknown."""
        tenant = request.match_info["tenant"]
        if tenant.lower() in _KNOWN_TENANT_ALIASES:
            return self.tenant_id
        known = self._config.knows_tenant(tenant)
        if known is None:
            body = {"error": "invalid_tenant", "error_description": _aadsts90002(tenant)}
            raise web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")
        return known

    async def _jwks(self, request: web.Request) -> web.Response:
        self._check_tenant(request)
        self._state.jwks_requests += 1
        v2 = "/v2.0/" in request.path
        return web.json_response({"keys": [self._key.jwk(self.issuer if v2 else None)]})

    async def _openid_v2(self, request: web.Request) -> web.Response:
        return web.json_response(self._openid_document(request, self._check_tenant(request), v2=True))

    async def _openid_v1(self, request: web.Request) -> web.Response:
        return web.json_response(self._openid_document(request, self._check_tenant(request), v2=False))

    def _openid_document(self, request: web.Request, tenant: str, *, v2: bool) -> dict[str, Any]:
        """Endpoints on the listener that was asked (so MSAL, reading it from the HTTPS authority, posts there)."""
        base = f"{request.scheme}://{request.host}/{tenant}"
        oauth = f"{base}/oauth2/v2.0" if v2 else f"{base}/oauth2"
        return {
            "issuer": self.issuer if tenant == self.tenant_id else v1_issuer(tenant),
            "jwks_uri": f"{base}/discovery/v2.0/keys" if v2 else f"{base}/discovery/keys",
            "token_endpoint": f"{oauth}/token",
            "authorization_endpoint": f"{oauth}/authorize",
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "oid", "tid", "appid", "ver"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }

    # -- admin API -------------------------------------------------------------------------------------------------

    async def _admin_health(self, request: web.Request) -> web.Response:
        require_loopback(request)
        return web.json_response({"status": "ok", "url": self.url, "tenant_id": self.tenant_id})

    async def _admin_stats(self, request: web.Request) -> web.Response:
        require_loopback(request)
        return web.json_response(self.stats().to_json())

    async def _admin_get_config(self, request: web.Request) -> web.Response:
        require_loopback(request)
        return web.json_response(self._config.to_json())

    async def _admin_config(self, request: web.Request) -> web.Response:
        require_loopback(request)
        changes = await _json_body(request, dict)
        try:
            config = self.configure(**changes)
        except (TypeError, ValueError) as exc:
            return _admin_error(str(exc))
        return web.json_response(config.to_json())

    async def _admin_faults(self, request: web.Request) -> web.Response:
        require_loopback(request)
        body = await _json_body(request, (list, dict, str, int))
        specs = body if isinstance(body, list) else [body]
        try:
            faults = [Fault.parse(spec) for spec in specs]
        except (TypeError, ValueError) as exc:
            return _admin_error(str(exc))
        self.add_faults(*faults)
        return web.json_response({"faults_pending": self._faults.pending()})

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        require_loopback(request)
        self.clear_faults()
        return web.json_response({"faults_pending": []})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        require_loopback(request)
        self.reset()
        return web.json_response({"status": "reset"})


# -- replies -------------------------------------------------------------------------------------------------------


class _Dropped(web.Response):
    """Marker for a reply that is never sent because the transport was closed."""


def _drop(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    return _Dropped()


def _imds_error(status: int, code: str, description: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status, headers=headers)


def _metadata_request_error(request: web.Request, method: str) -> web.Response | None:
    """The IMDS-style rejection of a request with the wrong method or without ``Metadata: true`` (Arc, Cloud Shell)."""
    if request.method != method:
        return _imds_error(405, "method_not_allowed", "Method not allowed")
    if request.headers.get("Metadata", "").lower() != "true":
        return _imds_error(400, "invalid_request", "Required metadata header not specified")
    return None


def _app_service_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())}
    return web.json_response(body, status=status, headers=headers)


def _app_service_reject_response(status: int, code: str, description: str) -> web.Response:
    return _app_service_error(status, description)


def _service_fabric_reject_response(status: int, code: str, description: str) -> web.Response:
    sf_code = "ManagedIdentityNotFound" if "Identity" in description else "ArgumentNullOrEmpty"
    return protocols.service_fabric_error(status, sf_code if code == "invalid_request" else code, description)


_ERROR_REPLIES = {"appservice": _app_service_reject_response, "servicefabric": _service_fabric_reject_response}


def _status_fault(fault: Fault, protocol: Protocol) -> web.Response:
    headers = {"Retry-After": _format_retry_after(fault.retry_after)} if fault.retry_after is not None else None
    code, default_description = _IMDS_STATUS_ERRORS.get(
        fault.status, ("server_error" if fault.status >= 500 else "bad_request", f"Injected error {fault.status}")
    )
    description = fault.message or default_description
    if protocol == "imds":
        return _imds_error(fault.status, code, description, headers)
    if protocol == "entra":
        body = entra.error_body(entra.oauth_error(fault.status), description)
        return web.json_response(body, status=fault.status, headers=headers)
    if protocol == "servicefabric":
        return protocols.service_fabric_error(fault.status, code, description, headers)
    if protocol in ("arc", "cloudshell"):
        return _imds_error(fault.status, code, description, headers)
    return _app_service_error(fault.status, description, headers)


def _format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _token_body(
    minted: MintedToken, request: _TokenRequest, identity: Identity, refresh_in: int | None
) -> dict[str, str | int]:
    """The JSON reply, every value a string as real IMDS / App Service send them (except the optional refresh_in)."""
    now = int(time.time())
    if request.protocol == "appservice":
        body: dict[str, str | int] = {
            "access_token": minted.access_token,
            "expires_on": str(minted.expires_on),
            "resource": request.resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }
    elif request.protocol == "servicefabric":
        body = {
            "token_type": "Bearer",
            "access_token": minted.access_token,
            "expires_on": minted.expires_on,
            "resource": request.resource,
        }
    else:
        expires_in = str(minted.expires_on - now)
        body = {
            "access_token": minted.access_token,
            "expires_in": expires_in,
            "expires_on": str(minted.expires_on),
            "ext_expires_in": expires_in,
            "not_before": str(minted.not_before),
            "resource": request.resource,
            "token_type": "Bearer",
        }
        if request.selector is not None:
            body[request.selector[0]] = request.selector[1]
    if refresh_in is not None:
        # An integer on purpose: azure-identity's async cache computes ``now + refresh_in`` and a string breaks it.
        body["refresh_in"] = refresh_in
    return body


def _aadsts90002(tenant: str) -> str:
    return (
        f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud."
    )


def _aadsts500011(resource: str, tenant_id: str) -> str:
    timestamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return (
        f"AADSTS500011: The resource principal named {resource} was not found in the tenant named {tenant_id}. "
        "This can happen if the application has not been installed by the administrator of the tenant or consented "
        "to by any user in the tenant. You might have sent your authentication request to the wrong tenant. "
        f"Trace ID: {uuid.uuid4()} Correlation ID: {uuid.uuid4()} Timestamp: {timestamp}"
    )


async def _json_body(request: web.Request, expected: type | tuple[type, ...]) -> Any:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text='{"error": "the body must be JSON"}', content_type="application/json") from None
    if not isinstance(body, expected):
        raise web.HTTPBadRequest(text='{"error": "unexpected JSON type"}', content_type="application/json")
    return body


def _admin_error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)

