"""Helpers shared by the emulator and backend tests: environment isolation, raw token fetches, loop hygiene."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import pytest
from apim_mi.emulator import MANAGED_IDENTITY_ENV_VARS, Emulator, EmulatorConfig, SigningKey

Protocol = Literal["imds", "appservice"]

USER_CLIENT_ID = "11111111-1111-1111-1111-111111111111"
USER_OBJECT_ID = "11111111-0000-4000-8000-0000000000b1"
SYSTEM_CLIENT_ID = "5ca1ab1e-0000-4000-8000-00000000000a"
SYSTEM_OBJECT_ID = "5ca1ab1e-0000-4000-8000-00000000000b"
DEMO_AUDIENCE = "api://00000000-0000-0000-0000-00000000a11c"

#: azure-identity settings that keep retry tests fast (the IMDS default backoff is 0.8 s, 1.6 s, …).
FAST: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.01, "connection_timeout": 2, "read_timeout": 5}


def use_emulator(monkeypatch: pytest.MonkeyPatch, emu: Any, protocol: Protocol = "imds") -> None:
    """Delete every managed-identity variable (never set to ""), then point azure-identity at ``emu``."""
    for name in MANAGED_IDENTITY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in emu.env(protocol).items():
        monkeypatch.setenv(name, value)


async def raw_token(
    emu: Emulator, resource: str, *, protocol: Protocol = "imds", headers: dict[str, str] | None = None,
    **params: str,
) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    """(status, headers, JSON body or None) of one token request sent by hand, with the protocol's header."""
    if protocol == "imds":
        url = f"{emu.url}/metadata/identity/oauth2/token"
        query = {"api-version": "2018-02-01", "resource": resource, **params}
        sent = {"Metadata": "true"}
    else:
        url = f"{emu.url}/msi/token"
        query = {"api-version": "2019-08-01", "resource": resource, **params}
        sent = {"X-IDENTITY-HEADER": emu.identity_header}
    sent.update(headers or {})
    async with aiohttp.ClientSession(trust_env=False) as session, session.get(url, params=query, headers=sent) as resp:
        text = await resp.text()
        body = await resp.json(content_type=None) if text else None
        return resp.status, dict(resp.headers), body


async def get_json(url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession(trust_env=False) as session, session.get(url, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def post_json(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(trust_env=False) as session, session.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def running_emulator(config: EmulatorConfig | None, key: SigningKey) -> AsyncIterator[Emulator]:
    """An emulator on 127.0.0.1:0 whose loop reports no unclosed sessions or stray exceptions at teardown."""
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(str(context.get("message"))))
    emu = Emulator(config or EmulatorConfig(), key=key)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
        gc.collect()
        await asyncio.sleep(0)
        loop.set_exception_handler(None)
    assert not problems, f"event loop reported: {problems}"
