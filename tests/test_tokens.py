"""TokenProvider cache semantics with a scripted credential and a controllable clock.

The end-to-end tests prove the same properties with the real azure-identity against the emulator; here the timing
cases (refresh window, keep-last-good, expiry) are made deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from apim_mi.tokens import TokenError, TokenKey, TokenProvider, token_claims

KEY = TokenKey("emulator", "", "api://app")


def jwt(aud: str, exp: int) -> str:
    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'RS256'})}.{enc({'aud': aud, 'exp': exp, 'appid': 'x'})}.c2ln"


@dataclass
class AccessToken:
    token: str
    expires_on: int


@dataclass
class ScriptedCredential:
    """Answers from a script: a lifetime (int) issues a token, an Exception raises; each call is counted."""

    clock: Any
    script: list[int | Exception] = field(default_factory=list)
    delay: float = 0.0
    calls: int = 0
    closed: bool = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        await asyncio.sleep(self.delay)
        step = self.script.pop(0) if self.script else 3600
        if isinstance(step, Exception):
            raise step
        exp = int(self.clock.now) + step
        return AccessToken(jwt(scopes[0].removesuffix("/.default"), exp), exp)

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def provider(cred: ScriptedCredential, clock: Clock, **kw: Any) -> TokenProvider:
    return TokenProvider(lambda source, cid: cred, clock=clock, **kw)


async def test_single_flight_on_cold_cache() -> None:
    clock = Clock()
    cred = ScriptedCredential(clock, delay=0.05)
    p = provider(cred, clock)
    results = await asyncio.gather(*(p.get(KEY) for _ in range(50)))
    assert cred.calls == 1
    assert len({r.token.value for r in results}) == 1
    assert [r.cached for r in results].count(False) == 50
    assert (await p.get(KEY)).cached
    assert token_claims(results[0].token.value)["aud"] == "api://app"
    await p.close()
    assert cred.closed


async def test_a_hit_for_an_audience_is_counted_only_when_the_token_is_for_it() -> None:
    """What the fast path asks: the cached token, only if its aud is the resource (else the engine path fetches and
    warns, and counts the hit there, once)."""
    clock = Clock()
    p = provider(ScriptedCredential(clock), clock)
    assert p.cached(KEY, "api://app") is None  # nothing cached yet: nothing counted
    token = (await p.get(KEY)).token
    hits = p.counters["cache_hits"]
    assert p.cached(KEY, "api://other") is None and p.counters["cache_hits"] == hits
    assert p.cached(KEY, "api://app") is token and p.counters["cache_hits"] == hits + 1
    assert p.cached(KEY) is token and p.counters["cache_hits"] == hits + 2
    assert TokenKey("emulator", "", "api://app") == KEY and hash(TokenKey("emulator", "", "api://app")) == hash(KEY)
    clock.now = token.expires_on
    assert p.cached(KEY, "api://app") is None and p.cached(KEY) is None
    await p.close()


async def test_background_refresh_serves_the_valid_token_meanwhile() -> None:
    clock = Clock()
    cred = ScriptedCredential(clock, script=[3600, 3600], delay=0.05)
    p = provider(cred, clock, refresh_before=300)
    first = (await p.get(KEY)).token
    clock.now += 3600 - 200  # inside the refresh window
    served = await p.get(KEY)
    assert served.cached and served.token == first  # nobody waits for the refresh
    await asyncio.sleep(0.1)
    assert cred.calls == 2
    assert (await p.get(KEY)).token.expires_on > first.expires_on
    await p.close()


async def test_failed_refresh_keeps_last_good_token_until_expiry() -> None:
    clock = Clock()
    boom = RuntimeError("IMDS 503")
    cred = ScriptedCredential(clock, script=[3600, boom, boom, boom, boom])
    p = provider(cred, clock, refresh_before=300)
    token = (await p.get(KEY)).token
    clock.now += 3400
    for _ in range(3):
        assert (await p.get(KEY)).token == token
        await asyncio.sleep(0.01)
        clock.now += 5
    assert p.counters["refresh_failures"] >= 1
    clock.now = token.expires_on  # expired: never handed out again
    with pytest.raises(TokenError):
        await p.get(KEY)
    await p.close()


async def test_timeout_is_bounded_and_the_flight_is_reused() -> None:
    clock = Clock()
    cred = ScriptedCredential(clock, delay=0.3)
    p = provider(cred, clock, timeout=0.05)
    with pytest.raises(TokenError, match=r"within 0\.05 s"):
        await p.get(KEY)
    await asyncio.sleep(0.35)
    assert (await p.get(KEY)).token.value  # the first flight finished and filled the cache
    assert cred.calls == 1
    await p.close()


async def test_error_carries_reason_and_no_token() -> None:
    clock = Clock()
    cred = ScriptedCredential(clock, script=[ValueError("AADSTS500011: The resource principal named x was not found")])
    p = provider(cred, clock)
    with pytest.raises(TokenError) as info:
        await p.get(KEY)
    assert info.value.reason == "AADSTS500011"
    status = json.loads(json.dumps(p.status()))
    assert status[0]["last_error"].startswith("AADSTS500011")
    await p.close()


async def test_empty_or_expired_token_is_an_error() -> None:
    clock = Clock()
    cred = ScriptedCredential(clock, script=[0])
    p = provider(cred, clock)
    with pytest.raises(TokenError, match="empty or already expired"):
        await p.get(KEY)
    await p.close()


async def test_status_and_flush_never_show_the_token() -> None:
    clock = Clock()
    cred = ScriptedCredential(clock)
    p = provider(cred, clock)
    token = (await p.get(KEY)).token
    text = json.dumps(p.status())
    assert token.value not in text and "api://app" in text
    assert token.value not in repr(token)
    assert p.flush() == 1 and p.status() == []
    await p.close()


async def test_expiring_token_from_the_credentials_own_cache_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-identity may hand back its cached token seconds before expiry; the provider waits it out once."""
    clock = Clock()
    cred = ScriptedCredential(clock, script=[3600])
    p = provider(cred, clock)
    first = (await p.get(KEY)).token
    clock.now = first.expires_on - 0.5  # our copy is past the skew: a fetch is due

    async def stale_then_fresh(*scopes: str, **kw: Any) -> AccessToken:
        cred.calls += 1
        if cred.calls == 2:
            return AccessToken(first.value, int(first.expires_on))
        exp = int(clock.now) + 3600
        return AccessToken(jwt("api://app", exp), exp)

    cred.get_token = stale_then_fresh  # type: ignore[method-assign]
    loop_sleep = asyncio.sleep

    async def fast_sleep(seconds: float) -> None:
        clock.now += seconds
        await loop_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fast_sleep)
    fresh = (await p.get(KEY)).token
    monkeypatch.undo()
    assert cred.calls == 3 and fresh.expires_on > first.expires_on
    await p.close()
