"""Managed-identity tokens: azure-identity's async credentials behind a cache that adds what they lack.

azure-identity acquires the tokens (never hand-rolled). This module adds, per (source, identity, resource):
single-flight (N concurrent requests on a cold key → 1 token request), background refresh before expiry while the
valid token keeps being served, keep-last-good until the real expiry when refreshes fail, a bounded wait
(``timeout``), and counters for ``mi.status``. A token is never handed out within ``EXPIRY_SKEW`` of its expiry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .credentials import ASSERTION_SOURCE, CredentialSpec, app_credential
from .errors import ApimMiError

log = logging.getLogger(__name__)

SYSTEM_IDENTITY = ""
EXPIRY_SKEW = 1.0
MAX_REFRESH_BACKOFF = 30.0
SOURCES: tuple[str, ...] = ("default", "managed-identity", "workload-identity", "azure-cli", "emulator")


class AsyncCredential(Protocol):
    """The part of azure-identity's async ``TokenCredential`` we use."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...

    async def close(self) -> None: ...


#: ``(source, client id)`` → credential; for a ``managed-identity-fic`` source a third argument, the coroutine
#: function that returns the managed identity's assertion token.
CredentialFactory = Callable[..., AsyncCredential]


class TokenKey(NamedTuple):
    """Cache key. ``resource`` is kept exactly as written: ``X`` and ``X/`` are different audiences.

    ``source`` is a credential source name, or an app registration's :class:`CredentialSpec` (then ``client_id`` is
    the managed identity whose token is the federated assertion, if any). A tuple: hashed and compared in C, since
    every request looks one up."""

    source: str | CredentialSpec
    client_id: str
    resource: str

    @property
    def identity(self) -> str:
        if isinstance(self.source, CredentialSpec):
            via = f" via {self.client_id or 'system-assigned'}" if self.source.federated else ""
            return f"app {self.source.client_id}{via}"
        return self.client_id or "system-assigned"

    @property
    def assertion(self) -> TokenKey | None:
        """The first step of a federated credential: the managed identity's token for the exchange audience."""
        if isinstance(self.source, CredentialSpec) and self.source.federated:
            return TokenKey(ASSERTION_SOURCE, self.client_id, self.source.audience)
        return None


def token_key(source: str | CredentialSpec, client_id: str, resource: str) -> TokenKey:
    """The cache key for a policy's ``client-id`` and ``resource`` under ``source``: for an app registration the
    client id names the managed identity of a federated credential (the spec's unless the policy names one), and
    nothing for a secret or certificate."""
    if isinstance(source, CredentialSpec):
        client_id = source.managed_identity(client_id) if source.federated else ""
    return TokenKey(source, client_id, resource)


@dataclass(frozen=True)
class Token:
    """An access token and what may be shown of it. ``repr`` never contains the secret."""

    value: str = field(repr=False)
    expires_on: float
    acquired_at: float
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def lifetime(self) -> float:
        return max(self.expires_on - self.acquired_at, 0.0)


class TokenError(ApimMiError):
    """No token could be obtained. ``error_response`` is the token endpoint's error JSON when there was one."""

    def __init__(
        self, key: TokenKey, message: str, *, reason: str = "", error_response: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.reason = reason
        self.error_response = error_response


@dataclass(slots=True)
class TokenResult:
    """What a caller gets: the token, and whether it came from the cache (for the trace)."""

    token: Token
    cached: bool


def token_claims(token: str) -> dict[str, Any]:
    """The JWT's payload, decoded without verification, keeping only claims that are safe to show."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    keep = ("aud", "iss", "tid", "appid", "azp", "oid", "sub", "idtyp", "iat", "nbf", "exp", "xms_mirid")
    return {k: data[k] for k in keep if k in data}


_AADSTS = re.compile(r"AADSTS\d+")


def describe_error(exc: BaseException) -> tuple[str, str, dict[str, Any] | None]:
    """(message, reason, error JSON) for a credential failure, without any secret in it."""
    message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    message = message.splitlines()[0] if len(message) > 2000 else message
    response = getattr(exc, "response", None)
    body: dict[str, Any] | None = None
    if response is not None:
        with contextlib.suppress(Exception):
            parsed = json.loads(response.text())
            if isinstance(parsed, dict):
                parsed.pop("access_token", None)
                body = parsed
    m = _AADSTS.search(message) or (_AADSTS.search(json.dumps(body)) if body else None)
    reason = m.group(0) if m else type(exc).__name__
    return message, reason, body


@dataclass
class _Entry:
    token: Token | None = None
    flight: asyncio.Task[Token] | None = None
    refresh: asyncio.Task[None] | None = None
    next_refresh: float = 0.0
    refresh_failures: int = 0
    hits: int = 0
    last_error: str = ""
    #: (token, refresh_before, when its refresh is due): worked out once per token and setting, asked on every hit
    due: tuple[Token, float, float] | None = None


class TokenProvider:
    """Hands out tokens per ``TokenKey``; owns one credential per (source, client id) and closes them."""

    def __init__(
        self,
        credential_factory: CredentialFactory,
        *,
        timeout: float = 10.0,
        refresh_before: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._factory = credential_factory
        self.timeout = timeout
        self.refresh_before = refresh_before
        self._clock = clock
        self._credentials: dict[tuple[str | CredentialSpec, str], AsyncCredential] = {}
        self._entries: dict[TokenKey, _Entry] = {}
        self.counters: Counter[str] = Counter()

    # -- public -------------------------------------------------------------------------------------------------

    def cached(self, key: TokenKey, audience: str | None = None) -> Token | None:
        """The cached token for ``key`` while it may be handed out, else None; handed out, it is a cache hit, counted,
        and a background refresh starts when it is due. With
        ``audience``, only a token whose ``aud`` claim is that audience (or that has none) is handed out."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or (token := entry.token) is None or now >= token.expires_on - EXPIRY_SKEW:
            return None
        if audience is not None and (aud := token.claims.get("aud")) and aud != audience:
            return None
        entry.hits += 1
        self.counters["cache_hits"] += 1
        due = entry.due
        if due is None or due[0] is not token or due[1] != self.refresh_before:
            due = entry.due = (token, self.refresh_before, self._refresh_at(token))
        if now >= due[2] and now >= entry.next_refresh and entry.refresh is None:
            entry.refresh = asyncio.get_running_loop().create_task(self._refresh(key, entry))
        return token

    async def get(self, key: TokenKey) -> TokenResult:
        """A valid token for ``key``: cached, or fetched once for all concurrent callers, within ``timeout``."""
        token = self.cached(key)
        if token is not None:
            return TokenResult(token, cached=True)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries.setdefault(key, _Entry())
        if entry.flight is None:
            entry.flight = asyncio.get_running_loop().create_task(self._fetch(key, entry))
            entry.flight.add_done_callback(_retrieve)
        try:
            token = await asyncio.wait_for(asyncio.shield(entry.flight), self.timeout)
        except TimeoutError:
            self.counters["fetch_failures.timeout"] += 1
            raise TokenError(
                key, f"no token from {key.source} within {self.timeout:g} s (mi_timeout)", reason="Timeout"
            ) from None
        return TokenResult(token, cached=False)

    def status(self) -> list[dict[str, Any]]:
        """Cached tokens for ``mi.status``: identity, resource, expiry, source, hits — never the token."""
        now = self._clock()
        out = []
        for key, e in self._entries.items():
            if e.token is None and not e.last_error:
                continue
            row: dict[str, Any] = {
                "source": str(key.source),
                "identity": key.identity,
                "resource": key.resource,
                "hits": e.hits,
            }
            if e.token is not None:
                row["expires_in_s"] = round(e.token.expires_on - now, 1)
                row["expires_on"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.token.expires_on))
                row["aud"] = e.token.claims.get("aud", "")
            if e.last_error:
                row["last_error"] = e.last_error
            out.append(row)
        return out

    def flush(self) -> int:
        """Forget every cached token (in-flight fetches finish for their waiters); returns how many were dropped."""
        n = sum(1 for e in self._entries.values() if e.token is not None)
        for e in self._entries.values():
            if e.refresh is not None:
                e.refresh.cancel()
        self._entries.clear()
        return n

    async def close(self) -> None:
        """Cancel background work and close every credential (no 'Unclosed client session' warnings)."""
        tasks = [t for e in self._entries.values() for t in (e.flight, e.refresh) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        creds, self._credentials = list(self._credentials.values()), {}
        for cred in creds:
            with contextlib.suppress(Exception):
                await cred.close()

    # -- internals ----------------------------------------------------------------------------------------------

    def _refresh_at(self, token: Token) -> float:
        """``refresh_before`` seconds before the token stops being handed out, but never in the first 90 % of a
        short token's life (so a 60 s token is not refreshed on every request)."""
        return token.expires_on - EXPIRY_SKEW - min(self.refresh_before, token.lifetime * 0.1)

    def _credential(self, key: TokenKey) -> AsyncCredential:
        ck = (key.source, key.client_id)
        cred = self._credentials.get(ck)
        if cred is None:
            first = key.assertion
            if first is None:
                cred = self._factory(key.source, key.client_id)
            else:
                cred = self._factory(key.source, key.client_id, self._assertion(first))
            self._credentials[ck] = cred
        return cred

    def _assertion(self, first: TokenKey) -> Callable[[], Awaitable[str]]:
        """The federated assertion comes through this provider too: cached, single-flight, refreshed."""

        async def token() -> str:
            return (await self.get(first)).token.value

        return token

    async def _acquire(self, key: TokenKey) -> Token:
        value, expires_on = await self._call_credential(key)
        now = self._clock()
        if value and now < expires_on <= now + EXPIRY_SKEW:
            # azure-identity's own cache handed back its expiring token (it does not re-fetch within 30 s of its
            # last request while the token is valid, which matters for short emulator lifetimes): once that token
            # has expired, azure-identity must fetch a new one.
            await asyncio.sleep(expires_on - now + 0.05)
            value, expires_on = await self._call_credential(key)
            now = self._clock()
        if not value or expires_on <= now + EXPIRY_SKEW:
            self.counters["fetch_failures.invalid_token"] += 1
            raise TokenError(
                key, "the token endpoint returned an empty or already expired token", reason="InvalidToken"
            )
        return Token(value=value, expires_on=expires_on, acquired_at=now, claims=token_claims(value))

    async def _call_credential(self, key: TokenKey) -> tuple[str, float]:
        self.counters["token_requests"] += 1
        try:
            access = await self._credential(key).get_token(_scope(key.resource))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message, reason, body = describe_error(exc)
            self.counters[f"fetch_failures.{reason}"] += 1
            raise TokenError(key, message, reason=reason, error_response=body) from None
        return str(getattr(access, "token", "") or ""), float(getattr(access, "expires_on", 0) or 0)

    async def _fetch(self, key: TokenKey, entry: _Entry) -> Token:
        try:
            token = await self._acquire(key)
        except TokenError as e:
            entry.last_error = f"{e.reason}: {e.message}"[:300]
            raise
        finally:
            entry.flight = None
        entry.token, entry.last_error, entry.refresh_failures, entry.next_refresh = token, "", 0, 0.0
        return token

    async def _refresh(self, key: TokenKey, entry: _Entry) -> None:
        """Background refresh: on failure keep the current token and back off; never raise."""
        try:
            current = entry.token
            token = await self._acquire(key)
            if current is not None and token.expires_on <= current.expires_on:
                entry.next_refresh = self._clock() + min(MAX_REFRESH_BACKOFF, max(current.lifetime * 0.05, 1.0))
                return
            entry.token, entry.last_error, entry.refresh_failures = token, "", 0
            self.counters["refreshes"] += 1
        except TokenError as e:
            entry.refresh_failures += 1
            entry.last_error = f"{e.reason}: {e.message}"[:300]
            entry.next_refresh = self._clock() + min(MAX_REFRESH_BACKOFF, 2.0 ** (entry.refresh_failures - 1))
            self.counters["refresh_failures"] += 1
            log.warning(
                "apim-mi: background refresh of %s token for %s failed (%s); keeping the current token until expiry",
                key.identity,
                key.resource,
                e.reason,
            )
        finally:
            entry.refresh = None


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a flight's exception as seen: its waiters may all have timed out already."""
    if not task.cancelled():
        task.exception()


def _scope(resource: str) -> str:
    """azure-identity strips exactly one ``/.default``; appending it keeps the resource byte for byte."""
    return resource + "/.default"


def azure_credential_factory(
    timeout: float, *, authority: str | None = None, connection_verify: str | None = None
) -> CredentialFactory:
    """Builds azure-identity async credentials, bounded so no call outlives ``timeout`` by much.

    ``authority`` and ``connection_verify`` (a CA bundle) go to the app-registration credentials only (Entra's
    token endpoint: the embedded emulator's HTTPS listener); unset, azure-identity reads ``AZURE_AUTHORITY_HOST``.

    ``use_env_settings=False`` keeps the credential's own traffic off any ``HTTP(S)_PROXY`` the process inherited,
    so the proxy never routes its token requests through itself. azure-identity is imported here, when the factory
    is built at startup, not on the first token request (about 70 ms that every cold-start request would wait).
    """
    from azure.identity import aio

    def make(
        source: str | CredentialSpec, client_id: str, assertion: Callable[[], Awaitable[str]] | None = None
    ) -> AsyncCredential:
        common: dict[str, Any] = {
            "connection_timeout": min(timeout, 5.0),
            "read_timeout": timeout,
            "retry_total": 2,
            "retry_backoff_factor": 0.4,
            "use_env_settings": False,
        }
        if isinstance(source, CredentialSpec):
            entra = {"authority": authority, "connection_verify": connection_verify}
            return app_credential(source, assertion, **common, **{k: v for k, v in entra.items() if v})
        cid = client_id or None
        if source in ("managed-identity", "emulator"):
            return aio.ManagedIdentityCredential(client_id=cid, **common)
        if source == "workload-identity":
            return aio.WorkloadIdentityCredential(**({"client_id": cid} if cid else {}), **common)
        if source == "azure-cli":
            return aio.AzureCliCredential(process_timeout=max(int(timeout), 1))
        if source == "default":
            return aio.DefaultAzureCredential(managed_identity_client_id=cid, **common)
        raise ValueError(f"unknown credential source '{source}' (allowed: {', '.join(SOURCES)})")

    return make
