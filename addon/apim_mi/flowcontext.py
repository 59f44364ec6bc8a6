"""Translation between mitmproxy flows and the APIM ``context`` model, in both directions."""

from __future__ import annotations

import ipaddress
import uuid
from typing import TYPE_CHECKING

from .matcher import RequestTarget, normalize_path
from .policy.context import Body, Context, Headers, Request, Response, Url

if TYPE_CHECKING:
    from mitmproxy import http


def target_of(flow: http.HTTPFlow) -> RequestTarget:
    """Matching looks at where the connection really goes (``request.host``), never at a Host header."""
    req = flow.request
    return RequestTarget(req.scheme, req.host, req.port, normalize_path(req.path), req.method.upper())


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, IPv4-mapped loopback and ``localhost``."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def context_from_flow(flow: http.HTTPFlow, request_id: uuid.UUID) -> Context:
    req = flow.request
    url = Url.parse(req.url)
    peer = flow.client_conn.peername[0] if flow.client_conn.peername else "127.0.0.1"
    request = Request(
        method=req.method,
        url=url,
        headers=Headers(req.headers.items(multi=True)),
        body=Body(req.raw_content or b""),
        ip_address=peer,
        original_url=Url.parse(req.url),
    )
    return Context(request=request, request_id=request_id)


def apply_request(request: Request, flow: http.HTTPFlow) -> None:
    """Writes the policy's view of the request back (URL, method, headers, body) before it is forwarded."""
    req = flow.request
    new_url = str(request.url)
    if new_url != req.url:
        req.url = new_url
    req.method = request.method
    req.headers.clear()
    for name, value in request.headers.pairs():
        req.headers.add(name, value)
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
