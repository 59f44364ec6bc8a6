# ruff: noqa: E501  (report-building f-strings read better unwrapped)
"""Streaming section of the benchmarks: first-chunk delay and inter-chunk timing of a server-sent-event answer, and
the proxy's memory while 1 GiB goes down and up, through a matched rule (token injected) and through bare mitmdump.

    python bench/streaming.py serve PORT     # the streaming backend alone (prints "listening 127.0.0.1:PORT")

The backend (``serve``) answers ``GET /sse?n=&interval=&first=`` with ``n`` SSE events, the first after ``first``
seconds (a model's time to first token), then one every ``interval`` seconds; ``GET /big?size=`` with ``size``
bytes (Content-Length, written 1 MiB at a time); ``POST /upload`` by reading and counting the body. ``GET /_stats``
tells how many requests carried an ``Authorization`` header, so the harness proves the token was injected.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import common  # noqa: E402
from common import PYTHON, ROOT, Proc  # noqa: E402

ADDON = str(ROOT / "addon" / "mi.py")
BLOCK = 1 << 20


@dataclass
class StreamSettings:
    reps: int
    events: int
    interval: float
    first: float
    big: int

    @classmethod
    def make(cls, smoke: bool) -> StreamSettings:
        if smoke:
            return cls(reps=3, events=4, interval=0.02, first=0.02, big=32 * BLOCK)
        return cls(reps=20, events=10, interval=0.1, first=0.1, big=1024 * BLOCK)


# -- the backend ---------------------------------------------------------------------------------------------------


def serve(port: int) -> None:
    from aiohttp import web

    stats = {"requests": 0, "with_authorization": 0, "uploaded": 0}

    def count(request: web.Request) -> None:
        stats["requests"] += 1
        stats["with_authorization"] += "Authorization" in request.headers

    async def sse(request: web.Request) -> web.StreamResponse:
        count(request)
        n, interval, first = int(request.query["n"]), float(request.query["interval"]), float(request.query["first"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await asyncio.sleep(first)
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            await resp.write(b'data: {"i": %d}\n\n' % i)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        count(request)
        size = int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        block = b"\0" * BLOCK
        sent = 0
        while sent < size:
            part = block[: min(BLOCK, size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        count(request)
        total = 0
        async for chunk in request.content.iter_chunked(BLOCK):
            total += len(chunk)
        stats["uploaded"] = total
        return web.json_response({"bytes": total, "authorization": "Authorization" in request.headers})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=0)
    app.router.add_get("/sse", sse)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    app.router.add_get("/_stats", get_stats)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        print(f"listening 127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_backend() -> Proc:
    port = common.free_port()
    p = common.spawn("stream-backend", [PYTHON, __file__, "serve", str(port)], port=port)
    if not common.wait_port(port, p.proc, 15):
        raise RuntimeError(f"streaming backend did not start:\n{p.text()}")
    return p


def backend_stats(port: int) -> dict[str, int]:
    _, body = common.http_get(port, "/_stats")
    return json.loads(body)


# -- clients -------------------------------------------------------------------------------------------------------


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=4 * BLOCK)


async def sse_timing(port: int, ss: StreamSettings) -> tuple[float, list[float]]:
    """(seconds from request to the first event, gaps between events) of one SSE answer on a fresh connection."""
    r, w = await _open(port)
    path = f"/sse?n={ss.events}&interval={ss.interval}&first={ss.first}"
    sent = time.perf_counter()
    w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    arrivals: list[float] = []
    seen = 0
    buf = b""
    while seen < ss.events:
        data = await r.read(65536)
        if not data:
            break
        now = time.perf_counter()
        buf += data
        n = buf.count(b'data: {"i"')
        arrivals += [now] * (n - seen)
        seen = n
    w.close()
    if len(arrivals) < ss.events:
        raise RuntimeError(f"only {len(arrivals)} of {ss.events} events arrived: {buf[:300]!r}")
    return arrivals[0] - sent, [b - a for a, b in itertools.pairwise(arrivals)]


async def download(port: int, size: int) -> int:
    r, w = await _open(port)
    w.write(f"GET /big?size={size} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    total = 0
    head = b""
    while b"\r\n\r\n" not in head:
        head += await r.read(65536)
    total = len(head.split(b"\r\n\r\n", 1)[1])
    while True:
        data = await r.read(BLOCK)
        if not data:
            break
        total += len(data)
    w.close()
    return total


async def upload(port: int, size: int) -> dict[str, Any]:
    r, w = await _open(port)
    w.write(f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
    block = b"\0" * BLOCK
    sent = 0
    while sent < size:
        part = block[: min(BLOCK, size - sent)]
        w.write(part)
        await w.drain()
        sent += len(part)
    raw = await r.read()
    w.close()
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
    body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    return {"status": status, **data}


class RssSampler:
    """Peak VmRSS of a process while a transfer runs (sampled every 20 ms)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.peak = proc.rss_mib()
        self.before = self.peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            rss = self.proc.rss_mib()
            if not math.isnan(rss):
                self.peak = max(self.peak, rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the section ---------------------------------------------------------------------------------------------------

BARE_BUFFERED = "bare mitmdump (buffers bodies)"
BARE_STREAMING = "bare mitmdump, stream_large_bodies=1"
ADDON_1 = "addon, 1 rule, stream_large_bodies=1m"


def _variants(rules: Path) -> dict[str, list[str]]:
    addon = ["-s", ADDON, "--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity"]
    return {
        BARE_BUFFERED: [],
        BARE_STREAMING: ["--set", "stream_large_bodies=1"],  # the workaround the issue found: stream every body
        ADDON_1: [*addon, "--set", "stream_large_bodies=1m"],
    }


def section(smoke: bool, ctx: dict[str, Any]) -> dict[str, Any]:
    ss = StreamSettings.make(smoke)
    backend = start_backend()
    rules = ctx["tmp"] / "rules-stream.yaml"
    rules.write_text("rules:\n  - name: stream\n    match: {host: 127.0.0.1}\n"
                     "    resource: https://cognitiveservices.azure.com\n")  # fmt: skip
    procs: dict[str, Proc] = {}
    out: dict[str, Any] = {"settings": ss.__dict__, "sse": {}, "big": {}, "errors": {}}
    try:
        for i, (name, args) in enumerate(_variants(rules).items()):
            procs[name] = common.start_mitmdump(f"s{i}", backend.port, args, env=ctx["env"],
                                                confdir=ctx["tmp"] / f"confdir-s{i}", pin=ctx["pin"])  # fmt: skip
        for p in procs.values():  # warm-up: connections, the token (cached from here on)
            asyncio.run(sse_timing(p.port, ss))
        first: dict[str, list[float]] = {n: [] for n in procs}
        gaps: dict[str, list[float]] = {n: [] for n in procs}
        auth: dict[str, int] = {}
        names = list(procs)
        for rep in range(ss.reps):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                before = backend_stats(backend.port)["with_authorization"]
                f, g = asyncio.run(sse_timing(procs[name].port, ss))
                first[name].append(f)
                gaps[name] += g
                auth[name] = auth.get(name, 0) + backend_stats(backend.port)["with_authorization"] - before
        for name in names:
            out["sse"][name] = {
                "first_ms": [x * 1000 for x in first[name]],
                "gap_ms": [x * 1000 for x in gaps[name]],
                "token_share": auth[name] / ss.reps,
            }
        for name in (BARE_STREAMING, ADDON_1):
            p = procs[name]
            row: dict[str, Any] = {}
            before = backend_stats(backend.port)["with_authorization"]
            with RssSampler(p) as rss:
                t = time.perf_counter()
                got = asyncio.run(download(p.port, ss.big))
                row["down_s"] = time.perf_counter() - t
            row.update(down_bytes=got, down_rss_before=rss.before, down_rss_peak=rss.peak,
                       down_token=backend_stats(backend.port)["with_authorization"] - before)  # fmt: skip
            with RssSampler(p) as rss:
                t = time.perf_counter()
                up = asyncio.run(upload(p.port, ss.big))
                row["up_s"] = time.perf_counter() - t
            row.update(up_status=up.get("status"), up_bytes=up.get("bytes", 0), up_rss_before=rss.before,
                       up_rss_peak=rss.peak, up_token=bool(up.get("authorization")))  # fmt: skip
            out["big"][name] = row
            log(f"streaming {name}: down {row['down_bytes']} B peak {row['down_rss_peak']:.0f} MiB, "
                       f"up {row['up_bytes']} B (status {row['up_status']}) peak {row['up_rss_peak']:.0f} MiB")  # fmt: skip
    finally:
        for p in procs.values():
            p.stop()
        backend.stop()
    return out


# -- the report ----------------------------------------------------------------------------------------------------


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _p(values: list[float], q: float) -> float:
    return common.pct(values, q) if values else math.nan


def facts(res: dict[str, Any]) -> dict[str, Any]:
    sse = res.get("sse", {})
    if ADDON_1 not in sse or BARE_STREAMING not in sse:
        return {}
    a, b = sse[ADDON_1], sse[BARE_STREAMING]
    ratio = _med(a["first_ms"]) / _med(b["first_ms"])
    interval = res["settings"]["interval"] * 1000

    def jitter(row: dict[str, Any]) -> float:  # p95: with ~180 gaps a p99 is one or two outliers of a busy machine
        return _p([abs(g - interval) for g in row["gap_ms"]], 95)

    return {"first_chunk_ratio": ratio, "added_first_chunk_ms": _med(a["first_ms"]) - _med(b["first_ms"]),
            "gap_p95_deviation_ms": jitter(a), "bare_gap_p95_deviation_ms": jitter(b),
            "token_share": a["token_share"]}  # fmt: skip


def report(res: dict[str, Any] | None, smoke: bool) -> str:
    if not res:
        return ""
    lines: list[str] = []
    w = lines.append
    ss = res.get("settings", {})
    w("## 4. Streaming")
    w("")
    if res.get("errors", {}).get("all"):
        w(f"not measured: {res['errors']['all']}")
        return "\n".join(lines) + "\n"
    interval = ss.get("interval", 0) * 1000
    w(f"A server-sent-event answer through each variant (reverse mode): the backend sends its first event "
      f"{ss.get('first', 0) * 1000:.0f} ms after the request (a model's time to first token), then one every "
      f"{interval:.0f} ms, {ss.get('events')} events; {ss.get('reps')} requests per variant, alternating, fresh "
      "connection each. *First chunk*: request sent → first event received by the client. *Gap*: between "
      "consecutive events at the client. The addon's rule matches and injects a managed-identity token "
      "(`token` = share of requests that reached the backend with one). Median [p95].")
    w("")
    f = facts(res)
    if f:
        ok = f["first_chunk_ratio"] <= 1.1 and f["token_share"] == 1
        w("| target | measured | |")
        w("| --- | --- | --- |")
        verdict = "" if smoke else ("✅" if ok else "❌")
        w(f"| first-chunk delay, addon (rule matched, token injected) / bare mitmdump streaming ≤ 1.1 | "
          f"{f['first_chunk_ratio']:.3f} ({f['added_first_chunk_ms']:+.2f} ms) | {verdict} |")
        kept = f["gap_p95_deviation_ms"] <= f["bare_gap_p95_deviation_ms"] + max(5.0, interval * 0.05)
        verdict = "" if smoke else ("✅" if kept else "❌")
        w(f"| inter-chunk timing preserved: p95 deviation from the {interval:.0f} ms interval, addon vs bare "
          f"streaming (≤ bare + {max(5.0, interval * 0.05):.0f} ms) | {f['gap_p95_deviation_ms']:.2f} ms vs "
          f"{f['bare_gap_p95_deviation_ms']:.2f} ms | {verdict} |")
        w("")
    w("| variant | first chunk ms | gap ms | token |")
    w("| --- | --- | --- | --- |")
    for name, row in res.get("sse", {}).items():
        w(f"| {name} | {_med(row['first_ms']):.2f} [{_p(row['first_ms'], 95):.2f}] | "
          f"{_med(row['gap_ms']):.2f} [{_p(row['gap_ms'], 95):.2f}] | {row['token_share']:.2f} |")
    w("")
    big = res.get("big", {})
    if big:
        size = ss.get("big", 0) / BLOCK
        w(f"{size:.0f} MiB down (`GET`, Content-Length) and up (`POST`, Content-Length) through the streaming "
          "variants; the proxy's RSS sampled every 20 ms during each transfer (peak, and before the transfer). "
          "Without `stream_large_bodies` mitmproxy holds a whole body in memory. *token up*: whether the upload "
          "reached the backend with the token (apim-mi injects it in `requestheaders` for a streamed body).")
        w("")
        w("| variant | down: s, peak RSS MiB (before) | token down | up: s, peak RSS MiB (before) | token up |")
        w("| --- | --- | --- | --- | --- |")
        for name, r in big.items():
            w(f"| {name} | {r['down_s']:.2f} s, {r['down_rss_peak']:.0f} ({r['down_rss_before']:.0f}) | "
              f"{int(r['down_token'])} | {r['up_s']:.2f} s, {r['up_rss_peak']:.0f} ({r['up_rss_before']:.0f}) | "
              f"{int(r['up_token'])} |")
        w("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        print(__doc__)
        sys.exit(2)
