"""Hosting for the local aiohttp servers (the emulator and the demo backend), so both start, stop and shut down alike.

* :class:`LoopbackServer` -- listen on loopback only (unless ``allow_remote``), report the bound URL, stop.
* :class:`ServerThread` -- the same server on its own event loop in a daemon thread, for sync code and tests.
* :func:`serve_until_stopped` -- the standalone CLIs' "print the startup line, run until SIGINT/SIGTERM" loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import ssl as ssl_module
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Self, TextIO

from aiohttp import web

from .loopthread import LoopThread

LISTEN_BACKLOG = 256
SHUTDOWN_TIMEOUT = 1.0


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; anything else (including 0.0.0.0 and "") is remote."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def format_url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def require_loopback(request: web.Request) -> None:
    """Admin APIs are unauthenticated, so they answer loopback clients only (403 otherwise)."""
    if not is_loopback_host(request.remote or ""):
        raise web.HTTPForbidden(text='{"error": "the admin API answers only on loopback"}',
                                content_type="application/json")  # fmt: skip


class LoopbackServer(ABC):
    """An aiohttp app that listens on loopback unless told otherwise and knows the URL it is bound to.

    Subclasses build the app, name themselves in errors (``_what``) and define a public ``start`` that calls
    :meth:`_listen` with the options they support.
    """

    _what: ClassVar[str] = "server"

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @abstractmethod
    def _build_app(self) -> web.Application: ...

    @abstractmethod
    async def start(self) -> str:
        """Listen on the default address and return the base URL (subclasses add host, port and more)."""

    def _starting(self) -> None:  # noqa: B027 (an optional hook, not an abstract method)
        """Called once the bind is allowed and before the app is built: reset per-run state here."""

    async def _listen(
        self, host: str, port: int, ssl: ssl_module.SSLContext | None = None, *, allow_remote: bool = False
    ) -> str:
        """Listen on ``host:port`` (0 = ephemeral; HTTPS with ``ssl``) and return the bound base URL."""
        if self._runner is not None:
            raise RuntimeError(f"the {self._what} is already running")
        if not allow_remote and not is_loopback_host(host):
            raise ValueError(f"refusing to listen on non-loopback host {host!r} (pass allow_remote=True to do so)")
        self._starting()
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl, backlog=LISTEN_BACKLOG).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # The bound address, not the name: "localhost" with port 0 may bind 127.0.0.1 and ::1 on different ports.
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = format_url("https" if ssl is not None else "http", bound_host, bound_port)
        return self._url

    async def _add_site(self, host: str, port: int, ssl: ssl_module.SSLContext | None) -> str:
        """A second listener for the same app, on the host :meth:`_listen` was allowed; returns its base URL."""
        if self._runner is None:
            raise RuntimeError(f"the {self._what} is not running")
        before = list(self._runner.addresses)
        await web.TCPSite(self._runner, host, port, ssl_context=ssl, backlog=LISTEN_BACKLOG).start()
        bound_host, bound_port = next(a for a in self._runner.addresses if a not in before)[:2]
        return format_url("https" if ssl is not None else "http", bound_host, bound_port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"the {self._what} is not running")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self._runner is not None


class ServerThread[S: LoopbackServer]:
    """Runs a :class:`LoopbackServer` on its own event loop in a daemon thread (for sync code and tests whose
    loop is busy); ``start_server`` makes the coroutine that starts it with the caller's host, port and options."""

    def __init__(self, server: S, thread_name: str, start_server: Callable[[], Coroutine[Any, Any, str]]) -> None:
        self._server = server
        self._start_server = start_server
        self._thread = LoopThread(thread_name)

    def start(self) -> str:
        self._thread.start()
        try:
            return self._thread.run(self._start_server())
        except BaseException:
            self._thread.stop()
            raise

    def stop(self) -> None:
        if self._thread.running:
            self._thread.run(self._server.stop())
            self._thread.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port


async def serve_until_stopped(server: LoopbackServer, startup_line: str, out: TextIO | None = None) -> int:
    """Print the startup line, serve until SIGINT/SIGTERM, stop ``server``; returns the exit code (0).

    The handlers go in before the line is printed: a caller that signals as soon as it has read the line must get
    a clean stop, not the default action that kills the process.
    """
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopped.set)
    try:
        print(startup_line, file=out, flush=True)
        await stopped.wait()
    finally:
        await server.stop()
    return 0
