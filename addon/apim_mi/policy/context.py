"""The APIM ``context`` object model (apim.md §4.2) as plain Python dataclasses.

The engine builds and mutates these objects with the snake_case Python API; policy expressions see the same objects
through their .NET names (``context.Request.Headers`` → ``Context.request.headers``). The expression runtime maps a
PascalCase member to the snake_case field of the same name, and only to dataclass fields or to the names listed in
a class's ``NET_PROPERTIES``, so expressions cannot reach anything else.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Self
from urllib.parse import SplitResult, quote, unquote_plus, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class MultiMap:
    """An ordered, case-insensitive multimap of string names to string values (headers, query parameters)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._pairs: list[tuple[str, str]] = [(str(n), str(v)) for n, v in pairs]

    @classmethod
    def of(cls, pairs: list[tuple[str, str]]) -> Self:
        """A multimap that takes ``pairs`` (already ``str`` pairs) as its own list, without copying."""
        m = cls.__new__(cls)
        m._pairs = pairs
        return m

    # Names are compared by length before they are lowered: most differ in length, and ``lower`` makes a string.
    # Exact: the one character whose lower case is longer (U+0130) lowers to a dotted i (U+0307), so only a key
    # holding U+0307 can match a name of another length (then ``k`` is -1: no shortcut).

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        k = len(key) if "\u0307" not in key else -1  # see above
        return [v for n, v in self._pairs if (len(n) == k or k < 0) and n.lower() == key]

    def get(self, name: str, default: str | None = None) -> str | None:
        """All values joined by commas, as APIM's ``GetValueOrDefault``; ``default`` when absent."""
        key = name.lower()
        k = len(key) if "\u0307" not in key else -1  # see above
        found = None
        for n, v in self._pairs:  # the usual one value: no list, no join
            if (len(n) == k or k < 0) and n.lower() == key:
                found = v if found is None else f"{found},{v}"
        return default if found is None else found

    def set(self, name: str, values: Sequence[str]) -> bool:
        """Replace every value of ``name`` (keeping the position of its first occurrence); returns whether the name
        was there."""
        key = name.lower()
        k = len(key) if "\u0307" not in key else -1  # see above
        pairs = self._pairs
        for i, (n, _) in enumerate(pairs):
            if (len(n) == k or k < 0) and n.lower() == key:
                kept = [p for p in pairs[i + 1 :] if (len(p[0]) != k and k >= 0) or p[0].lower() != key]
                if len(values) == 1 and len(kept) == len(pairs) - i - 1:  # one value for the one there: in place
                    pairs[i] = (name, str(values[0]))
                    return True
                self._pairs = [*pairs[:i], *[(name, str(v)) for v in values], *kept]
                return True
        for v in values:  # a new name: appended, as ``append`` does
            pairs.append((name, str(v)))
        return False

    def append(self, name: str, value: str) -> None:
        self._pairs.append((name, str(value)))

    def remove(self, name: str) -> bool:
        """Drop every value of ``name``; returns whether there was one."""
        key = name.lower()
        k = len(key) if "\u0307" not in key else -1  # see above
        pairs = self._pairs
        kept = [(n, v) for n, v in pairs if (len(n) != k and k >= 0) or n.lower() != key]
        if len(kept) == len(pairs):
            return False
        self._pairs = kept
        return True

    def pairs(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def names(self) -> list[str]:
        """Distinct names in first-seen order, with their first-seen spelling."""
        seen: dict[str, str] = {}
        for n, _ in self._pairs:
            seen.setdefault(n.lower(), n)
        return list(seen.values())

    def copy(self) -> MultiMap:
        return type(self)(self._pairs)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        k = len(key) if "\u0307" not in key else -1  # see above
        for n, _ in self._pairs:  # noqa: SIM110 (a loop: no list, no generator, stops at the first)
            if (len(n) == k or k < 0) and n.lower() == key:
                return True
        return False

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MultiMap) and self._pairs == other._pairs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._pairs!r})"


class Headers(MultiMap):
    """HTTP headers: ``IReadOnlyDictionary<string, string[]>`` in expressions."""

    __slots__ = ()


class Query(MultiMap):
    """URL query parameters (decoded): ``IReadOnlyDictionary<string, string[]>`` in expressions."""

    __slots__ = ()

    @classmethod
    def parse(cls, query: str) -> Query:
        pairs: list[tuple[str, str]] = []
        if query:
            plus_or_percent = "+" in query or "%" in query  # else unquoting leaves every part as it is
            for part in query.split("&"):
                if not part:
                    continue
                name, _, value = part.partition("=")
                pairs.append((unquote_plus(name), unquote_plus(value)) if plus_or_percent else (name, value))
        return cls.of(pairs)

    def encode(self) -> str:
        return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in self._pairs)


@dataclass(slots=True)
class Url:
    """APIM's ``IUrl``. ``str(url)`` is the full URL; an untouched query keeps its original encoding."""

    scheme: str
    host: str
    port: int
    path: str = "/"
    query: Query = field(default_factory=Query)
    fragment: str = ""
    _raw_query: str | None = field(default=None, repr=False, compare=False)
    _raw_pairs: list[tuple[str, str]] | None = field(default=None, repr=False, compare=False)

    NET_PROPERTIES: ClassVar[frozenset[str]] = frozenset({"query_string"})

    @classmethod
    def parse(cls, url: str) -> Url:
        parts = urlsplit(url)
        scheme = (parts.scheme or "http").lower()
        host, port = _host_port(parts)
        raw_query = parts.query
        q = Query.parse(raw_query)
        if port is None:
            port = DEFAULT_PORTS.get(scheme, 80)
        return cls(scheme, host, port, parts.path or "/", q, parts.fragment, raw_query, q.pairs())

    @classmethod
    def plain(cls, scheme: str, host: str, port: int, path: str) -> Url:
        """The URL of a plain request from mitmproxy's parts (http/https, a lower-case name, a path that starts with
        ``/`` and has neither fragment nor control characters): what ``parse`` gives for it, without its parsing."""
        p, _, q = path.partition("?")
        query = Query.parse(q)
        u = object.__new__(cls)  # what __init__ sets, without its call (one or two per request)
        u.scheme, u.host, u.port, u.path, u.query, u.fragment = scheme, host, port, p, query, ""
        u._raw_query, u._raw_pairs = q, list(query._pairs)
        return u

    @property
    def query_string(self) -> str:
        """``?a=1&b=2``, or empty without a query."""
        if self._raw_query is not None and self._raw_pairs == self.query.pairs():
            raw = self._raw_query
        else:
            raw = self.query.encode()
        return f"?{raw}" if raw else ""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if DEFAULT_PORTS.get(self.scheme) == self.port:
            return host
        return f"{host}:{self.port}"

    def copy(self) -> Url:
        """A copy whose query can change on its own (one per request, for ``OriginalUrl``: made without
        ``__init__``'s call, which costs more than the copy)."""
        u = object.__new__(Url)
        query = object.__new__(type(self.query))
        query._pairs = list(self.query._pairs)
        u.scheme, u.host, u.port, u.path, u.query = self.scheme, self.host, self.port, self.path, query
        u.fragment, u._raw_query, u._raw_pairs = self.fragment, self._raw_query, self._raw_pairs
        return u

    def __str__(self) -> str:
        frag = f"#{self.fragment}" if self.fragment else ""
        return f"{self.scheme}://{self.authority}{self.path}{self.query_string}{frag}"


def _host_port(parts: SplitResult) -> tuple[str, int | None]:
    """``parts.hostname or ""`` and ``parts.port`` (None when it is not a valid port), reading a plain netloc (no
    user info, brackets or zone) once instead of once per property."""
    netloc = parts.netloc
    host, _, text = netloc.partition(":")
    if "@" in netloc or "[" in netloc or "%" in netloc or (text and not (text.isdigit() and text.isascii())):
        try:
            port = parts.port
        except ValueError:
            port = None
        return parts.hostname or "", port
    port = int(text) if text else None
    return host.lower(), port if port is None or port <= 65535 else None


class Body:
    """A message body (``IMessageBody``). Reading it without ``preserveContent`` consumes it, as in APIM."""

    __slots__ = ("consumed", "content", "content_type")

    #: True for a request body mitmproxy streams, which is not there when the policy runs (apim_mi.streaming).
    streamed = False

    def __init__(self, content: bytes = b"", content_type: str | None = None) -> None:
        self.content = bytes(content)
        self.content_type = content_type
        self.consumed = False

    def read(self, preserve: bool = False) -> bytes:
        data = self.content
        if not preserve:
            self.content = b""
            self.consumed = True
        return data

    def __repr__(self) -> str:
        return f"Body({self.content[:40]!r}{'…' if len(self.content) > 40 else ''}, consumed={self.consumed})"


#: A lazy part of a ``Request`` not made yet (``Request.of_flow``).
_UNREAD: Any = object()


@dataclass(slots=True, init=False)
class Request:
    """``context.Request``. ``body`` and ``original_url`` of a request read from a flow (``of_flow``) are made when
    first read: most policies read neither, and every request builds one."""

    method: str
    url: Url
    headers: Headers
    _body: Body | None = field(repr=False)
    ip_address: str
    _original_url: Url | None = field(repr=False)
    matched_parameters: dict[str, str]
    certificate: Any
    private_endpoint_connection: Any
    #: what the lazy parts are made from: (content, the original URL's ``Url.parse`` text or its plain parts)
    _source: tuple[Any, ...] = field(repr=False, compare=False)

    NET_PROPERTIES: ClassVar[frozenset[str]] = frozenset({"body", "original_url"})

    def __init__(
        self,
        method: str,
        url: Url,
        headers: Headers | None = None,
        body: Body | None = None,
        ip_address: str = "127.0.0.1",
        original_url: Url | None = None,
        matched_parameters: dict[str, str] | None = None,
        certificate: Any = None,
        private_endpoint_connection: Any = None,
    ) -> None:
        self.method, self.url, self.headers = method, url, Headers() if headers is None else headers
        self._body, self.ip_address = body, ip_address
        self._original_url = url.copy() if original_url is None else original_url
        self.matched_parameters = {} if matched_parameters is None else matched_parameters
        self.certificate, self.private_endpoint_connection, self._source = certificate, private_endpoint_connection, ()

    @classmethod
    def of_flow(cls, method: str, url: Url, headers: Headers, content: bytes, ip_address: str, certificate: Any,
                original: str | tuple[str, str, int, str]) -> Request:  # fmt: skip
        """A request read from a flow: its body is made from ``content`` and its original URL from ``original`` (the
        URL as received: ``Url.parse``'s text, or ``Url.plain``'s parts) when first read."""
        request = object.__new__(cls)
        request.method, request.url, request.headers, request.ip_address = method, url, headers, ip_address
        request._body = request._original_url = _UNREAD
        request.matched_parameters, request.certificate, request.private_endpoint_connection = {}, certificate, None
        request._source = (content, original)
        return request

    @property
    def body(self) -> Body | None:
        body = self._body
        if body is _UNREAD:
            body = self._body = Body(self._source[0])
        return body

    @body.setter
    def body(self, value: Body | None) -> None:
        self._body = value

    def body_if_read(self) -> Body | None:
        """``body``, or None when it was never read (nor set): then it is still the flow's."""
        body = self._body
        return None if body is _UNREAD else body

    @property
    def original_url(self) -> Url | None:
        """The URL as received (``context.Request.OriginalUrl``)."""
        original = self._original_url
        if original is _UNREAD:
            received = self._source[1]
            original = Url.parse(received) if type(received) is str else Url.plain(*received)
            self._original_url = original
        return original

    @original_url.setter
    def original_url(self, value: Url | None) -> None:
        self._original_url = value


@dataclass(slots=True)
class Response:
    """The current response, and also APIM's ``IResponse`` held in a variable by ``send-request``."""

    status_code: int = 200
    status_reason: str = "OK"
    headers: Headers = field(default_factory=Headers)
    body: Body | None = None


@dataclass
class Authorization:
    """APIM's ``Authorization`` that get-authorization-context stores: ``AccessToken`` and ``Claims``."""

    access_token: str
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class LastError:
    source: str
    reason: str
    message: str
    scope: str = ""
    section: str = ""
    path: str = ""
    policy_id: str = ""
    http_error_code: int = 0


@dataclass
class SubscriptionKeyParameterNames:
    header: str = "Ocp-Apim-Subscription-Key"
    query: str = "subscription-key"


@dataclass
class Api:
    id: str = ""
    name: str = ""
    path: str = ""
    protocols: list[str] = field(default_factory=lambda: ["https"])
    service_url: Url | None = None
    subscription_key_parameter_names: SubscriptionKeyParameterNames = field(
        default_factory=SubscriptionKeyParameterNames
    )
    is_current_revision: bool = True
    revision: str = "1"
    version: str | None = None


@dataclass
class Operation:
    id: str = ""
    method: str = ""
    name: str = ""
    url_template: str = ""


@dataclass
class Group:
    id: str = ""
    name: str = ""


@dataclass
class Product:
    id: str = ""
    name: str = ""
    approval_required: bool = False
    groups: list[Group] = field(default_factory=list)
    state: str = "Published"
    subscriptions_limit: int | None = None
    subscription_required: bool = True


@dataclass
class Subscription:
    id: str = ""
    key: str = ""
    name: str = ""
    primary_key: str = ""
    secondary_key: str = ""
    created_date: datetime = field(default_factory=lambda: datetime.now(UTC))
    start_date: datetime | None = None
    end_date: datetime | None = None


@dataclass
class UserIdentity:
    id: str = ""
    provider: str = ""


@dataclass
class User:
    id: str = ""
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    groups: list[Group] = field(default_factory=list)
    identities: list[UserIdentity] = field(default_factory=list)
    note: str | None = None
    registration_date: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class Gateway:
    id: str = "managed"
    instance_id: str = ""
    is_managed: bool = True


@dataclass(slots=True)
class Deployment:
    region: str = "Local"
    service_name: str = "apim-mi"
    service_id: str = ""
    gateway_id: str = "managed"
    gateway: Gateway = field(default_factory=Gateway)
    certificates: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workspace:
    id: str = ""
    name: str = ""


@dataclass(slots=True, init=False)
class Context:
    """Everything a policy expression can see as ``context``.

    ``timestamp`` and ``deployment`` are made when first read (most policies never read them, and every request
    builds a context): the time is ``received`` (epoch seconds: APIM's "point in time when the request was
    received"), or the first read's without one; the ``Deployment`` is the default one."""

    request: Request
    response: Response | None
    variables: dict[str, Any]
    request_id: uuid.UUID
    last_error: LastError | None
    api: Api | None
    operation: Operation | None
    product: Product | None
    subscription: Subscription | None
    user: User | None
    workspace: Workspace | None
    tracing: bool
    traces: list[str]
    _received: float | None = field(repr=False, compare=False)
    _timestamp: datetime | None = field(repr=False)
    _deployment: Deployment | None = field(repr=False)

    NET_PROPERTIES: ClassVar[frozenset[str]] = frozenset({"elapsed", "timestamp", "deployment"})

    def __init__(
        self,
        request: Request,
        response: Response | None = None,
        variables: dict[str, Any] | None = None,
        request_id: uuid.UUID | None = None,
        timestamp: datetime | None = None,
        last_error: LastError | None = None,
        api: Api | None = None,
        operation: Operation | None = None,
        product: Product | None = None,
        subscription: Subscription | None = None,
        user: User | None = None,
        deployment: Deployment | None = None,
        workspace: Workspace | None = None,
        tracing: bool = False,
        traces: list[str] | None = None,
        received: float | None = None,
    ) -> None:
        self.request, self.response = request, response
        self.variables = {} if variables is None else variables
        self.request_id = uuid.uuid4() if request_id is None else request_id
        self._received, self._timestamp, self._deployment = received, timestamp, deployment
        self.last_error, self.api, self.operation, self.product = last_error, api, operation, product
        self.subscription, self.user, self.workspace, self.tracing = subscription, user, workspace, tracing
        self.traces = [] if traces is None else traces

    @classmethod
    def of_flow(cls, request: Request, request_id: uuid.UUID, received: float | None) -> Context:
        """``Context(request=request, request_id=request_id, received=received)``, made without ``__init__``'s keyword
        arguments (one context per request)."""
        context = object.__new__(cls)
        context.request, context.response, context.variables, context.request_id = request, None, {}, request_id
        context._received = received
        context._timestamp = context._deployment = context.last_error = context.api = context.operation = None
        context.product = context.subscription = context.user = context.workspace = None
        context.tracing, context.traces = False, []
        return context

    @property
    def timestamp(self) -> datetime:
        """When the request was received (``context.Timestamp``), UTC."""
        if self._timestamp is None:
            received = self._received
            self._timestamp = datetime.now(UTC) if received is None else datetime.fromtimestamp(received, UTC)
        return self._timestamp

    @timestamp.setter
    def timestamp(self, value: datetime) -> None:
        self._timestamp = value

    @property
    def deployment(self) -> Deployment:
        if self._deployment is None:
            self._deployment = Deployment()
        return self._deployment

    @deployment.setter
    def deployment(self, value: Deployment) -> None:
        self._deployment = value

    @property
    def service_name(self) -> str:
        return self.deployment.service_name

    @property
    def elapsed(self) -> timedelta:
        """Time since the request was received (``context.Elapsed``)."""
        return datetime.now(UTC) - self.timestamp

    def trace(self, message: str) -> None:
        """``context.Trace(message)``: recorded for the engine to put into the trace."""
        self.traces.append(message)
