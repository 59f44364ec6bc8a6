"""Translation between mitmproxy flows and the APIM ``context`` model, in both directions."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from mitmproxy.net.http import url

from .matcher import RequestTarget, normalize_path
from .policy.context import Body, Context, Headers, Request, Response, Url

if TYPE_CHECKING:
    from mitmproxy import http


def target_of(flow: http.HTTPFlow) -> RequestTarget:
    """Matching looks at where the connection really goes (``request.host``), never at a Host header."""
    req = flow.request
    return RequestTarget(req.scheme, req.host, req.port, normalize_path(req.path), req.method.upper())


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
    """The request as ``context_from_flow`` read it, so ``apply_request`` writes back only what the policy changed."""

    url: str
    method: bytes
    headers: list[tuple[str, str]]


def _decoded(fields: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """Header fields as mitmproxy's ``headers.items(multi=True)`` decodes them."""
    return [(n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for n, v in fields]


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
    host_header = req.host_header
    if not host_header:
        return request_url(req)
    host, port = url.parse_authority(host_header, check=False)
    return _unparse(req.scheme, host, port or url.default_port(req.scheme) or 443, req.path)


def context_from_flow(flow: http.HTTPFlow, request_id: uuid.UUID) -> Context:
    return request_context(flow, request_id)[0]


def request_context(flow: http.HTTPFlow, request_id: uuid.UUID) -> tuple[Context, Received]:
    """The policy's ``context`` for a flow, and what was read (for ``apply_request``)."""
    req = flow.request
    raw_url = request_url(req)
    parsed = Url.parse(raw_url)
    peer = flow.client_conn.peername[0] if flow.client_conn.peername else "127.0.0.1"
    pairs = _decoded(req.headers.fields)
    request = Request(
        method=req.method,
        url=parsed,
        headers=Headers(pairs),
        body=Body(req.raw_content or b""),
        ip_address=peer,
        original_url=parsed.copy(),
    )
    return Context(request=request, request_id=request_id), Received(raw_url, req.data.method, pairs)


def apply_request(request: Request, flow: http.HTTPFlow, received: Received | None = None) -> None:
    """Writes the policy's view of the request back (URL, method, headers, body) before it is forwarded.

    With ``received`` (from ``request_context``, the flow untouched since), what the policy left as it was is not
    written again; the result is the same."""
    req = flow.request
    new_url = str(request.url)
    if new_url != (received.url if received is not None else request_url(req)):
        req.url = new_url
    method = request.method.encode("utf-8", "surrogateescape")
    if received is None or method != received.method:
        req.data.method = method
    pairs = request.headers.pairs()
    if received is None or pairs != received.headers:
        req.headers.fields = tuple(
            (n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for n, v in pairs
        )
    if request.body is not None and request.body.content != (req.raw_content or b""):
        req.content = request.body.content


def response_from_flow(resp: http.Response) -> Response:
    return Response(
        status_code=resp.status_code,
        status_reason=resp.reason,
        headers=Headers(resp.headers.items(multi=True)),
        body=Body(resp.raw_content or b""),
    )


def make_response(response: Response) -> http.Response:
    from mitmproxy import http

    body = response.body.content if response.body is not None else b""
    resp = http.Response.make(response.status_code, body)
    resp.headers.clear()
    for name, value in response.headers.pairs():
        resp.headers.add(name, value)
    resp.headers["content-length"] = str(len(body))
    if response.status_reason:
        resp.reason = response.status_reason
    return resp


def apply_response(response: Response, flow: http.HTTPFlow) -> None:
    """Writes outbound changes (status, headers, body) back to the response the client will get."""
    assert flow.response is not None
    resp = flow.response
    resp.status_code = response.status_code
    if response.status_reason:
        resp.reason = response.status_reason
    resp.headers.clear()
    for name, value in response.headers.pairs():
        resp.headers.add(name, value)
    if response.body is not None and response.body.content != (resp.raw_content or b""):
        resp.content = response.body.content
