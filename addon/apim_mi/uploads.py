"""Uploads: requests whose body mitmproxy streams (``stream_large_bodies``, or ``flow.request.stream`` set by an addon).

mitmproxy sends a streamed request's headers upstream right after the ``requestheaders`` hooks, before the body is
read, so a token added in the ``request`` hook would never leave. For such requests the policy runs in
``requestheaders``. A policy that needs the request body cannot run on one; nor can mitmproxy answer a request whose
body is still arriving. Such a request goes to :class:`Sink`, a loopback server that swallows the body, instead of
the backend, and the client gets the policy's answer (APIM's 500 with the cause in the trace).
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import PolicyError
from .policy.context import Body
from .policy.expressions.dotnet import NetException

if TYPE_CHECKING:
    from mitmproxy import http

    from .policy.model import Policy, Statement, Value


class Streaming(enum.Enum):
    """Whether mitmproxy will stream a request's body, as far as the ``requestheaders`` hook can know."""

    NO = "no"
    YES = "yes"  # flow.request.stream is already set: the headers leave right after requestheaders
    MAYBE = "maybe"  # length unknown (chunked, HTTP/2 without content-length): streamed once it passes the limit


def streaming(req: http.Request, limit: int | None) -> Streaming:
    """mitmproxy's own decision (``check_body_size``), read in ``requestheaders``. ``limit``: ``stream_large_bodies``
    in bytes (None = off). A known Content-Length over the limit has set ``req.stream`` before the hook runs; an
    unknown length is decided only once the buffered body passes the limit."""
    if req.stream:
        return Streaming.YES
    if limit is None:
        return Streaming.NO
    from mitmproxy.net.http.http1.read import expected_http_body_size

    try:
        size = expected_http_body_size(req)
    except ValueError:
        return Streaming.MAYBE
    if size is None or size < 0:
        return Streaming.MAYBE
    if size == 0:  # no Content-Length: HTTP/1 has no body; HTTP/2 and 3 may still send DATA frames
        return Streaming.MAYBE if req.is_http2 or req.is_http3 else Streaming.NO
    return Streaming.YES if size > limit else Streaming.NO


# Statements that read or rewrite the *main request's* body when they run in inbound or backend (outside a side
# request). In outbound and on-error most of them act on the response instead.
_BODY_STATEMENTS = frozenset({
    "set-body", "validate-content", "json-to-xml", "xml-to-json", "find-and-replace", "xsl-transform",
    "validate-graphql-request", "llm-content-safety", "llm-semantic-cache-lookup",
    "azure-openai-semantic-cache-lookup", "llm-token-limit", "azure-openai-token-limit",
})  # fmt: skip
_SIDE_REQUESTS = frozenset({"send-request", "send-one-way-request"})
_READS_REQUEST_BODY = re.compile(r"Request\s*\??\.\s*Body\b")
_REQUEST_SECTIONS = ("inbound", "backend")


def request_body_need(policy: Policy) -> str | None:
    """The first place in ``policy`` that may need the main request's body ("'set-body' on line 12"), or None.

    Conservative (a statement in a branch that is not taken still counts): it decides, before anything runs,
    whether a request of unknown length must wait for its whole body."""
    for section, statements in policy.sections.items():
        for stmt, in_side_request in _walk(statements, False):
            if section in _REQUEST_SECTIONS and not in_side_request and stmt.name in _BODY_STATEMENTS:
                return f"'{stmt.name}' on line {stmt.location.line}"
            for value in _values(stmt):
                if value.is_expression and _READS_REQUEST_BODY.search(value.text):
                    return f"an expression of '{stmt.name}' reading context.Request.Body on line {stmt.location.line}"
    return None


def _walk(statements: list[Statement], in_side: bool) -> Iterator[tuple[Statement, bool]]:
    for stmt in statements:
        yield stmt, in_side
        yield from _walk(stmt.children, in_side or stmt.name in _SIDE_REQUESTS)


def _values(stmt: Statement) -> Iterator[Value]:
    yield from stmt.attrs.values()
    if stmt.text is not None:
        yield stmt.text


def ignores_errors(policy: Policy) -> bool:
    """A rule "says ignore_error: true" when every authentication-managed-identity in its policy does (a shorthand
    rule's ``ignore_error``): then a policy that cannot run on a streamed request forwards it unchanged."""
    found = [s for s in policy.statements() if s.name == "authentication-managed-identity"]
    return bool(found) and all((s.attr("ignore-error") or "").strip().lower() == "true" for s in found)


def way_out(limit_text: str) -> str:
    """What a user can do, said the same way in the trace, the log and the comment."""
    setting = f"stream_large_bodies={limit_text}" if limit_text else "flow.request.stream (set by an addon)"
    return (f"mitmproxy streams this request's body ({setting}), so the policy cannot read it. Raise "
            "stream_large_bodies above the largest body this rule sees, or change the policy so it does not need "
            "the request body.")  # fmt: skip


BODY_ERROR = "RequestBodyStreamed"


def body_error(message: str) -> PolicyError:
    return PolicyError("apim-mi", message, BODY_ERROR)


class StreamedBody(Body):
    """The body of a request mitmproxy streams: not here yet when the policy runs. Reading it fails the policy (an
    expression gets a .NET exception, a statement a policy error) instead of seeing an empty body; ``touched`` says
    it was tried."""

    streamed = True

    def __init__(self, cause: str) -> None:
        self.cause = cause
        self.content_type = None
        self.consumed = False
        self.touched = False

    @property  # type: ignore[override]
    def content(self) -> bytes:
        self.touched = True
        raise body_error(self.cause)

    @content.setter
    def content(self, value: bytes) -> None:
        self.touched = True
        raise body_error(self.cause)

    def read(self, preserve: bool = False) -> bytes:
        self.touched = True
        raise NetException("System.InvalidOperationException", self.cause)

    def __repr__(self) -> str:
        return "StreamedBody()"


@dataclass
class Destination:
    """Where a request was going before it was sent to the sink, put back once the flow ends."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, req: http.Request) -> Destination:
        return cls(req.scheme, req.host, req.port)

    def apply(self, req: http.Request) -> None:
        """Points ``req`` here; through ``data.host``, so the Host header stays what the client sent (request.host's
        setter would rewrite it)."""
        req.scheme, req.data.host, req.data.port = self.scheme, self.host, self.port


class Sink:
    """A loopback HTTP server that reads and discards a request body and answers 500. A request that must not reach
    its backend, but whose body mitmproxy already streams, goes here; the addon then answers the client itself."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._starting: asyncio.Lock | None = None
        self.port = 0

    async def start(self) -> None:
        """Started on first use (most proxies never need it); concurrent first uses start it once."""
        if self._runner is not None:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._runner is None:
                await self._listen()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._swallow)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def divert(self, req: http.Request) -> Destination:
        """Points ``req`` at the sink and returns where it was going."""
        where = Destination.of(req)
        Destination("http", "127.0.0.1", self.port).apply(req)
        return where

    @staticmethod
    async def _swallow(request: web.Request) -> web.Response:
        while await request.content.readany():
            pass
        return web.Response(status=500, text="apim-mi: request not forwarded (failed closed)")
