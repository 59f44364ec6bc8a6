"""The emulator hosted on its own event loop in a daemon thread (for sync code and subprocess-driven tests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import EmulatorConfig
from .faults import Fault
from .loopthread import LoopThread
from .server import Emulator, EmulatorStats, Protocol
from .tokens import SigningKey


class EmulatorThread:
    """``with EmulatorThread(config) as emu:`` runs an :class:`Emulator` outside the caller's event loop.

    Every accessor and control runs on the emulator's own loop, so it is safe to call from any thread.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        key: SigningKey | None = None,
    ) -> None:
        self._host, self._port, self._allow_remote = host, port, allow_remote
        self._emulator = Emulator(config, key=key)
        self._thread = LoopThread("apim-mi-emulator")

    def start(self) -> str:
        self._thread.start()
        try:
            return self._thread.run(self._emulator.start(self._host, self._port, allow_remote=self._allow_remote))
        except BaseException:
            self._thread.stop()
            raise

    def stop(self) -> None:
        if self._thread.running:
            self._thread.run(self._emulator.stop())
            self._thread.stop()

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def emulator(self) -> Emulator:
        """The hosted emulator; only touch it on its own loop (prefer the accessors below)."""
        return self._emulator

    @property
    def url(self) -> str:
        return self._emulator.url

    @property
    def port(self) -> int:
        return self._emulator.port

    @property
    def tenant_id(self) -> str:
        return self._emulator.tenant_id

    @property
    def identity_header(self) -> str:
        return self._emulator.identity_header

    @property
    def issuer(self) -> str:
        return self._emulator.issuer

    @property
    def jwks_uri(self) -> str:
        return self._emulator.jwks_uri

    @property
    def openid_configuration_url(self) -> str:
        return self._emulator.openid_configuration_url

    @property
    def config(self) -> EmulatorConfig:
        return self._thread.call(lambda: self._emulator.config)

    def env(self, protocol: Protocol = "imds") -> dict[str, str]:
        return self._emulator.env(protocol)

    def stats(self) -> EmulatorStats:
        return self._thread.call(self._emulator.stats)

    def token_requests(self, resource: str, client_id: str | None = None) -> int:
        return self.stats().count(resource, client_id)

    def add_faults(self, *faults: Fault | str | int | Mapping[str, Any]) -> list[Fault]:
        return self._thread.call(self._emulator.add_faults, *faults)

    def clear_faults(self) -> None:
        self._thread.call(self._emulator.clear_faults)

    def configure(self, **changes: Any) -> EmulatorConfig:
        return self._thread.call(lambda: self._emulator.configure(**changes))

    def reset(self) -> None:
        self._thread.call(self._emulator.reset)
