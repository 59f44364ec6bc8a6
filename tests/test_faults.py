"""The fault matrix: token-endpoint faults × ignore-error × cache state, with the real azure-identity client.

Each cell runs a shorthand rule's policy through the engine with a real ``TokenProvider`` whose azure-identity
credential talks to the emulator, which injects the fault. The outcome of every cell is asserted and is the table in
docs/reliability.md. Time is shifted (``time.time``) to put a cached token inside the refresh window without waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apim_mi.policy import engine
from apim_mi.policy.context import Context, Headers, Request, Url
from apim_mi.rules import load_rules_text
from apim_mi.tokens import TokenProvider, azure_credential_factory
from apim_mi.trace import Trace

MI_TIMEOUT = 1.5
_cells = itertools.count()

# fault → what a cold cache leads to ("token" = a valid token is injected, "fail" = no token)
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "500": ({"kind": "status", "status": 500}, "fail"),
    "503-retry-after": ({"kind": "status", "status": 503, "retry_after": 1}, "fail"),
    "429": ({"kind": "status", "status": 429, "retry_after": 1}, "fail"),
    "410": ({"kind": "status", "status": 410}, "fail"),
    "timeout": ({"kind": "timeout", "delay_ms": 30_000}, "fail"),
    "slow": ({"kind": "slow", "delay_ms": 400}, "token"),
    "drop": ({"kind": "drop"}, "fail"),
    "malformed": ({"kind": "malformed"}, "fail"),
    "empty": ({"kind": "empty"}, "fail"),
    "wrong-audience": ({"kind": "wrong_audience", "audience": "api://someone-else"}, "token"),
    "expired": ({"kind": "expired"}, "fail"),
}


class ShiftedClock:
    """``time.time`` plus an offset, for this process only (the emulator thread shares it, so both agree)."""

    def __init__(self) -> None:
        self.real = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[ShiftedClock]:
    c = ShiftedClock()
    monkeypatch.setattr(time, "time", c)
    yield c


@pytest.fixture
def imds(emu: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in emu.env("imds").items():
        monkeypatch.setenv(k, v)
    return emu


@dataclass
class Outcome:
    injected: bool
    status: int | None
    warnings: list[str]
    token_value: str = ""


def policy_for(resource: str, ignore_error: bool) -> Any:
    text = (
        f"rules:\n  - match: {{host: api.test}}\n    resource: {resource}\n"
        f"    ignore_error: {str(ignore_error).lower()}\n"
    )
    return load_rules_text(text, Path("faults.yaml")).rules[0].policy


async def run_once(provider: TokenProvider, policy: Any) -> Outcome:
    request = Request("GET", Url.parse("https://api.test/x"), Headers([("Host", "api.test")]))
    run = engine.PolicyRun(policy, Context(request=request), Trace("t"), engine.Services(provider, "managed-identity"))
    await engine.run_inbound(run)
    auth = request.headers.get("Authorization") or ""
    return Outcome(
        injected=auth.startswith("Bearer ") and run.response is None,
        status=run.response.status_code if run.response is not None else None,
        warnings=run.warnings,
        token_value=auth.removeprefix("Bearer "),
    )


async def recovers(provider: TokenProvider, policy: Any, within: float = 15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if (await run_once(provider, policy)).injected:
            return True
        await asyncio.sleep(0.25)
    return False


def new_provider() -> TokenProvider:
    return TokenProvider(azure_credential_factory(MI_TIMEOUT), timeout=MI_TIMEOUT, refresh_before=300)


@pytest.mark.parametrize("state", ["cold", "cached", "refresh-window"])
@pytest.mark.parametrize("ignore_error", [False, True], ids=["ignore-error=false", "ignore-error=true"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_matrix(imds: Any, clock: ShiftedClock, fault: str, ignore_error: bool, state: str) -> None:
    spec, cold_result = FAULTS[fault]
    resource = f"https://cell-{next(_cells)}.faults.test"
    policy = policy_for(resource, ignore_error)
    provider = new_provider()
    try:
        if state != "cold":
            primed = await run_once(provider, policy)
            assert primed.injected
            if state == "refresh-window":
                clock.offset = 3600 - 200  # inside our window and azure-identity's, 30 s past its last request
        imds.add_faults({**spec, "resource": resource, "times": None})
        out = await run_once(provider, policy)
        expected = cold_result if state == "cold" else "token"
        if expected == "token":
            assert out.injected, f"{fault}/{state}: expected a token"
            assert out.status is None
        elif ignore_error:
            assert not out.injected and out.status is None  # forwarded unchanged, never with a bad token
        else:
            assert out.status == 500 and not out.injected  # fail closed: APIM's 500, nothing forwarded
        if fault == "wrong-audience" and state == "cold":
            assert any("audience" in w for w in out.warnings)

        # Recovery is automatic once the endpoint behaves again (a fetch still inside azure-identity's retry
        # backoff, e.g. 5 s for a 410, is joined by new requests until it ends).
        imds.clear_faults()
        clock.offset += 60
        assert await recovers(provider, policy)
    finally:
        await provider.close()


async def test_connection_refused_fails_closed(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
    provider = new_provider()
    try:
        closed = await run_once(provider, policy_for("https://refused.test", False))
        lenient = await run_once(provider, policy_for("https://refused.test", True))
    finally:
        await provider.close()
    assert closed.status == 500 and not closed.injected
    assert lenient.status is None and not lenient.injected


async def test_emulator_restart_mid_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached token outlives the endpoint going away; new keys fail closed meanwhile; all recovers after."""
    from apim_mi.emulator import EmulatorThread

    first = EmulatorThread()
    first.start()
    port = first.port
    for k, v in first.env("imds").items():
        monkeypatch.setenv(k, v)
    provider = new_provider()
    try:
        assert (await run_once(provider, policy_for("https://a.restart.test", False))).injected
        first.stop()
        assert (await run_once(provider, policy_for("https://a.restart.test", False))).injected
        assert (await run_once(provider, policy_for("https://b.restart.test", False))).status == 500
        second = EmulatorThread(port=port)
        second.start()
        try:
            assert (await run_once(provider, policy_for("https://b.restart.test", False))).injected
        finally:
            second.stop()
    finally:
        await provider.close()
