"""Key Vault-backed named values: fetched with the proxy's own identity, through the same ``TokenProvider`` as every
policy token, and refreshed on APIM's schedule (every four hours unless the overrides say otherwise).

The secret identifier (``https://<vault>.vault.azure.net/secrets/<name>[/<version>]``) is fetched with the Key Vault
REST API (``GET …?api-version=7.4`` → ``{"value": …}``) and a token for ``https://vault.azure.net`` of the named
value's ``identityClientId`` (empty: the system-assigned identity). The overrides may send a vault's requests to a
local stand-in (``key_vault: {url: …}``); nothing else is rewritten. Secret values never reach a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ...errors import ApimMiError
from ...tokens import TokenError, TokenKey

if TYPE_CHECKING:
    from ...tokens import TokenProvider
    from .model import NamedValueDef

log = logging.getLogger("apim_mi")

VAULT_RESOURCE = "https://vault.azure.net"
API_VERSION = "7.4"


class KeyVaultError(ApimMiError):
    """A Key Vault-backed named value could not be fetched; the message names it and why."""


def secret_url(identifier: str, endpoints: Mapping[str, str]) -> str:
    """The URL to fetch: the identifier itself, or its path on the stand-in the overrides name for its vault."""
    parts = urlsplit(identifier)
    base = endpoints.get((parts.hostname or "").lower()) or endpoints.get("*")
    if not base:
        return identifier
    b = urlsplit(base)
    return urlunsplit((b.scheme, b.netloc, b.path.rstrip("/") + parts.path, "", ""))


async def fetch(
    session: Any,
    tokens: TokenProvider,
    source: str,
    nv: NamedValueDef,
    endpoints: Mapping[str, str],
    timeout: float = 30.0,
) -> str:
    """One secret's current value."""
    import aiohttp

    url = secret_url(nv.key_vault, endpoints)
    try:
        token = (await tokens.get(TokenKey(source, nv.identity_client_id, VAULT_RESOURCE))).token.value
    except TokenError as e:
        raise KeyVaultError(f"named value '{nv.display_name}': no token for Key Vault: {e.message}") from None
    try:
        async with session.get(url, params={"api-version": API_VERSION}, headers={"Authorization": f"Bearer {token}"},
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:  # fmt: skip
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise KeyVaultError(f"named value '{nv.display_name}': {url}: {type(e).__name__}: {e}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if resp.status != 200 or not isinstance(data, dict) or not isinstance(data.get("value"), str):
        error = data.get("error", {}) if isinstance(data, dict) else {}
        detail = f"{error.get('code', '')}: {error.get('message', '')}" if isinstance(error, dict) else ""
        raise KeyVaultError(f"named value '{nv.display_name}': {url} answered {resp.status} {detail}".rstrip(": "))
    return str(data["value"])


async def fetch_all(
    tokens: TokenProvider, source: str, named: list[NamedValueDef], endpoints: Mapping[str, str]
) -> dict[str, str]:
    """Display name → value for every Key Vault-backed named value, fetched concurrently; the first failure
    raises ``KeyVaultError``."""
    import aiohttp

    async with aiohttp.ClientSession(trust_env=False) as session:  # never through a proxy
        values = await asyncio.gather(*(fetch(session, tokens, source, nv, endpoints) for nv in named))
    return {nv.display_name: v for nv, v in zip(named, values, strict=True)}


class KeyVaultValues:
    """Keeps an instance's Key Vault-backed named values fetched: once before the first request (single flight),
    then every ``refresh`` seconds. A failed refresh keeps the values it had (and says so); a failed first fetch
    is an error for every request of the instance until one succeeds."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        # only what a policy or backend uses: an unused secret that cannot be fetched must not stop the instance
        self.states = [s for s in instance.named.values() if s.origin == "key vault" and s.used_at is not None]
        self.fetched = not self.states
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def ensure(self, tokens: TokenProvider, source: str) -> None:
        if self.fetched:
            return
        async with self._lock:
            if self.fetched:
                return
            await self.refresh(tokens, source)
            self.fetched = True
            self._task = asyncio.get_running_loop().create_task(self._keep_fresh(tokens, source))

    async def refresh(self, tokens: TokenProvider, source: str) -> bool:
        """Fetches every secret; recompiles the policies (and backends) when a value changed."""
        ov = self.instance.overrides
        values = await fetch_all(tokens, source, [s.definition for s in self.states], ov.key_vault)
        changed = False
        for state in self.states:
            new = values[state.definition.display_name]
            changed |= state.value != new
            state.value = new
        if changed:
            self.instance.compile()
            self.instance.publish_backends()
        log.info("apim-mi: %d Key Vault named value(s) %s", len(self.states), "fetched" if changed else "unchanged")
        return changed

    async def _keep_fresh(self, tokens: TokenProvider, source: str) -> None:
        while True:
            await asyncio.sleep(self.instance.overrides.key_vault_refresh)
            try:
                await self.refresh(tokens, source)
            except (KeyVaultError, ApimMiError) as e:
                log.warning("apim-mi: Key Vault refresh failed, keeping the previous values: %s", e)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
