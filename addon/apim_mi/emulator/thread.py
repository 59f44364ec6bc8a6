"""The emulator hosted on its own event loop in a daemon thread (for sync code and subprocess-driven tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .config import EmulatorConfig
from .faults import Fault
from .server import Emulator, EmulatorStats, Protocol
from .serving import ServerThread
from .tokens import SigningKey


class EmulatorThread(ServerThread[Emulator]):
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
        https_port: int | None = None,
    ) -> None:
        emulator = Emulator(config, key=key)
        super().__init__(
            emulator,
            "apim-mi-emulator",
            lambda: emulator.start(host, port, allow_remote=allow_remote, https_port=https_port),
        )

    @property
    def emulator(self) -> Emulator:
        """The hosted emulator; only touch it on its own loop (prefer the accessors below)."""
        return self._server

    @property
    def tenant_id(self) -> str:
        return self._server.tenant_id

    @property
    def identity_header(self) -> str:
        return self._server.identity_header

    @property
    def issuer(self) -> str:
        return self._server.issuer

    @property
    def jwks_uri(self) -> str:
        return self._server.jwks_uri

    @property
    def openid_configuration_url(self) -> str:
        return self._server.openid_configuration_url

    @property
    def authority_url(self) -> str:
        return self._server.authority_url

    @property
    def ca_pem(self) -> bytes:
        return self._server.ca_pem

    def token_endpoint(self, tenant: str | None = None) -> str:
        return self._server.token_endpoint(tenant)

    def workload_identity_env(self, directory: str | os.PathLike[str]) -> dict[str, str]:
        return self._thread.call(self._server.workload_identity_env, directory)

    @property
    def config(self) -> EmulatorConfig:
        return self._thread.call(lambda: self._server.config)

    def env(self, protocol: Protocol = "imds") -> dict[str, str]:
        return self._server.env(protocol)

    def stats(self) -> EmulatorStats:
        return self._thread.call(self._server.stats)

    def token_requests(self, resource: str, client_id: str | None = None) -> int:
        return self.stats().count(resource, client_id)

    def add_faults(self, *faults: Fault | str | int | Mapping[str, Any]) -> list[Fault]:
        return self._thread.call(self._server.add_faults, *faults)

    def clear_faults(self) -> None:
        self._thread.call(self._server.clear_faults)

    def configure(self, **changes: Any) -> EmulatorConfig:
        return self._thread.call(lambda: self._server.configure(**changes))

    def reset(self) -> None:
        self._thread.call(self._server.reset)
