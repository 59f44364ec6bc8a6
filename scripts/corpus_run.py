"""``scripts/corpus.py --run``: every loadable whole policy of the snippet corpus runs one request through the real
engine, backend call included.

Each ``<policies>`` file is loaded with the real expression compiler (a file whose C# does not parse is not
loadable, as APIM refuses to save it), composed with APIM's default global policy, and run against the synthesized
context ``scripts/corpus.py`` builds for it (the headers, query parameters, JSON members and claims it reads). Every
HTTP exchange the run makes (send-request, send-one-way-request, the backend call, OpenID discovery) goes to one
loopback aiohttp server that answers 200 with a JSON body holding the members the policy reads; nothing leaves
127.0.0.1. Tokens come from a stand-in provider (no Azure), time from a fake clock (retry intervals do not sleep).

A policy *runs* when the engine answers the request (itself, or through the backend and outbound) without reaching a
policy it does not support and without an internal error. A run that ends in on-error because a policy failed (an
expression throwing on the synthesized data, a rejected JWT) still ran; those are listed with their reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from apim_mi.errors import LoadError
from apim_mi.policy import context as ctxmod
from apim_mi.policy import engine
from apim_mi.policy.gateway import GatewayState
from apim_mi.policy.loader import DEFAULT_GLOBAL, compose, load_policy_text
from apim_mi.policy.statements.http import default_send
from apim_mi.tokens import Token, TokenResult
from apim_mi.trace import Trace

UNSUPPORTED = "PolicyNotSupported"
PER_POLICY_TIMEOUT = 30.0


@dataclass
class RunReport:
    policies: int = 0  # whole policies (<policies> documents) in the corpus
    loadable: int = 0
    ran: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    stopped: list[dict[str, str]] = field(default_factory=list)  # did not run: unsupported policy, crash, hang
    failed: list[dict[str, str]] = field(default_factory=list)  # ran, ended in on-error: which policy, why
    not_loadable: list[dict[str, str]] = field(default_factory=list)

    def percent(self) -> str:
        return f"{self.ran}/{self.loadable} ({100.0 * self.ran / self.loadable:.1f}%)" if self.loadable else "0/0"


class _Tokens:
    """A token provider standing in for azure-identity: a JWT-shaped token whose audience is the resource."""

    def __init__(self, cs: ModuleType) -> None:
        self.cs = cs

    async def get(self, key: Any) -> TokenResult:
        now = time.time()
        claims = {"aud": key.resource, "appid": "00000000-0000-0000-0000-0000000000a2",
                  "tid": "00000000-0000-0000-0000-0000000000c1", "exp": int(now) + 3600}  # fmt: skip
        return TokenResult(Token(self.cs.JWT, now + 3600, now, claims), cached=False)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Backend:
    """The one loopback server every exchange of a run goes to; answers with the JSON the current policy reads."""

    def __init__(self) -> None:
        self.body: bytes = b"{}"
        self.headers: list[tuple[str, str]] = []
        self.port = 0
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def answer(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=self.body, headers=dict(self.headers), content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None, timeout: float,
                   **_: Any) -> ctxmod.Response:  # fmt: skip
        """Any URL, sent to the loopback server instead (proxy and client certificate options are dropped)."""
        parts = urlsplit(url)
        local = f"http://127.0.0.1:{self.port}/{parts.hostname or 'host'}{parts.path or '/'}"
        local += f"?{parts.query}" if parts.query else ""
        return await default_send(method, local, headers, body, min(timeout, 10.0))


def execute(cs: ModuleType, corpus: Path) -> RunReport:
    """Runs every loadable whole policy of ``corpus``; ``cs`` is scripts/corpus.py (its context synthesis)."""
    return asyncio.run(_execute(cs, corpus))


async def _execute(cs: ModuleType, corpus: Path) -> RunReport:
    report = RunReport()
    backend = _Backend()
    await backend.start()
    try:
        for path in cs.policy_files(corpus):
            text = path.read_text("utf-8-sig")
            if cs.root_name(text) != "policies":
                continue
            report.policies += 1
            display = str(path.relative_to(corpus))
            policy = _load(cs, text, display, path)
            if isinstance(policy, str):
                report.not_loadable.append({"file": display, "error": policy})
                continue
            report.loadable += 1
            await _run_one(cs, report, backend, display, path, policy)
    finally:
        await backend.stop()
    return report


def _load(cs: ModuleType, text: str, display: str, path: Path) -> Any:
    """The composed policy, or why it does not load (real compiler: unparsable C# is a load error, as in APIM)."""
    error = ""
    for named in (cs.AutoNamedValues(), cs.AutoNamedValues(plain=True)):
        try:
            inner = load_policy_text(text, source=display, named_values=named, fragments_dir=path.parent)
            return compose(DEFAULT_GLOBAL, inner)
        except LoadError as e:
            error = str(e)
    return error


async def _run_one(cs: ModuleType, report: RunReport, backend: _Backend, display: str, path: Path,
                   policy: Any) -> None:  # fmt: skip
    statements = policy.statements()
    hints = cs._Hints.of(path, statements)
    context = cs._synthesized_context(ctxmod, hints)
    context.response = None
    context.last_error = None
    backend.body = json.dumps({"ok": True, **hints.json_body()}).encode()
    backend.headers = [(k, v) for k, v in hints.header_pairs([]) if k.lower() not in ("content-length", "host")]
    clock = _Clock()
    state = GatewayState(clock=clock, sleep=clock.sleep)
    services = engine.Services(_Tokens(cs), "emulator", send=backend.send, settings={"backends": {}}, state=state)  # type: ignore[arg-type]
    run = engine.PolicyRun(policy, context, Trace(display), services, rule_name=display)
    try:
        await asyncio.wait_for(_request(run, backend), PER_POLICY_TIMEOUT)
    except TimeoutError:
        report.stopped.append({"file": display, "why": f"no answer within {PER_POLICY_TIMEOUT:g} s"})
        return
    except Exception as e:  # an internal error is a defect of apim-mi: listed, never hidden
        report.stopped.append({"file": display, "why": f"crash: {type(e).__name__}: {e}"})
        return
    unsupported = _unsupported(run)
    if unsupported:
        report.stopped.append({"file": display, "why": unsupported})
        return
    report.ran += 1
    status = run.response.status_code if run.response is not None else 0
    report.statuses[status] = report.statuses.get(status, 0) + 1
    if run.error is not None:
        report.failed.append({"file": display, "source": run.error.source, "reason": run.error.reason,
                              "message": run.error.message[:200]})  # fmt: skip


async def _request(run: engine.PolicyRun, backend: _Backend) -> None:
    """What the proxy does with a flow: inbound (+ backend); when it would forward, the backend call and outbound."""
    await engine.run_inbound(run)
    if run.response is None and run.forward:
        request = run.context.request
        body = request.body.content if request.body is not None else None
        run.context.response = await backend.send(request.method, str(request.url), request.headers.pairs(), body,
                                                  run.forward_timeout)  # fmt: skip
        await engine.run_outbound(run)
        run.response = run.response or run.context.response
    engine.finish(run)
    if run.services.state.tasks:
        await asyncio.gather(*run.services.state.tasks, return_exceptions=True)


def _unsupported(run: engine.PolicyRun) -> str:
    """The first "not supported" anywhere in the run (also inside on-error, which swallows its own failures)."""
    if run.error is not None and run.error.reason == UNSUPPORTED:
        return run.error.message
    for section in run.trace.entries.values():
        for entry in section:
            message = str(entry.get("data", {}).get("message", ""))
            if "is not supported by apim-mi" in message:
                return message
    return ""


def print_report(report: RunReport) -> None:
    print(f"policies that run: {report.percent()} of the loadable whole policies ({report.policies} in the corpus)")
    for f in report.not_loadable:
        print(f"  not loadable: {f['error']}")
    for s in report.stopped:
        print(f"  STOPPED {s['file']}: {s['why']}")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items()))
    print(f"  answers by status: {statuses}")
    for f in report.failed:
        print(f"  ran into on-error: {f['file']}: {f['source']} {f['reason']}: {f['message']}")
