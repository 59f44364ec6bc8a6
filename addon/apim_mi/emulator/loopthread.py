"""An asyncio loop in a daemon thread, so sync code (and tests whose own loop is busy) can host async servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_WAIT = 30.0


class LoopThread:
    """Owns one event loop running in a daemon thread; every call into it waits for the result."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEFAULT_WAIT) -> T:
        """Run ``coro`` on the thread's loop and return its result."""
        loop = self._require_loop()
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = DEFAULT_WAIT) -> T:
        """Run a plain callable on the loop thread (state owned by the loop is only touched there)."""

        async def invoke() -> T:
            return fn(*args)

        return self.run(invoke(), timeout)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEFAULT_WAIT)
        self._loop = None
        self._thread = None

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self.running:
            raise RuntimeError(f"{self._name} is not running")
        return self._loop
