"""APIM backend entities (``Microsoft.ApiManagement/service/backends``) as plain, immutable data.

The rules file's ``backends:`` (and an APIOps ``backendInformation.json``) hold what APIM's backend resource holds:
a URL, credentials (headers, query parameters, an Authorization scheme/parameter), circuit-breaker rules, or a
load-balanced pool of other backends with priority and weight. ``parse_backend`` accepts the ARM shape (camelCase,
optionally wrapped in ``properties``, numbers as strings as ARM exports them) or a bare URL string, and raises
``BackendError`` with the JSON path of what is wrong; callers turn that into a located ``LoadError``.

The runtime side (which pool member serves, circuit state) lives in ``policy/statements/backends.py``; this module
imports neither the network nor mitmproxy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ApimMiError


class BackendError(ApimMiError):
    """A backend entity that does not fit APIM's resource shape; ``path`` is where (``pool.services[1].id``)."""

    def __init__(self, path: str, message: str, backend: str = "") -> None:
        super().__init__(" ".join(p for p in (f"backend '{backend}':" if backend else "", f"{path}:" if path else "",
                                              message) if p))  # fmt: skip
        self.path = path
        self.message = message
        self.backend = backend

    def keys(self) -> tuple[str | int, ...]:
        """``pool.services[1].id`` → ``("pool", "services", 1, "id")``, to locate the error in the source file."""
        return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", self.path))


@dataclass(frozen=True)
class StatusCodeRange:
    min: int
    max: int

    def __contains__(self, status: int) -> bool:
        return self.min <= status <= self.max


@dataclass(frozen=True)
class FailureCondition:
    """When a rule counts a failure: a status code in one of the ranges, or a failed exchange whose reason is
    listed (``errorReasons``; an empty list counts none), ``count`` of them within ``interval`` seconds."""

    count: int = 1
    interval: float = 60.0
    status_code_ranges: tuple[StatusCodeRange, ...] = ()
    error_reasons: tuple[str, ...] = ()
    percentage: int | None = None

    def counts_status(self, status: int) -> bool:
        return any(status in r for r in self.status_code_ranges)


@dataclass(frozen=True)
class CircuitBreakerRule:
    name: str
    failure_condition: FailureCondition
    trip_duration: float = 60.0
    accept_retry_after: bool = False


@dataclass(frozen=True)
class PoolMember:
    """A pool's ``services[]`` entry: the member backend's id (last segment of the ARM id), priority, weight."""

    id: str
    priority: int = 0
    weight: int = 1


@dataclass(frozen=True)
class Authorization:
    scheme: str
    parameter: str


@dataclass(frozen=True)
class ManagedIdentity:
    """``credentials.managedIdentity``: a managed-identity token for ``resource`` in Authorization (how the AI
    gateway labs' Bicep authenticates APIM to Azure OpenAI and Content Safety)."""

    resource: str
    client_id: str = ""


@dataclass(frozen=True)
class Credentials:
    """What APIM adds to every request it forwards to the backend."""

    header: tuple[tuple[str, tuple[str, ...]], ...] = ()
    query: tuple[tuple[str, tuple[str, ...]], ...] = ()
    authorization: Authorization | None = None
    managed_identity: ManagedIdentity | None = None

    def __bool__(self) -> bool:
        return bool(self.header or self.query or self.authorization or self.managed_identity)


@dataclass(frozen=True)
class Backend:
    """One backend entity. ``type`` is ``single`` (``url`` set) or ``pool`` (``pool`` lists members)."""

    id: str
    url: str = ""
    type: str = "single"
    description: str = ""
    protocol: str = "http"
    credentials: Credentials = field(default_factory=Credentials)
    circuit_breaker: tuple[CircuitBreakerRule, ...] = ()
    pool: tuple[PoolMember, ...] = ()

    @property
    def is_pool(self) -> bool:
        return self.type == "pool"


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def parse_duration(text: Any, path: str = "") -> float:
    """An ISO 8601 duration (``PT1M``, ``P1D``) as ARM writes it, or a .NET TimeSpan (``00:01:00``) → seconds."""
    s = str(text).strip()
    m = _DURATION.match(s) or _TIMESPAN.match(s)
    if not s or s in ("P", "PT") or m is None:
        raise BackendError(path, f"'{text}' is not a duration (ISO 8601 such as PT1M, or 00:01:00)")
    parts = {k: float(v) for k, v in m.groupdict().items() if v}
    return parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def _int(value: Any, path: str, low: int = 0, high: int | None = None) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise BackendError(path, f"'{value}' is not an integer") from None
    if n < low or (high is not None and n > high):
        raise BackendError(path, f"{n} is out of range ({low}–{high if high is not None else '∞'})")
    return n


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BackendError(path, "must be a mapping")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BackendError(path, "must be a list")
    return value


def _values(table: Any, path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """ARM's ``{name: [values]}`` (a bare string is one value)."""
    out = []
    for name, values in _mapping(table, path).items():
        vs = [values] if isinstance(values, str | int | float) else _list(values, f"{path}.{name}")
        out.append((str(name), tuple(str(v) for v in vs)))
    return tuple(out)


def _required(data: Mapping[str, Any], key: str, path: str) -> str:
    value = str(data.get(key) or "").strip()
    if not value:
        raise BackendError(f"{path}.{key}", "is required")
    return value


def _credentials(raw: Any, path: str) -> Credentials:
    data = _mapping(raw, path)
    auth = _mapping(data.get("authorization"), f"{path}.authorization")
    authorization = None
    if auth:
        authorization = Authorization(_required(auth, "scheme", f"{path}.authorization"),
                                      str(auth.get("parameter") or ""))  # fmt: skip
    identity = _mapping(data.get("managedIdentity"), f"{path}.managedIdentity")
    managed = None
    if identity:
        managed = ManagedIdentity(_required(identity, "resource", f"{path}.managedIdentity"),
                                  str(identity.get("clientId") or "").strip())  # fmt: skip
    return Credentials(_values(data.get("header"), f"{path}.header"), _values(data.get("query"), f"{path}.query"),
                       authorization, managed)  # fmt: skip


def _rule(raw: Any, path: str) -> CircuitBreakerRule:
    data = _mapping(raw, path)
    cond = _mapping(data.get("failureCondition"), f"{path}.failureCondition")
    ranges = []
    for i, r in enumerate(_list(cond.get("statusCodeRanges"), f"{path}.failureCondition.statusCodeRanges")):
        rpath = f"{path}.failureCondition.statusCodeRanges[{i}]"
        rr = _mapping(r, rpath)
        low = _int(rr.get("min", 100), f"{rpath}.min", 100, 599)
        ranges.append(StatusCodeRange(low, _int(rr.get("max", low), f"{rpath}.max", low, 599)))
    reasons = cond.get("errorReasons")
    percentage = cond.get("percentage")
    condition = FailureCondition(
        count=_int(cond.get("count", 1), f"{path}.failureCondition.count", 1),
        interval=parse_duration(cond.get("interval", "PT1M"), f"{path}.failureCondition.interval"),
        status_code_ranges=tuple(ranges),
        error_reasons=tuple(str(r) for r in ([reasons] if isinstance(reasons, str) else _list(reasons, path))),
        percentage=None if percentage is None else _int(percentage, f"{path}.failureCondition.percentage", 1, 100),
    )
    accept = data.get("acceptRetryAfter", False)
    if not isinstance(accept, bool):
        accept = str(accept).strip().lower() == "true"
    return CircuitBreakerRule(
        name=str(data.get("name") or "rule"),
        failure_condition=condition,
        trip_duration=parse_duration(data.get("tripDuration", "PT1M"), f"{path}.tripDuration"),
        accept_retry_after=accept,
    )


def member_id(arm_id: str) -> str:
    """``/subscriptions/…/service/x/backends/openai-1`` or ``/backends/openai-1`` → ``openai-1``."""
    return arm_id.rstrip("/").rsplit("/", 1)[-1]


_KNOWN_KEYS = frozenset({"url", "type", "description", "protocol", "credentials", "circuitBreaker", "pool", "title",
                         "resourceId", "properties", "tls", "proxy", "serviceFabricCluster", "name", "id"})  # fmt: skip


def parse_backend(backend_id: str, raw: Any) -> Backend:
    """A backend entity from a URL string or APIM's resource shape (``properties`` wrapper optional)."""
    try:
        return _parse(backend_id, raw)
    except BackendError as e:
        raise BackendError(e.path, e.message, backend_id) from None


def _parse(backend_id: str, raw: Any) -> Backend:
    if isinstance(raw, str):
        return Backend(backend_id, url=_url(raw, "url"))
    data = _mapping(raw, "")
    if "properties" in data:
        data = _mapping(data["properties"], "properties")
    unknown = sorted(k for k in data if k not in _KNOWN_KEYS)
    if unknown:
        raise BackendError(unknown[0], "is not a property of an APIM backend (known: url, type, credentials, "
                           "circuitBreaker, pool, protocol, description)")  # fmt: skip
    kind = str(data.get("type") or ("pool" if data.get("pool") else "single")).strip().lower()
    if kind not in ("single", "pool"):
        raise BackendError("type", f"'{data.get('type')}' is not Single or Pool")
    members = []
    for i, m in enumerate(_list(_mapping(data.get("pool"), "pool").get("services"), "pool.services")):
        mpath = f"pool.services[{i}]"
        md = _mapping(m, mpath) if not isinstance(m, str) else {"id": m}
        if not md.get("id"):
            raise BackendError(f"{mpath}.id", "is required")
        members.append(PoolMember(member_id(str(md["id"])), _int(md.get("priority", 0), f"{mpath}.priority", 0, 100),
                                  _int(md.get("weight", 1), f"{mpath}.weight", 0, 100)))  # fmt: skip
    if kind == "pool" and not members:
        raise BackendError("pool.services", "a pool needs at least one member")
    url = str(data.get("url") or "")
    if kind == "single":
        url = _url(url, "url")
    rules = _list(_mapping(data.get("circuitBreaker"), "circuitBreaker").get("rules"), "circuitBreaker.rules")
    return Backend(
        id=backend_id,
        url=url,
        type=kind,
        description=str(data.get("description") or ""),
        protocol=str(data.get("protocol") or "http"),
        credentials=_credentials(data.get("credentials"), "credentials"),
        circuit_breaker=tuple(_rule(r, f"circuitBreaker.rules[{i}]") for i, r in enumerate(rules)),
        pool=tuple(members),
    )


def _url(text: str, path: str) -> str:
    url = text.strip()
    if not re.match(r"^https?://[^/\s]", url, re.IGNORECASE):
        raise BackendError(path, f"must be an absolute http(s) URL (got '{text}')")
    return url


def check_pools(backends: Mapping[str, Backend]) -> None:
    """Every pool member is a declared single backend (APIM: "you can only include single backends in a pool")."""
    for b in backends.values():
        for i, m in enumerate(b.pool):
            target = backends.get(m.id)
            if target is None:
                known = ", ".join(sorted(k for k, v in backends.items() if not v.is_pool)) or "none"
                raise BackendError(f"pool.services[{i}].id", f"backend '{m.id}' is not declared (single backends: "
                                   f"{known})", b.id)  # fmt: skip
            if target.is_pool:
                raise BackendError(f"pool.services[{i}].id", f"'{m.id}' is a pool; a pool holds single backends only",
                                   b.id)  # fmt: skip
