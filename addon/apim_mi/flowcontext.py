"""Translation between mitmproxy flows and the APIM ``context`` model, in both directions."""

from __future__ import annotations

import ipaddress
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from mitmproxy.net.http import url

from .clientcerts import presented
from .matcher import RequestLine
from .policy.context import Body, Context, Headers, Request, Response, Url

if TYPE_CHECKING:
    from mitmproxy import http


_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (4 << 76) | (0x8000 << 48)


class RequestIds:
    """Random version 4 UUIDs for request ids, as ``uuid.uuid4()`` makes them, without ``UUID.__init__``'s argument
    checks, from one ``os.urandom`` call per ``BATCH`` ids: a flow pays no system call of its own (one costs more
    than the rest of making the id). One per addon; the randomness is the operating system's, as ``uuid4``'s."""

    __slots__ = ("_at", "_pool")

    BATCH = 256

    def __init__(self) -> None:
        self._pool, self._at = b"", 0

    def next(self) -> uuid.UUID:
        at, pool = self._at, self._pool
        if at >= len(pool):
            pool = self._pool = os.urandom(16 * self.BATCH)
            at = 0
        self._at = at + 16
        request_id = object.__new__(uuid.UUID)  # the value set the way ``UUID.__init__`` sets it
        _SET_INT(request_id, int.from_bytes(pool[at : at + 16]) & _V4_CLEAR | _V4_SET)
        _SET_SAFE(request_id, _UNKNOWN_SAFETY)
        return request_id


#: ``UUID``'s slots written through their descriptors, as ``object.__setattr__`` writes them in ``UUID.__init__``
#: (which finds the same descriptors by name first: half the cost of a request id).
_SET_INT = uuid.UUID.__dict__["int"].__set__
_SET_SAFE = uuid.UUID.__dict__["is_safe"].__set__
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown


def line_of(flow: http.HTTPFlow) -> RequestLine:
    """Matching looks at where the connection really goes (``request.host``), never at a Host header."""
    data = flow.request.data  # what req.scheme/.path/.method decode, read once (asked for every flow)
    return RequestLine(data.scheme, data.host, data.port, data.path, data.method)


@lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, IPv4-mapped loopback and ``localhost`` (cached: a pure function of a client's address or a
    destination host, asked on every flow)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@dataclass(slots=True)
class Received:
    """The request as ``context_from_flow`` read it, so ``apply_request`` writes back only what the policy changed.

    ``url``: the URL string read, or None when the ``Url`` was built from a plain request's parts (then ``str(parsed)``
    is that string, and ``parsed``/``url_key`` tell whether the policy touched it); ``fields``: the header fields
    as read (mitmproxy's immutable tuple, compared with the policy's headers once encoded)."""

    url: str | None
    method: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    parsed: Url | None = None
    url_key: tuple[Any, ...] = ()


def decoded(fields: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """Header fields as mitmproxy's ``headers.items(multi=True)`` decodes them (UTF-8, surrogateescape). Valid UTF-8
    decodes the same without the error handler, and naming none skips the codec lookup (half of each call): only
    fields that are not valid UTF-8 take the second pass."""
    try:
        return [(n.decode(), v.decode()) for n, v in fields]
    except UnicodeDecodeError:
        return [(n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for n, v in fields]


def encoded(pairs: list[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    """Header pairs as mitmproxy's ``headers.add`` encodes them (UTF-8, surrogateescape): one ``fields`` tuple for
    all of them; as ``decoded``, only strings holding an escaped byte (a lone surrogate) take the second pass."""
    try:
        return tuple([(n.encode(), v.encode()) for n, v in pairs])
    except UnicodeEncodeError:
        return tuple([(n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                      for n, v in pairs])  # fmt: skip


def _unparse(scheme: str, host: str, port: int, path: str) -> str:
    """A URL with an IPv6 host in brackets (mitmproxy writes ``http://::1:8080/``, which no URL parser reads)."""
    return url.unparse(scheme, f"[{host}]" if ":" in host else host, port, path if path != "*" else "")


def request_url(req: http.Request) -> str:
    """``req.url``, IPv6 hosts in brackets."""
    return req.url if ":" not in req.host else _unparse(req.scheme, req.host, req.port, req.path)


def pretty_url(req: http.Request) -> str:
    """``req.pretty_url`` (the Host header's authority, as the client addressed it), IPv6 hosts in brackets."""
    if req.first_line_format == "authority":
        return req.authority
    host_header = _host_header(req)
    if not host_header:
        return request_url(req)
    host, port = _authority(host_header)
    return _unparse(req.scheme, host, port or url.default_port(req.scheme) or 443, req.path)


def _host_header(req: http.Request) -> str | None:
    """``req.host_header``, reading HTTP/1's Host header(s) straight from the fields."""
    if req.is_http2 or req.is_http3:
        return req.host_header
    values = [v for n, v in req.headers.fields if len(n) == 4 and n.lower() == b"host"]
    return b", ".join(values).decode("utf-8", "surrogateescape") if values else None


@lru_cache(maxsize=1024)
def _authority(host_header: str) -> tuple[str, int | None]:
    """mitmproxy's ``parse_authority`` (with its IDNA/host checks), once per distinct Host header."""
    return url.parse_authority(host_header, check=False)


#: ``RequestSnapshot.data``: host, port, method, scheme, authority, path, HTTP version and header fields.
SnapshotData = tuple[str, int, bytes, bytes, bytes, bytes, bytes, tuple[tuple[bytes, bytes], ...]]


class RequestSnapshot:
    """The request at one moment, kept as mitmproxy's ``RequestData`` values and header ``fields`` (all immutable):
    what the trace and the log line show of it (method, URL) is worked out only when something reads it."""

    __slots__ = ("_request", "_url", "data")

    def __init__(self, req: http.Request) -> None:
        d = req.data
        self.data: SnapshotData = (d.host, d.port, d.method, d.scheme, d.authority, d.path, d.http_version,
                                   d.headers.fields)
        self._request: http.Request | None = None
        self._url = ""

    @classmethod
    def of(cls, data: SnapshotData) -> RequestSnapshot:
        """The snapshot whose ``data`` this is (a trace keeps only the data: plain values)."""
        snapshot = cls.__new__(cls)
        snapshot.data, snapshot._request, snapshot._url = data, None, ""
        return snapshot

    @property
    def fields(self) -> tuple[tuple[bytes, bytes], ...]:
        return self.data[7]  # type: ignore[no-any-return]

    def request(self) -> http.Request:
        """The request as it was, made again (only when read)."""
        if self._request is None:
            from mitmproxy import http

            host, port, method, scheme, authority, path, version, fields = self.data
            self._request = http.Request(host, port, method, scheme, authority, path, version, http.Headers(fields),
                                         None, None, 0.0, None)  # fmt: skip
        return self._request

    def with_fields(self, fields: tuple[tuple[bytes, bytes], ...]) -> RequestSnapshot:
        """The same request with other header ``fields`` (its Host header unchanged, so its URL too)."""
        other = RequestSnapshot.__new__(RequestSnapshot)
        other.data, other._request, other._url = (*self.data[:7], fields), None, self._url
        return other

    @property
    def url(self) -> str:
        """``pretty_url`` of the request as it was."""
        if not self._url:
            self._url = pretty_url(self.request())
        return self._url


def context_from_flow(flow: http.HTTPFlow, request_id: uuid.UUID) -> Context:
    return request_context(flow, request_id)[0]




def _url_key(u: Url) -> tuple[Any, ...]:
    return (u.scheme, u.host, u.port, u.path, u.fragment, u._raw_query)


def _url_of(req: http.Request) -> tuple[Url, str | None, str | tuple[str, str, int, str]]:
    """``Url.parse(request_url(req))``, that string, and what ``Request.of_flow`` makes the original URL from; for a
    plain URL (http/https, lower-case name, a path with neither fragment nor control characters) built from
    mitmproxy's parsed parts instead (``Url.plain``), with the string left unbuilt (None): it is ``str()`` of the
    result."""
    data = req.data  # what mitmproxy's scheme and path properties decode, without a Python call each
    scheme, host, path = data.scheme.decode("utf-8", "surrogateescape"), data.host, data.path.decode(
        "utf-8", "surrogateescape")
    if (
        (scheme == "http" or scheme == "https")
        and path[:1] == "/"
        and host
        and ":" not in host
        and host == host.lower()
        # what keeps the URL from being "plain": urlsplit drops tabs and newlines and splits at '#' (a few
        # substring tests cost less than one regular expression search; on str: ``in`` on bytes first tries the
        # needle as an integer, and raises and clears an exception to find it is not one)
        and "#" not in path
        and "\t" not in path
        and "\r" not in path
        and "\n" not in path
        and path[-1:] != "?"
    ):
        parts = (scheme, host, data.port, path)
        return Url.plain(*parts), None, parts
    raw = request_url(req)
    return Url.parse(raw), raw, raw


def request_context(flow: http.HTTPFlow, request_id: uuid.UUID, body: Body | None = None) -> tuple[Context, Received]:
    """The policy's ``context`` for a flow, and what was read (for ``apply_request``). ``body``: instead of the
    flow's (a streamed body, not there yet)."""
    req = flow.request
    data = req.data
    parsed, raw_url, original = _url_of(req)
    client = flow.client_conn
    peername, certificates = client.peername, client.certificate_list
    fields = data.headers.fields
    method = data.method
    request = Request.of_flow(method.decode("utf-8", "surrogateescape").upper(), parsed, Headers.of(decoded(fields)),
                              data.content or b"", peername[0] if peername else "127.0.0.1",
                              presented(certificates) if certificates else None, original)  # fmt: skip
    if body is not None:
        request.body = body
    received = Received(raw_url, method, fields, parsed, _url_key(parsed))
    return Context.of_flow(request, request_id, data.timestamp_start), received


def _hosts(fields: tuple[tuple[bytes, bytes], ...]) -> list[bytes]:
    return [v for n, v in fields if len(n) == 4 and n.lower() == b"host"]


def apply_request(request: Request, flow: http.HTTPFlow, received: Received | None = None) -> bool:
    """Writes the policy's view of the request back (URL, method, headers, body) before it is forwarded; returns
    whether the URL or the Host header changed (what ``pretty_url`` depends on).

    With ``received`` (from ``request_context``, the flow untouched since), what the policy left as it was is not
    written again; the result is the same."""
    req = flow.request
    changed = False
    u = request.url
    untouched = (
        received is not None
        and received.url is None
        and u is received.parsed
        and _url_key(u) == received.url_key
        and u.query._pairs == u._raw_pairs  # read, not copied
    )
    if not untouched:
        new_url = str(u)
        if new_url != (received.url if received is not None and received.url is not None else request_url(req)):
            req.url = new_url
            changed = True
    method = request.method.encode("utf-8", "surrogateescape")
    if received is None or method != received.method:
        req.data.method = method
    fields = encoded(request.headers._pairs)  # read, not copied: ``encoded`` makes the new tuple
    if received is None or fields != received.fields:
        req.data.headers.fields = fields
        changed = changed or received is None or _hosts(fields) != _hosts(received.fields)
    body = request.body_if_read()  # never read: still the flow's
    if body is not None and not body.streamed and body.content != (req.data.content or b""):
        req.content = body.content
    return changed


def apply_response_headers(headers: Headers, resp: http.Response, received: list[tuple[str, str]] | None) -> None:
    """The policy's headers into the answer, unless they are still the pairs ``response_headers`` read."""
    pairs = headers._pairs  # read, not copied: ``encoded`` makes the new tuple
    if received is None or pairs != received:
        resp.data.headers.fields = encoded(pairs)


def content_of(message: http.Message) -> bytes | None:
    """``message.get_content(strict=False)``; without a Content-Encoding (most answers) the raw body, with no header
    lookup."""
    for name, _ in message.data.headers.fields:
        if len(name) == 16 and name.lower() == b"content-encoding":
            return message.get_content(strict=False)
    return message.data.content


def response_headers(resp: http.Response) -> tuple[Headers, list[tuple[str, str]]]:
    """The answer's headers as the policy's ``Headers``, and their pairs as read (for ``apply_response_headers``)."""
    pairs = decoded(resp.data.headers.fields)
    return Headers.of(list(pairs)), pairs


def response_context(resp: http.Response) -> tuple[Response, list[tuple[str, str]]]:
    """The policy's ``context.Response`` for the backend's answer, and its header pairs as read (for
    ``apply_response``)."""
    data = resp.data  # the raw values: mitmproxy's properties are a Python call each
    headers, pairs = response_headers(resp)
    return Response(status_code=data.status_code, status_reason=resp.reason, headers=headers,
                    body=Body(data.content or b"")), pairs  # fmt: skip


def make_response(response: Response) -> http.Response:
    from mitmproxy import http

    body = response.body.content if response.body is not None else b""
    resp = http.Response.make(response.status_code, body)
    resp.headers.fields = encoded(response.headers.pairs())
    resp.headers["content-length"] = str(len(body))
    if response.status_reason:
        resp.reason = response.status_reason
    return resp


def apply_response(response: Response, flow: http.HTTPFlow, received: list[tuple[str, str]] | None = None) -> None:
    """Writes outbound changes (status, headers, body) back to the response the client will get; with
    ``received`` (from ``response_context``), headers the policy left as they were are not written again."""
    assert flow.response is not None
    resp = flow.response
    data = resp.data
    data.status_code = response.status_code  # what the property's setter does, without the call
    reason = response.status_reason
    if reason and reason != resp.reason:  # written only when the policy changed it (the setter is two calls)
        resp.reason = reason
    apply_response_headers(response.headers, resp, received)
    if response.body is not None and response.body.content != (data.content or b""):
        resp.content = response.body.content
