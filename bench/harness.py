# ruff: noqa: E501  (report-building f-strings read better unwrapped)
"""apim-mi benchmarks: the addon side by side with bare mitmdump and with the naive addons, in one run.

    scripts/bench            # full run (about 8 minutes) → docs/benchmarks.md + docs/benchmarks.png
    scripts/bench --smoke    # seconds-scale sizes, same report sections, no verdicts (CI)

Sections: (1) throughput and added latency with wrk through real mitmdump processes (reverse mode to a fast
loopback backend); (2) cold start with many concurrent clients and behaviour across a token expiry, against the
managed-identity emulator answering in 200 ms, vs the naive addons; (3) micro costs in-process. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import rulegen
import streaming
from common import BENCH, PYTHON, ROOT, Conn, Proc, clean_env, pct, spread

ADDON = str(ROOT / "addon" / "mi.py")
BARE = "bare mitmdump"


@dataclass
class Settings:
    smoke: bool
    wrk_seconds: float
    rounds: int
    concs: tuple[int, ...]
    big_rules: int
    cold_clients: int
    cold_reps: int
    sync_cold_reps: int
    latency_ms: int
    lifetime: int
    expiry_conns: int
    expiry_parallel: bool
    copies: int = 1  # mitmdump processes per throughput variant; rounds go round them

    @property
    def many_rules(self) -> str:
        """The many-rules variant's name part ("10 000 rules")."""
        return f"{self.big_rules:,} rules".replace(",", " ")

    @classmethod
    def make(cls, smoke: bool) -> Settings:
        if smoke:
            return cls(True, 1.0, 1, (1, 8), 1000, 20, 1, 1, 200, 16, 2, True)  # lifetime 16 s: smoke ≤ 60 s
        return cls(False, 5.0, 4, (1, 16), 10_000, 200, 3, 1, 200, 40, 8, False, copies=4)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- (1) throughput and added latency --------------------------------------------------------------------------


async def _py_load(port: int, conns: int, seconds: float) -> dict[str, Any]:
    """Closed-loop keep-alive load in Python, for machines without wrk (same report fields)."""
    lat: list[float] = []
    errors = 0
    t_end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        c = await Conn.open(port)
        try:
            while time.perf_counter() < t_end:
                status, _, total, _ = await c.get("/api/orders/42")
                lat.append(total * 1e6)
                errors += status >= 400
        finally:
            c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    took = time.perf_counter() - t0
    return {
        "requests": len(lat),
        "duration_us": took * 1e6,
        "p50_us": pct(lat, 50),
        "p90_us": pct(lat, 90),
        "p99_us": pct(lat, 99),
        "max_us": max(lat, default=math.nan),
        "err_status": errors,
        "err_connect": 0,
        "err_read": 0,
        "err_write": 0,
        "err_timeout": 0,
    }


def run_wrk(port: int, conns: int, seconds: float) -> dict[str, Any]:
    if not shutil.which("wrk"):
        r = asyncio.run(_py_load(port, conns, seconds))
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = r["err_status"]
        return r
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk_report.lua"),
        f"http://127.0.0.1:{port}/api/orders/42",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, env=clean_env())
    line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    return r


def backend_stats(port: int) -> dict[str, int]:
    _, body = common.http_get(port, "/_stats")
    return json.loads(body)


#: The variant that implements apim-mi's per-flow hooks and does nothing in them (``bench/hookset.py``).
HOOK_SET = "apim-mi's hook set, no-op"


def ratio_targets(big: str) -> tuple[tuple[str, float], ...]:
    """Issue 13's throughput targets at the higher concurrency: (variant, least ratio to bare); ``big``: the
    many-rules variant's name part ("10 000 rules")."""
    return ("addon, 1 rule", 0.95), (f"addon, {big}", 0.93), ("addon, APIM policy", 0.85)


def section_throughput(s: Settings, ctx: dict[str, Any]) -> dict[str, Any]:
    backend: Proc = ctx["backend"]
    files = ctx["files"]
    big = s.many_rules
    variants = {
        BARE: [],
        "trivial addon": ["-s", str(BENCH / "trivial.py")],
        HOOK_SET: ["-s", str(BENCH / "hookset.py")],
        "addon, 1 rule": ["-s", ADDON, "--set", f"mi_rules={files['one']}"],
        f"addon, {big}": ["-s", ADDON, "--set", f"mi_rules={files['many']}"],
        "addon, APIM policy": ["-s", ADDON, "--set", f"mi_rules={files['policy']}"],
        "addon, APIM instance (APIOps)": ["-s", ADDON, "--set", f"mi_rules={files['apiops']}"],
    }
    # Each variant runs in ``s.copies`` processes and the rounds go round them (by default one process per round):
    # one process's luck (hash seed, memory layout) moves its CPU per request by a few per cent, as much as a small
    # change in the addon, and a median over rounds in different processes is a median over that luck too.
    procs: dict[str, list[Proc]] = {}
    errors: dict[str, str] = {}
    from concurrent.futures import ThreadPoolExecutor

    def start(item: tuple[str, list[str]]) -> Proc:
        tag, args = item
        extra = ["--set", "mi_credential=managed-identity"] if ADDON in args else []
        return common.start_mitmdump(
            tag, backend.port, [*args, *extra], env=ctx["env"], confdir=ctx["tmp"] / f"confdir-{tag}", pin=ctx["pin"]
        )

    copies = range(s.copies)
    with ThreadPoolExecutor(len(variants) * s.copies) as pool:  # side by side: the 10 000-rule file takes seconds
        futures = {name: [pool.submit(start, (f"t{i}-{k}", args)) for k in copies]
                   for i, (name, args) in enumerate(variants.items())}  # fmt: skip
    for name, futs in futures.items():
        try:
            procs[name] = [fut.result() for fut in futs]
        except Exception as e:
            errors[name] = str(e)[-1500:]
            log(f"variant '{name}' unavailable: {str(e)[-300:]}")
            for fut in futs:
                if fut.exception() is None:
                    fut.result().stop()
    try:
        # correctness first: every addon variant must inject a token on the timed path
        injected: dict[str, float] = {}
        for name, ps in procs.items():
            for p in ps:
                before = backend_stats(backend.port)
                status, body = common.http_get(p.port, "/api/warmup")
                after = backend_stats(backend.port)
                auth = after["with_authorization"] - before["with_authorization"]
                if status != 200 or (name != BARE and auth != 1):
                    errors[name] = f"warm-up request answered {status} (token injected: {bool(auth)}): {body[:300]!r}"
        for name in list(errors):
            for p in procs.pop(name, []):
                p.stop()
        for ps in procs.values():  # a short warm-up of each at full load
            for p in ps:
                run_wrk(p.port, max(s.concs), 1)
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in s.concs} for n in procs}
        names = list(procs)
        others = [n for n in names if n != BARE]

        def timed(name: str, r: int, conc: int) -> dict[str, Any]:
            proc = procs[name][r % len(procs[name])]
            before = backend_stats(backend.port)
            cpu0 = proc.cpu_seconds()
            res = run_wrk(proc.port, conc, s.wrk_seconds)
            res["cpu_us_per_request"] = (proc.cpu_seconds() - cpu0) * 1e6 / max(res["requests"], 1)
            time.sleep(0.3)  # requests still in flight when wrk stops reach the backend now, not next window
            after = backend_stats(backend.port)
            seen = after["requests"] - before["requests"]
            res["injected_share"] = (after["with_authorization"] - before["with_authorization"]) / max(seen, 1)
            res["round"] = r
            res["process"] = r % len(procs[name])
            runs[name][conc].append(res)
            log(
                f"throughput r{r} c={conc} {name}: {res['rps']:.0f} req/s p50 {res['p50_us'] / 1000:.2f} ms "
                f"p99 {res['p99_us'] / 1000:.2f} ms errors {res['errors']} injected {res['injected_share']:.2f}"
            )
            return res

        # Paired: every variant's run sits next to a bare run of its own (bare first in even rounds, second in odd
        # ones), and its ratios are to that run. The machine's speed drifts by more than the targets' margins
        # within the half minute a rotation of all the variants takes; between two neighbouring runs it hardly does.
        for r in range(s.rounds):
            for conc in s.concs:
                order = others[r % len(others) :] + others[: r % len(others)]  # rotate: ABCD, BCDA, ...
                for name in order:
                    if BARE not in procs:
                        timed(name, r, conc)
                        continue
                    pair = (BARE, name) if r % 2 == 0 else (name, BARE)
                    first, second = timed(pair[0], r, conc), timed(pair[1], r, conc)
                    bare, mine = (first, second) if pair[0] == BARE else (second, first)
                    mine["bare"] = {k: bare[k] for k in ("rps", "p50_us", "p99_us", "cpu_us_per_request")}
        for name in names:
            injected[name] = min(x["injected_share"] for c in s.concs for x in runs[name][c])
        rss = {name: max(p.rss_mib() for p in ps) for name, ps in procs.items()}
    finally:
        for ps in procs.values():
            for p in ps:
                p.stop()
    return {"runs": runs, "errors": errors, "injected": injected, "rss_mib": rss, "variants": list(variants),
            "hook_times": live_hook_times(s, ctx)}  # fmt: skip


def live_hook_times(s: Settings, ctx: dict[str, Any]) -> dict[str, Any]:
    """apim-mi's own CPU per flow inside the live proxy (``bench/timed.py``: each hook's thread time, with what it
    hands mitmproxy to await), under the same load as the throughput rounds."""
    out: dict[str, Any] = {}
    for i, (name, rules) in enumerate((("addon, 1 rule", ctx["files"]["one"]),
                                       ("addon, APIM policy", ctx["files"]["policy"]))):  # fmt: skip
        path = ctx["tmp"] / f"hook-times-{i}.json"
        args = ["-s", str(BENCH / "timed.py"), "--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity"]
        try:
            p = common.start_mitmdump(f"timed{i}", ctx["backend"].port, args, env=dict(ctx["env"], APIM_MI_HOOK_TIMES=str(path)),
                                      confdir=ctx["tmp"] / f"confdir-timed{i}", pin=ctx["pin"])  # fmt: skip
            try:
                common.http_get(p.port, "/api/warmup")
                run_wrk(p.port, max(s.concs), s.wrk_seconds)
            finally:
                p.stop()
            out[name] = json.loads(path.read_text())
        except Exception as e:
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b and math.isfinite(a) and math.isfinite(b) else math.nan


def summarize_throughput(t: dict[str, Any], s: Settings) -> dict[str, Any]:
    runs = t["runs"]
    base = BARE
    out: dict[str, Any] = {}
    if base not in runs:
        return out
    lo, hi = min(s.concs), max(s.concs)
    for name, by_conc in runs.items():
        row: dict[str, Any] = {}
        for conc, rs in by_conc.items():
            # each run's own bare neighbour (paired runs); a report of an older run pairs them by position
            b = [x.get("bare") or y for x, y in zip(rs, runs[base][conc], strict=False)] if name != base else rs
            rs = rs[: len(b)]
            row[conc] = {
                "rps": spread([x["rps"] for x in rs]),
                "p50_ms": spread([x["p50_us"] / 1000 for x in rs]),
                "p99_ms": spread([x["p99_us"] / 1000 for x in rs]),
                "ratio": spread([x["rps"] / y["rps"] for x, y in zip(rs, b, strict=True)]),
                "cpu_us": spread([x.get("cpu_us_per_request", math.nan) for x in rs]),
                "cpu_ratio": spread([_ratio(y.get("cpu_us_per_request"), x.get("cpu_us_per_request")) for x, y in zip(rs, b, strict=True)]),
                "added_p50_ms": spread([(x["p50_us"] - y["p50_us"]) / 1000 for x, y in zip(rs, b, strict=True)]),
                "added_p99_ms": spread([(x["p99_us"] - y["p99_us"]) / 1000 for x, y in zip(rs, b, strict=True)]),
                "errors": sum(x["errors"] for x in rs),
            }
        row["lo"], row["hi"] = lo, hi
        out[name] = row
    return out


# -- (2) cold start and expiry ---------------------------------------------------------------------------------

VARIANTS2 = ("apim-mi addon", "naive sync", "naive async")


def start_variant(name: str, ctx: dict[str, Any], tag: str, resource: str) -> Proc:
    backend: Proc = ctx["backend"]
    env = dict(ctx["env"], BENCH_RESOURCE=resource)
    if name == "apim-mi addon":
        rules = ctx["tmp"] / f"rules-{tag}.yaml"
        rules.write_text(rulegen.rules_text(1, f"127.0.0.1:{backend.port}", resource=resource))
        args = ["-s", ADDON, "--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity"]
    elif name == "naive sync":
        args = ["-s", str(BENCH / "naive_sync.py")]
    else:
        args = ["-s", str(BENCH / "naive_async.py")]
    p = common.start_mitmdump(tag, backend.port, args, env=env, confdir=ctx["tmp"] / f"confdir-{tag}", pin=ctx["pin"])
    time.sleep(0.5)  # let the addon finish its startup, as a real deployment would before traffic arrives
    return p


async def cold_clients(port: int, n: int) -> dict[str, Any]:
    conns = await asyncio.gather(*(Conn.open(port) for _ in range(n)))
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(c.get(f"/api/cold/{i}") for i, c in enumerate(conns)), return_exceptions=True), 300
        )
    finally:
        for c in conns:
            c.close()
    ok = [r for r in results if not isinstance(r, BaseException)]
    ttfb = [r[1] * 1000 for r in ok]
    return {
        "clients": n,
        "ok": sum(1 for r in ok if r[0] == 200),
        "failed": n - sum(1 for r in ok if r[0] == 200),
        "ttfb_p50_ms": pct(ttfb, 50),
        "ttfb_p99_ms": pct(ttfb, 99),
        "ttfb_last_ms": max(ttfb) if ttfb else math.nan,
    }


def section_cold(s: Settings, ctx: dict[str, Any]) -> dict[str, Any]:
    emu = ctx["emu"]
    schedule: list[str] = []
    for r in range(max(s.cold_reps, s.sync_cold_reps)):
        order = list(VARIANTS2[r % 3 :] + VARIANTS2[: r % 3])
        schedule += [v for v in order if v != "naive sync" or r < s.sync_cold_reps]
        schedule = [v for v in schedule if v == "naive sync" or schedule.count(v) <= s.cold_reps]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS2}
    errors: dict[str, str] = {}
    for i, name in enumerate(schedule):
        resource = f"api://bench-cold-{i}"
        try:
            p = start_variant(name, ctx, f"c{i}", resource)
        except Exception as e:
            errors[name] = str(e)[-1500:]
            continue
        try:
            emu.reset()
            emu.configure(latency_ms=s.latency_ms)
            t0 = time.perf_counter()
            res = asyncio.run(cold_clients(p.port, s.cold_clients))
            res["wall_s"] = time.perf_counter() - t0
            res["token_requests"] = emu.stats().count(resource)
            runs[name].append(res)
            log(
                f"cold start {name}: {res['token_requests']} token requests, last TTFB {res['ttfb_last_ms']:.0f} ms, "
                f"p50 {res['ttfb_p50_ms']:.0f} ms, failed {res['failed']}"
            )
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            log(f"cold start {name} failed: {e!r}\n{p.text()}")
        finally:
            p.stop()
    return {"runs": runs, "errors": errors, "schedule": schedule}


async def expiry_load(port: int, conns: int, until: float) -> list[tuple[float, float, int]]:
    """Closed loop: each connection sends its next request as soon as the previous answer is complete."""
    samples: list[tuple[float, float, int]] = []

    async def worker(i: int) -> None:
        c = await Conn.open(port)
        try:
            while time.time() < until:
                sent = time.time()
                try:
                    status, _, total, _ = await asyncio.wait_for(c.get(f"/api/expiry/{i}"), 60)
                except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                    samples.append((sent, (time.time() - sent) * 1000, 0))
                    c.close()
                    c = await Conn.open(port)
                    continue
                samples.append((sent, total * 1000, status))
        finally:
            c.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    return samples


async def expiry_one(name: str, port: int, s: Settings, emu: Any, resource: str) -> dict[str, Any]:
    c = await Conn.open(port)
    try:
        status, _, _, body = await asyncio.wait_for(c.get("/api/prime"), 60)
    finally:
        c.close()
    if status != 200:
        raise RuntimeError(f"priming request answered {status}: {body[:200]!r}")
    records = [r for r in emu.stats().requests if r.resource == resource]
    issued = records[0].time if records else time.time()
    until = issued + s.lifetime + 3
    samples = await expiry_load(port, s.expiry_conns, until)
    token_times = [r.time - issued for r in emu.stats().requests if r.resource == resource]
    win_start, win_end = issued + 0.7 * s.lifetime, issued + s.lifetime + 3
    steady = [lat for t, lat, st in samples if issued + 1 <= t < win_start]
    window = [lat for t, lat, st in samples if win_start <= t <= win_end]
    res = {
        "requests": len(samples),
        "failed": sum(1 for _, _, st in samples if st != 200),
        "failed_in_window": sum(1 for t, _, st in samples if st != 200 and win_start <= t <= win_end),
        "steady_p50_ms": pct(steady, 50),
        "steady_p99_ms": pct(steady, 99),
        "window_p50_ms": pct(window, 50),
        "window_p99_ms": pct(window, 99),
        "window_max_ms": max(window, default=math.nan),
        "token_requests": len(token_times),
        "token_times_s": [round(x, 2) for x in token_times][:50],
        "lifetime_s": s.lifetime,
        "run_s": until - issued,
        "series": [(round(t - issued, 3), round(lat, 2), st) for t, lat, st in samples],
    }
    res["window_over_steady_p99"] = res["window_p99_ms"] / res["steady_p99_ms"]
    log(
        f"expiry {name}: {res['token_requests']} token requests at {res['token_times_s'][:6]} s; p99 steady "
        f"{res['steady_p99_ms']:.1f} ms, window {res['window_p99_ms']:.1f} ms; failed {res['failed']}"
    )
    return res


def section_expiry(s: Settings, ctx: dict[str, Any]) -> dict[str, Any]:
    emu = ctx["emu"]
    emu.reset()
    emu.configure(latency_ms=s.latency_ms, lifetime=s.lifetime)
    out: dict[str, Any] = {"runs": {}, "errors": {}, "parallel": s.expiry_parallel}
    procs: dict[str, Proc] = {}
    try:
        for i, name in enumerate(VARIANTS2):
            try:
                procs[name] = start_variant(name, ctx, f"e{i}", f"api://bench-expiry-{i}")
            except Exception as e:
                out["errors"][name] = str(e)[-1500:]
        resources = {name: f"api://bench-expiry-{i}" for i, name in enumerate(VARIANTS2)}

        async def run(names: list[str]) -> list[Any]:
            return await asyncio.gather(
                *(expiry_one(n, procs[n].port, s, emu, resources[n]) for n in names), return_exceptions=True
            )

        batches = [list(procs)] if s.expiry_parallel else [[n] for n in procs]
        for batch in batches:
            for name, res in zip(batch, asyncio.run(run(batch)), strict=True):
                if isinstance(res, BaseException):
                    out["errors"][name] = f"{type(res).__name__}: {res}"
                    log(f"expiry {name} failed: {res!r}\n{procs[name].text()}")
                else:
                    out["runs"][name] = res
    finally:
        for p in procs.values():
            p.stop()
        emu.reset()
    return out


# -- (3) micro -------------------------------------------------------------------------------------------------


def _load_cmd(ctx: dict[str, Any]) -> list[str]:
    big = ctx["tmp"] / "rules-10000-load.yaml"
    if not big.exists():
        big.write_text(rulegen.rules_text(10_000, "127.0.0.1:18080"))
    return [PYTHON, str(BENCH / "micro.py"), "--load", str(big)]


def _popen(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_micro(s: Settings, ctx: dict[str, Any]) -> list[subprocess.Popen[str]]:
    """The in-process micro benchmarks; in smoke mode also the (single) load-time probe, side by side."""
    micro = [PYTHON, str(BENCH / "micro.py"), "--profile"] + (["--quick"] if s.smoke else [])
    procs = [_popen(micro)]
    if s.smoke:
        procs.append(_popen(_load_cmd(ctx)))
    return procs


def finish_micro(s: Settings, ctx: dict[str, Any], procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stdout, stderr = procs[0].communicate(timeout=600)
    try:
        out.update(json.loads(stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        out["error"] = f"micro benchmark failed: {stderr[-1500:]}"
    loads = []
    # each load in a fresh process, one after the other (full mode): load time and RSS of that process alone
    load_procs = procs[1:] or [None, None, None]
    for lp in load_procs:
        stdout, stderr = (lp or _popen(_load_cmd(ctx))).communicate(timeout=300)
        try:
            loads.append(json.loads(stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            out["load_error"] = stderr[-1500:]
    big = ctx["tmp"] / "rules-10000-load.yaml"
    out["load"] = {
        "runs": loads,
        "load_s": spread([x["load_s"] for x in loads]),
        "rss_delta_mib": spread([x["rss_delta_mib"] for x in loads]),
        "rss_total_mib": spread([x["rss_total_mib"] for x in loads]),
        "file_bytes": big.stat().st_size,
    }
    return out


# -- report ----------------------------------------------------------------------------------------------------


def fmt(x: float, d: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:,.{d}f}".replace(",", " ")


def rng(sp: dict[str, float], d: int = 2) -> str:
    if sp.get("n", 0) <= 1:
        return fmt(sp["median"], d)
    return f"{fmt(sp['median'], d)} [{fmt(sp['min'], d)}–{fmt(sp['max'], d)}]"


def verdict(ok: bool | None, smoke: bool) -> str:
    if smoke:
        return "(smoke: not judged)"
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def build_report(res: dict[str, Any], s: Settings) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    w = lines.append
    thr = res.get("throughput", {})
    summ = summarize_throughput(thr, s) if thr.get("runs") else {}
    cold = res.get("cold", {})
    exp = res.get("expiry", {})
    mic = res.get("micro", {})
    lo, hi = min(s.concs), max(s.concs)
    big = s.many_rules
    w("# Benchmarks")
    w("")
    w(
        f"Generated by `scripts/bench{' --smoke' if s.smoke else ''}` on {res['meta']['date']} "
        f"({res['meta']['machine']}). Every number is measured in this one run; "
        + ("each throughput ratio compares a variant's run with a bare mitmdump run right next to it (paired, the "
           "order alternating round to round; the variants rotated, ABCD, BCDA, …), so it holds when the machine's "
           "speed drifts. " if res["meta"].get("paired") else "ratios compare variants measured side by side, alternating "
           "(ABCD, BCDA, …), so they hold when the machine's speed drifts. ")
        + "Median [min–max] over the rounds."
        + (" **Smoke mode: tiny sizes, numbers are not meaningful.**" if s.smoke else "")
    )
    w("")
    # -- targets
    w("## Targets")
    w("")
    w("| target | measured | |")
    w("| --- | --- | --- |")
    facts: dict[str, Any] = {}
    if "trivial addon" in summ:
        r, c = summ["trivial addon"][hi]["ratio"], summ["trivial addon"][hi]["cpu_ratio"]
        facts["ratio trivial addon"] = r["median"]
        w(f"| (the limit) trivial addon: throughput / bare (c={hi}); CPU per request, bare / addon | {rng(r)}; "
          f"{rng(c)} | |")  # fmt: skip
    if HOOK_SET in summ:
        r, c = summ[HOOK_SET][hi]["ratio"], summ[HOOK_SET][hi]["cpu_ratio"]
        w(f"| (the limit for apim-mi's hooks) {HOOK_SET}: throughput / bare (c={hi}); CPU per request, bare / addon "
          f"| {rng(r)}; {rng(c)} | |")  # fmt: skip
    for name, want in ratio_targets(big):
        if name in summ:
            r, c = summ[name][hi]["ratio"], summ[name][hi]["cpu_ratio"]
            facts[f"ratio {name}"] = r["median"]
            facts[f"cpu ratio {name}"] = c["median"]
            w(f"| {name}: throughput / bare ≥ {want} (c={hi}); CPU per request, bare / addon | {rng(r)}; {rng(c)} | "
              f"{verdict(r['median'] >= want, s.smoke)}; {verdict(c['median'] >= want, s.smoke)} |")  # fmt: skip
        else:
            w(f"| {name}: throughput / bare ≥ {want} | not measured: {_short(thr.get('errors', {}).get(name))} | |")
    for name, want in (("addon, 1 rule", 0.15), (f"addon, {big}", 0.3), ("addon, APIM policy", 0.3)):
        if name in summ:
            a = summ[name][lo]["added_p50_ms"]
            facts[f"added p50 {name}"] = a["median"]
            w(f"| {name}: added p50 ≤ {want} ms (c={lo}) | {rng(a, 3)} ms | {verdict(a['median'] <= want, s.smoke)} |")
    hooks = mic.get("hooks", {})
    for name, want in (("1 rule", 40), ("APIM policy", 120)):
        v = hooks.get(name)
        if isinstance(v, dict) and "us" in v:
            facts[f"hooks {name}"] = v["us"]
            w(f"| addon hooks per flow, {name} ≤ {want} µs (micro, CPU time) | {fmt(v['us'], 1)} µs | "
              f"{verdict(v['us'] <= want, s.smoke)} |")
    ours_cold = cold.get("runs", {}).get("apim-mi addon", [])
    sync_cold = cold.get("runs", {}).get("naive sync", [])
    async_cold = cold.get("runs", {}).get("naive async", [])
    ours_exp = exp.get("runs", {}).get("apim-mi addon")
    if ours_cold:
        tr = [r["token_requests"] for r in ours_cold]
        one = all(t == 1 for t in tr) and (ours_exp is None or ours_exp["token_requests"] <= 2)
        extra = (
            f"; across an expiry: {ours_exp['token_requests']} in {fmt(ours_exp['run_s'], 0)} s "
            f"(lifetime {ours_exp['lifetime_s']} s)"
            if ours_exp
            else ""
        )
        w(
            f"| exactly 1 token request per (identity, resource) per lifetime | cold start, {s.cold_clients} concurrent "
            f"clients: {', '.join(map(str, tr))}{extra} | {verdict(one, s.smoke)} |"
        )
    if ours_exp:
        ratio = ours_exp["window_over_steady_p99"]
        w(
            f"| p99 in the expiry window ≤ 1.2× steady state | {fmt(ratio)}× ({fmt(ours_exp['window_p99_ms'], 1)} vs "
            f"{fmt(ours_exp['steady_p99_ms'], 1)} ms), {ours_exp['failed']} failed | "
            f"{verdict(ratio <= 1.2 and ours_exp['failed'] == 0, s.smoke)} |"
        )
    match = mic.get("match", {})
    if match and "error" not in match:
        worst = max(v["last rule matches"] for k, v in match.items() if k.endswith("/10000"))
        facts["match worst 10k us"] = worst
        w(
            f"| rule match ≤ 20 µs at 10 000 rules (worst layout, last rule matches) | {fmt(worst)} µs | "
            f"{verdict(worst <= 20, s.smoke)} |"
        )
    load = mic.get("load", {})
    if load.get("runs"):
        facts["load s"] = load["load_s"]["median"]
        facts["load MiB"] = load["rss_delta_mib"]["median"]
        w(
            f"| 10 000-rule file loads in ≤ 2 s | {rng(load['load_s'])} s | {verdict(load['load_s']['median'] <= 2, s.smoke)} |"
        )
        w(
            f"| … and costs ≤ 100 MiB | {rng(load['rss_delta_mib'], 1)} MiB (process RSS growth) | "
            f"{verdict(load['rss_delta_mib']['median'] <= 100, s.smoke)} |"
        )
    if ours_cold and sync_cold:
        tok = _med([r["token_requests"] for r in sync_cold]) / max(_med([r["token_requests"] for r in ours_cold]), 1)
        ttfb = _med([r["ttfb_last_ms"] for r in sync_cold]) / _med([r["ttfb_last_ms"] for r in ours_cold])
        facts["cold token ratio"], facts["cold ttfb ratio"] = tok, ttfb
        w(
            f"| vs naive (sync) at cold start: ≥ 50× fewer token requests | {fmt(tok, 0)}× | {verdict(tok >= 50, s.smoke)} |"
        )
        w(
            f"| vs naive (sync) at cold start: ≥ 10× faster TTFB for the last client | {fmt(ttfb, 1)}× | "
            f"{verdict(ttfb >= 10, s.smoke)} |"
        )
    if ours_cold and async_cold:
        tok = _med([r["token_requests"] for r in async_cold]) / max(_med([r["token_requests"] for r in ours_cold]), 1)
        ttfb = _med([r["ttfb_last_ms"] for r in async_cold]) / _med([r["ttfb_last_ms"] for r in ours_cold])
        w(
            f"| (also) vs naive async: token requests / TTFB of the last client | {fmt(tok, 0)}× fewer / {fmt(ttfb, 1)}× "
            "faster | |"
        )
    w("")
    # -- setup
    w("## Setup")
    w("")
    meta = res["meta"]
    w(
        f"- Machine: {meta['machine']}; {meta['cpus']} CPUs; Python {meta['python']}; mitmproxy {meta['mitmproxy']}; "
        f"azure-identity {meta['azure_identity']}; {meta['wrk']}."
    )
    w(f"- Placement: {meta['pinning']}.")
    if meta.get("loadavg"):
        w(f"- Machine load (1-minute load average) at the start / end of this run: "
          f"{' / '.join(fmt(x) for x in meta['loadavg'])} on {meta['cpus']} CPUs; other work shared the machine.")  # fmt: skip
    w(
        "- mitmdump: `--mode reverse:http://127.0.0.1:<backend> --listen-host 127.0.0.1 --set flow_detail=0 "
        "--set termlog_verbosity=warn` (no per-flow output for any variant; the addon runs with its defaults: trace and "
        "redaction on). Backend: a tiny asyncio HTTP/1.1 keep-alive server answering 12 bytes (`bench/backend.py`)."
    )
    w(
        "- Credential: `mi_credential=managed-identity` (azure-identity's async `ManagedIdentityCredential`) against the "
        "bundled emulator over loopback (`AZURE_POD_IDENTITY_AUTHORITY_HOST`); every other proxy or managed-identity "
        "variable is removed from the proxies' environment."
    )
    w(
        f"- Throughput: `wrk -t1 -c<N> -d{int(s.wrk_seconds)}s` keep-alive, {s.rounds} round(s) × c ∈ {list(s.concs)}, "
        + ("each variant's run paired with a bare run of its own (bare first in even rounds, second in odd ones), "
           if meta.get("paired") else "")
        + f"variants rotated every round, each variant in {meta.get('copies', 1)} mitmdump process(es) that the rounds go "
        "round (one process's hash seed and memory layout move its CPU per request by a few per cent); the backend counts `Authorization` headers to prove injection on every timed "
        f"request. The {big} file has the matching rule last, with 1 % of the others on the same host. The APIM "
        "instance is an APIOps extraction (`bench/rulegen.py`): its gateway routes each request to API `/api`, "
        "operation `GET /orders/{id}`, whose policy adds the token."
    )
    w(
        f"- Naive addons: `bench/naive_sync.py` (new `ManagedIdentityCredential().get_token` per request, blocking the "
        "event loop) and `bench/naive_async.py` (one `aio.ManagedIdentityCredential`, awaited per request: azure-identity's "
        f"own cache, no single-flight). Emulator latency {s.latency_ms} ms for sections 2."
    )
    w("")
    # -- section 1
    w("## 1. Throughput and added latency through mitmdump")
    w("")
    if summ:
        w(
            f"| variant | req/s (c={hi}) | ratio to bare (c={hi}) | proxy CPU µs per request (c={hi}) | CPU ratio, bare / "
            f"variant (c={hi}) | p50 / p99 ms (c={lo}) | added p50 ms (c={lo}) | "
            f"p50 / p99 ms (c={hi}) | ratio to bare (c={lo}) | RSS MiB | errors | token on every request |"
        )
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, row in summ.items():
            a, b = row[lo], row[hi]
            inj = thr["injected"].get(name, 0)
            w(
                f"| {name} | {rng(b['rps'], 0)} | {rng(b['ratio'])} | {rng(b['cpu_us'], 0)} | {rng(b['cpu_ratio'])} | "
                f"{fmt(a['p50_ms']['median'], 2)} / {fmt(a['p99_ms']['median'], 2)} | "
                f"{rng(a['added_p50_ms'], 3) if name != 'bare mitmdump' else '–'} | {fmt(b['p50_ms']['median'], 1)} / "
                f"{fmt(b['p99_ms']['median'], 1)} | {rng(a['ratio'])} | {fmt(thr['rss_mib'].get(name, math.nan), 0)} | "
                f"{a['errors'] + b['errors']} | {'–' if name == 'bare mitmdump' else ('yes' if inj >= 0.999 else f'{inj:.1%}')} |"
            )
    for name, err in thr.get("errors", {}).items():
        w(f"\n- **{name}: not measured** — {_short(err, 400)}")
    w("")
    # -- section 2
    w(
        f"## 2. Cold start ({s.cold_clients} concurrent clients) and token expiry, emulator answering in {s.latency_ms} ms"
    )
    w("")
    w("| variant | runs | token requests | TTFB p50 ms | TTFB of the last client ms | failed |")
    w("| --- | --- | --- | --- | --- | --- |")
    for name in VARIANTS2:
        rs = cold.get("runs", {}).get(name, [])
        if rs:
            w(
                f"| {name} | {len(rs)} | {rng(spread([r['token_requests'] for r in rs]), 0)} | "
                f"{rng(spread([r['ttfb_p50_ms'] for r in rs]), 0)} | {rng(spread([r['ttfb_last_ms'] for r in rs]), 0)} | "
                f"{sum(r['failed'] for r in rs)} |"
            )
    for name, err in cold.get("errors", {}).items():
        w(f"\n- **{name}: cold start not measured** — {_short(err, 400)}")
    w("")
    if exp.get("runs"):
        w(
            f"Across a token expiry (token lifetime {s.lifetime} s; {s.expiry_conns} keep-alive clients in a closed loop "
            f"from the first token until expiry + 3 s; expiry window = from 70 % of the lifetime to expiry + 3 s, which "
            "covers both our background refresh and azure-identity's own refresh; steady state = before it"
            + ("; smoke: the three variants ran at the same time" if exp.get("parallel") else "")
            + "):"
        )
        w("")
        w(
            "| variant | requests | token requests (s after the first) | p50 / p99 ms steady | p50 / p99 / max ms in "
            "window | window p99 / steady p99 | failed |"
        )
        w("| --- | --- | --- | --- | --- | --- | --- |")
        for name in VARIANTS2:
            r = exp["runs"].get(name)
            if r:
                times = ", ".join(fmt(x, 1) for x in r["token_times_s"][:6]) + (" …" if r["token_requests"] > 6 else "")
                w(
                    f"| {name} | {r['requests']} | {r['token_requests']} ({times}) | {fmt(r['steady_p50_ms'], 1)} / "
                    f"{fmt(r['steady_p99_ms'], 1)} | {fmt(r['window_p50_ms'], 1)} / {fmt(r['window_p99_ms'], 1)} / "
                    f"{fmt(r['window_max_ms'], 1)} | {fmt(r['window_over_steady_p99'])} | {r['failed']} |"
                )
    for name, err in exp.get("errors", {}).items():
        w(f"\n- **{name}: expiry not measured** — {_short(err, 400)}")
    w("")
    # -- section 3
    w("## 3. Micro costs (in-process; rule match and expressions: best of 5, policy and hooks: median CPU time per flow)")
    w("")
    if match and "error" not in match:
        w(
            "Rule match (`Matcher.match`), µs per call. Layouts: *spread* = distinct hosts and wildcards, 1 % on the "
            "request's host; *one-host* = every rule on the request's host, own first path segment; *one-host-api* = "
            "every rule on the request's host under `/api/op<i>`."
        )
        w("")
        w("| rules | last rule matches | no rule matches | an early rule matches |")
        w("| --- | --- | --- | --- |")
        for key, v in match.items():
            w(
                f"| {key} | {fmt(v['last rule matches'])} | {fmt(v['no rule matches'])} | "
                f"{fmt(v['an early rule matches']) if 'an early rule matches' in v else '–'} |"
            )
        w("")
    elif match:
        w(f"- rule match: not measured — {_short(match.get('error'))}")
    ex = mic.get("expressions", {})
    if ex:
        if "error" in ex:
            w(f"- Expression evaluation: not measured — {_short(ex['error'])}")
        else:
            w("| expression | µs per evaluation |")
            w("| --- | --- |")
            for name, v in ex.items():
                src = v["source"].replace("|", "\\|")
                w(f"| {name}: `{src}` | {fmt(v['us']) if 'us' in v else 'fails: ' + _short(v.get('error'), 120)} |")
        w("")
    for part, title in (
        ("policy", "Policy execution per flow (`engine.run_inbound`, token cache warm, context built per flow)"),
        (
            "hooks",
            "The addon's hooks per flow (`request` + `responseheaders` + `response` on a "
            "mitmproxy test flow, token cache warm; the flow itself subtracted)",
        ),
    ):
        d = mic.get(part, {})
        if not d:
            continue
        w(f"{title}:")
        w("")
        w("| case | µs per flow |")
        w("| --- | --- |")
        if "error" in d:
            w(f"| – | not measured: {_short(d['error'])} |")
        for name, v in d.items():
            if isinstance(v, dict):
                w(f"| {name} | {fmt(v['us'], 1) if 'us' in v else 'not measured: ' + _short(v.get('error'), 200)} |")
        w("")
    if load.get("runs"):
        w(
            f"Loading a 10 000-rule file ({fmt(load['file_bytes'] / 1e6, 2)} MB YAML, `load_rules` + `Matcher`, fresh "
            f"process each time): {rng(load['load_s'])} s, RSS growth {rng(load['rss_delta_mib'], 1)} MiB "
            f"(whole process {rng(load['rss_total_mib'], 1)} MiB)."
        )
        w("")
    live = (res.get("throughput") or {}).get("hook_times") or {}
    if live:
        w(f"The same hooks inside the live proxy (`bench/timed.py`: each hook's thread CPU time, with the work it hands "
          f"mitmproxy to await; median per flow under `wrk -c{max(s.concs)}`; no `requestheaders`: apim-mi offers that "
          f"hook only while a request body may stream, which these proxies never do):")
        w("")
        w("| case | request | responseheaders | response | µs per flow |")
        w("| --- | --- | --- | --- | --- |")
        for name, v in live.items():
            if "us" in v:
                us = v["us"]
                cells = " | ".join(fmt(us.get(h, math.nan), 1) for h in ("request", "responseheaders", "response"))
                w(f"| {name} | {cells} | {fmt(v['total_us'], 1)} |")
            else:
                w(f"| {name} | not measured: {_short(v.get('error'), 200)} | | | |")
        w("")
    prof = mic.get("hooks", {}).get("1 rule", {}).get("profile")
    if prof:
        w("### Profile of the addon's hooks per flow (1 rule, cProfile, by own time)")
        w("")
        w("```")
        w(prof)
        w("```")
        w("")
    w(where_the_time_goes(summ, mic, s, big, res.get("pyspy"), res.get("pooled")))
    return "\n".join(lines) + "\n", facts


# Issue 13's starting point: main at c4a9802, measured with this harness (micro: CPU-time medians) at the start of
# the work, on the same shared machine under similar load: the "before" column.
BEFORE = {
    "ratio": {"addon, 1 rule": 0.73, "addon, 10 000 rules": 0.70, "addon, APIM policy": 0.59},
    "added_p50": {"addon, 1 rule": 0.702, "addon, 10 000 rules": 0.704, "addon, APIM policy": 0.892},
    "p99_hi": {"addon, 1 rule": 39.6, "addon, 10 000 rules": 63.3, "addon, APIM policy": 62.3},
    "hooks": {"1 rule": 251.0, "1 rule, mi_trace=false": 251.1, "APIM policy": 493.0},
    "policy": {"shorthand rule": 56.9, "APIM policy": 201.5},
    "load_s": 0.87,
    "load_mib": 48.3,
}


# CPU per request was first measured after slice 1 (the lazy trace), not at the starting point.
FIRST_CPU_RATIO = {"addon, 1 rule": 0.71, "addon, 10 000 rules": 0.69, "addon, APIM policy": 0.64}


def where_the_time_goes(
    summ: dict[str, Any], mic: dict[str, Any], s: Settings, big: str, pyspy: str | None = None,
    pooled: str | None = None,
) -> str:
    """Before/after table (before: constants above; after: this run) and the profile summary."""
    lo, hi = min(s.concs), max(s.concs)
    rows: list[tuple[str, str, str]] = []
    for name in ("addon, 1 rule", f"addon, {big}", "addon, APIM policy"):
        key = name.replace(big, "10 000 rules")
        if name in summ:
            rows.append((f"{name}: throughput / bare (c={hi})", fmt(BEFORE["ratio"][key]), rng(summ[name][hi]["ratio"])))
    for name in ("addon, 1 rule", f"addon, {big}", "addon, APIM policy"):
        key = name.replace(big, "10 000 rules")
        if name in summ and key in FIRST_CPU_RATIO:
            rows.append((f"{name}: proxy CPU per request, bare / addon (c={hi})", f"{fmt(FIRST_CPU_RATIO[key])} *",
                         rng(summ[name][hi]["cpu_ratio"])))  # fmt: skip
    for name in ("addon, 1 rule", f"addon, {big}", "addon, APIM policy"):
        key = name.replace(big, "10 000 rules")
        if name in summ:
            rows.append((f"{name}: added p50 (c={lo})", f"{fmt(BEFORE['added_p50'][key], 3)} ms",
                         f"{rng(summ[name][lo]['added_p50_ms'], 3)} ms"))  # fmt: skip
    for name in ("addon, 1 rule", f"addon, {big}"):
        key = name.replace(big, "10 000 rules")
        if name in summ:
            rows.append((f"{name}: p99 (c={hi})", f"{fmt(BEFORE['p99_hi'][key], 1)} ms",
                         f"{fmt(summ[name][hi]['p99_ms']['median'], 1)} ms"))  # fmt: skip
    for name, v in (mic.get("hooks") or {}).items():
        if isinstance(v, dict) and "us" in v and name in BEFORE["hooks"]:
            rows.append((f"addon hooks per flow, {name}", f"{fmt(BEFORE['hooks'][name], 1)} µs", f"{fmt(v['us'], 1)} µs"))
    for name, v in (mic.get("policy") or {}).items():
        if isinstance(v, dict) and "us" in v and name in BEFORE["policy"]:
            rows.append((f"policy execution per flow, {name}", f"{fmt(BEFORE['policy'][name], 1)} µs",
                         f"{fmt(v['us'], 1)} µs"))  # fmt: skip
    load = mic.get("load", {})
    if load.get("runs"):
        rows.append(("10 000-rule file load", f"{fmt(BEFORE['load_s'])} s", f"{rng(load['load_s'])} s"))
        rows.append(("… RSS growth", f"{fmt(BEFORE['load_mib'], 1)} MiB", f"{rng(load['rss_delta_mib'], 1)} MiB"))
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    note = ""
    triv = summ.get("trivial addon", {}).get(hi, {}).get("ratio")
    if triv and triv["max"] - triv["min"] > 0.1:
        note = (f"**In this run the throughput ratios, and their verdicts above, are not evidence either way**: the "
                f"trivial addon alone spread over {rng(triv)} round to round. The CPU ratios are what to read.")  # fmt: skip
    profile = pyspy.strip() if pyspy else "(not recorded in this run: `bench/pyspy.py --out FILE`, then `--pyspy FILE`)"
    runs = pooled.strip() if pooled else "(not pooled for this report: `bench/pooled.py RUN.json …`, then `--pooled FILE`)"
    return WHERE.format(table=table, pyspy=profile, note=note, pooled=runs)


WHERE = """## Where the time goes

Before: issue 13's starting point (main at c4a9802), measured with this harness at the start of the work on the
same shared machine under similar load; after: this run. Both include what main gained in between (request-body
streaming, `requestheaders`, the sent-token check, gateway state), so the "after" column is this work net of that.
\\* CPU per request was first measured after slice 1 (the lazy trace), not at the starting point.

| | before | after |
| --- | --- | --- |
{table}

### Measured how, on a shared machine

{note}

On a machine shared with other work (see Setup for the load during this run), throughput ratios swing widely between
rounds, even for the trivial addon; the harness therefore also reads
each proxy's own CPU time (`/proc/<pid>/stat`) around every wrk run and reports **proxy CPU per request**, and its
ratio bare / variant. That is what the throughput ratio measures when the proxy is CPU-bound on its own core, and it
stays put under load (its spread above is a few percent where throughput's is tens). Micro costs are medians of
per-call CPU time (`time.thread_time_ns`), for the same reason. `--rounds 4` (the default) alternates the variants four times, each round in mitmdump processes of its own,
and every variant's run sits next to a bare run of its own, to which its ratios are taken.
Between two commits, `bench/instructions.py` counts the hooks' machine instructions per flow under valgrind, which
give the same number on every run whatever the machine is doing.

### Several runs pooled (`bench/pooled.py`)

{pooled}

### Profile of the live mitmdump (py-spy)

{pyspy}

### What changed (issue 13)

- **Eleventh pass: what each piece of the engine path's plumbing costs, and redaction made once per token.**
  - **Each piece, stubbed out in turn** (`bench/instructions.py`'s flows, 600 of them, the policy's hooks at 470.0k
    instructions per flow): the summary (the flow's comment and its record) 61k, redaction 25.7k, the sent-token
    check 16.2k, the echo and audience check 15.1k, the subscription lookup 8.9k, the trace-protocol headers 8.2k,
    the log line 8.1k. Within the summary, the comment (formatted, then checked for secrets) is about 13k, and
    keeping the record on the flow 22k: every live `HTTPFlow` is cyclic garbage (a `weakref` check in a live
    mitmdump: with the collector off, no flow is freed), so what the record holds waits for the collector, which
    visits the trace's 37 tracked objects before it frees them. Each is one entry's data.
  - **Redaction of the usual one token** takes its `Bearer <token>` value and that value redacted from a per-token
    table (made with the token's other forms, cleared by `mi.flush`), instead of scrubbing the field on every flow;
    any other value, or a flow with two secrets, is scrubbed as before. The policy's hooks 472.7k → 462.9k
    instructions per flow (1 000 flows); output byte-identical (`8173054…`). A hypothesis test compares a flow's
    redaction with the general scrub of each injected field (one or two secrets, periodic tokens, values that only
    contain the token), twice in a row so that the second flow reads the table.
  - **Four whole runs on today's machine** (as slow as the tenth pass's: bare mitmdump 2 180–2 280 µs of CPU per
    request against 759 µs in the 13:18 run), C at 16:40 UTC on the tenth pass's final code, D at 17:15, E at 17:33
    and F at 18:04 on this pass's: 1 rule 0.96, 0.94, 0.96, 0.98; 10 000 rules 0.95, 0.95, 0.96, 0.97; the APIM
    policy 0.86, 0.90, 0.87, 0.88; the trivial addon 1.00, 0.98, 1.03, 1.02 (CPU ratios, bare / variant). C, E and F
    met every throughput target; D missed 1 rule while apim-mi's hook set doing nothing read 0.95 in it. Pooled over
    D, E and F (12 rounds per variant): 1 rule 0.957 [0.949–0.976], 87 % of the bootstrap medians ≥ 0.95; 10 000
    rules 0.966, 100 % ≥ 0.93; the policy 0.882 [0.864–0.910], 100 % ≥ 0.85. The absolute targets scale with the
    machine: added p50 at c=1 for 1 rule 0.165, 0.138, 0.161, 0.170 ms (≤ 0.15), and the micro loop 32.0, 30.0,
    30.1, 32.0 µs for 1 rule (≤ 40) and 160.0, 148.6, 151.1, 150.5 µs for the policy (≤ 120), where the ninth pass's
    machine read 0.036 ms, 11.4 and 68.1 µs.
- **Tenth pass: the engine path's statements and plumbing, counted.** `bench/instructions.py`, 1 000 flows: the
  APIM policy's hooks 527.5k → 472.7k instructions per flow (−10.4 %), 1 rule 94.7k → 93.2k (3 000 flows);
  byte-identical output (`8173054…`) after every commit.
  - **An outbound of literal set-headers runs on the answer's headers** (`statements.core.header_edits`, worked
    out once per policy and section): a buffered answer whose outbound section holds only set-headers with literal
    names and values (the usual `X-Powered-By` delete) gets them applied to its decoded headers, with the same
    trace entries, without a `context.Response`, the statement list or its coroutines: −20k. The section cost
    46.6k before (the bench policy with and without its one outbound statement). hypothesis compares the direct
    edits with the engine's on generated headers and edits (the answer and the trace entries).
  - **Header fields decode and encode without naming the error handler** when they are valid UTF-8:
    `bytes.decode()` costs about half of `decode("utf-8", "surrogateescape")` here, which looks the codec and the
    handler up on every call; fields that are not valid UTF-8 take the second pass: −10k. A property test compares
    both for any bytes and any strings (lone surrogates fail as surrogateescape fails).
  - **Expressions remember what they resolved per type**: each step of a member chain keeps the context model
    attribute it found for the type it met, and a method call the method; the next flow's objects have the same
    types and skip the key tuple, its hash and the dictionary lookup (the tables they read only grow, and another
    type is looked up as before): −18k. The bench policy's six expressions took 16.2 µs, now 9.5 µs (timeit, this
    machine). A test feeds one closure values of other types in turn; it fails with the type check removed.
  - **Smaller:** a statement list uses the scope its caller made for it alone (−3.5k); request ids write `UUID`'s
    slots through their descriptors (1.16 → 0.65 µs) and set-header looks for CR/LF in each part instead of in a
    copy of name and token (−3k together, with a new test of the error); the trace endpoint's host is lower-cased
    only when it starts with an a, the insecure-transport check reads mitmproxy's scheme bytes and the response
    entry keeps the reason bytes until read (1 rule −1.5k).
  - **Tried and left out:** comparing lengths before `bytes.lower()` in the sent-token check and in redaction
    (473.2k against 472.0k instructions without it, 3 000 flows: no gain beyond the counter's noise).
  - **What the engine path costs by itself:** the same rule with a policy of one literal set-variable (no token, no
    outbound) costs 233.6k instructions per flow (243.5k before this pass), the fast path about 93k. Of the bench
    policy's 472.7k, half is that plumbing (request context, run, trace, snapshots, the check that the token left,
    redaction, summary), half its statements and expressions.
  - **Today's machine** was about 4 times slower than the ninth pass's: bare mitmdump needed 3 050 µs of CPU per
    request (759 µs in the 13:18 run), a pure-Python loop of 10 M additions 2.3 s, and the paired rounds of one run spread
    widely (the policy's CPU ratio over [0.63–1.01] in one run). Two whole runs, A at 14:37 UTC (with the first three
    cuts above, before the smaller ones) and B at 15:18 (the pass's final code), read 1 rule 0.95 and 0.90, 10 000
    rules 0.92 and 1.06, the policy 0.84 and 0.86; pooled (8 rounds each) the trivial addon read 1.05 and the no-op
    hook set 1.04, both faster than bare: noise of about ±10 % of bare, ten times the ninth pass's, so neither run
    can tell a target met from missed.
    Run A's micro loop read 50.2 µs per flow for 1 rule and 191.4 µs for the policy, against 11.4 and 68.1 µs in
    the 13:18 run on the ninth pass's machine: the micro targets are absolute (40 and 120 µs per flow, 0.15 ms added
    p50) and scale with the machine, where the instruction counts above do not.
- **Ninth pass: is the APIM policy's target met? Several runs read as one.** One run's headline is a median of four
  rounds, and the policy's rounds spread over about ±3 % of bare, so a run alone cannot tell 0.85 met from missed.
  - **Seven whole runs** (`scripts/bench`, defaults), CPU ratio bare / variant at c=16 — the eighth pass's code at
    07:31, 07:49, 08:05, 12:19 and 12:35 UTC, this pass's final code (forward-request bound, below) at 13:18 and
    13:33: 1 rule 0.960, 0.941, 0.973, 0.972, 0.958, 0.953, 0.929; 10 000 rules 0.957, 0.967, 0.955, 0.946, 0.943,
    0.959, 0.967; the APIM policy 0.860, 0.854, 0.833, 0.859, 0.849, 0.863, 0.849; the trivial addon 0.99–1.01.
    Every target was met in three of the seven runs' own headlines (07:31, 12:19, 13:18); the misses were 1 rule
    at 0.941 (07:49) and 0.929 (13:33, a noisy stretch: bare from 1 106 to 1 352 req/s, p99 up to 42 ms) and the
    policy at 0.833 (08:05), 0.849 (12:35) and 0.849 (13:33).
  - **`bench/pooled.py`** pools every paired round of several runs (each against its own bare neighbour) and gives
    each variant's median, a 90 % bootstrap interval of its CPU ratio and the share of bootstrap medians that clear
    its target. Over the seven runs (28 rounds each, 28 mitmdump processes per variant): 1 rule 0.960 [0.948–0.967], 91 % of the medians ≥ 0.95; 10 000 rules 0.953
    [0.949–0.963], 100 % ≥ 0.93; the APIM policy 0.856 [0.849–0.860], 91 % ≥ 0.85; the trivial addon 0.996; apim-mi's
    hook set doing nothing 0.979. The table is
    in "Several runs pooled" above.
  - **Where the policy's extra time is** (callgrind with its cache simulation on the live mitmdump, `-X perf`
    trampolines so each Python function has a name, 1 000 requests at c=16 after a warm-up, policy − bare per
    request): +11.4k L1d read misses, of which the engine path of the request hook 5.6k (`engine.run_inbound` 3.0k,
    the request context 1.1k), the response hook 1.6k, `responseheaders` 0.9k and `request` 0.4k; the rest is
    mitmproxy's dispatch around them. The collector costs both the same (about 150k instructions and 4.8k L1d misses
    per request), but it runs inside whatever allocates when it is due: `Query.parse("")` read 27.8k instructions
    inclusive, nearly all of it a collection that landed there, so per-function inclusive costs need it subtracted.
  - **What objects cost here.** On this interpreter (CPython 3.13, shared library, no PGO) `object.__new__` of a
    slotted class is about 1.6k instructions and `object.__setattr__` 1.65k; building the request context is 41.5k
    (its `Url` 16k), `PolicyRun` 8.3k, `Trace.since` 9k, a request id 10k. The engine path's per-flow objects, not
    its dispatch, are the next thing to shrink.
  - **forward-request is bound once** (`routing.BINDERS`): its literal options are resolved when its list first runs,
    and a flow calls a partial over them: 510.4k → 506.7k instructions per policy flow; identical output.
  - **Tried and left out:** `logs.wanted` with plain loops instead of `any()` over generators (about −2k on both
    paths, against ruff's SIM110, for a line nobody reads); asking `is_event_stream` once per engine flow at
    `responseheaders` instead of twice (about −1.3k through a memo on the flow's state).
- **Eighth pass: what the counter does not see, and one process per round.** The APIM policy's hooks 519k → 511k
  instructions per flow (callgrind inside the flow loop, ±1k), 68–70 µs in the micro loop as before within its
  noise; byte-identical output (`8173054…`) after every commit.
  - **A system call per flow.** py-spy on the micro loop (real time, where callgrind counts only user-space
    instructions) put `new_request_id` first by own time, about 5 % of the policy's hooks: `os.urandom(16)` is a
    system call (about 0.3 µs here, more with the caches it disturbs). Request ids now come from one `os.urandom`
    call per 256 (`flowcontext.RequestIds`, one per addon; the same randomness, the same version 4 UUIDs): 0.97 →
    0.61 µs per id.
  - **Statements bound once** (`engine.Binder`): set-header, set-variable, choose and authentication-managed-identity
    resolve their statement when its list is first run, and a flow calls a `functools.partial` of the handler's body
    over what it derived (no `prepared` lookup, no Python call of its own); a `<base/>` left at the global scope has
    no step at all. `evaluate_now` makes the string itself for `evaluated` (one call fewer per value), and
    `obj["literal"]` captures its key when compiled.
  - **Where the cold caches are, simulated.** callgrind with its cache simulation on the whole live mitmdump (600
    requests at c=16 after a warm-up) per request: bare 8.82M instructions, 213k L1i misses, 48.9k L1d read misses;
    the APIM policy +726k instructions (+8.2 %), +13.8k L1i misses (+6.5 %) and +11.2k L1d read misses (+23 %). The
    interpreter loop itself has +4.5k of those (the policy's bytecode and frames), the type attribute cache +0.85k,
    the collector +0.6k. The policy's extra time over its instructions is the data it touches, spread over the many
    small functions it runs once per flow; no single one stands out.
  - **The collector.** In a live mitmdump every flow is cyclic garbage, bare or not (mitmproxy raises and catches
    about a dozen `TypeError`s per flow, whose tracebacks hold frames): 119 objects per flow bare, 129 with 1 rule,
    157 with the APIM policy (mostly the trace's tuples, which live as long as the flow). In the micro loop the
    policy's flows cost the collector 4.6 µs more than the same loop without hooks.
  - **One process per round** (`--rounds 4 --copies 4` by default): three processes of the same APIM policy code,
    side by side over eight paired rounds, read 0.874, 0.865 and 0.857 (109, 121 and 125 µs over bare), and the
    seventh pass's final code against this pass's read 0.865 against 0.849, the other way round from the change:
    a process's luck (hash seed, memory layout) is worth about ±1 % of bare, as much as a pass of cuts. Each round in
    a process of its own makes the headline a median over four processes' luck instead of two.
  - **Tried again, measured, and left out:** the sync-first statement lists with the managed-identity step using a
    cached token without a coroutine (as in the sixth pass, now with `TokenProvider.fetch` so the output stayed
    byte-identical): −1k instructions, and the micro loop did not move (68.3 against 68.9 µs, then 68.9 against
    68.8). Not worth its surface.
- **Seventh pass: one hook fewer, and what is left of the plumbing.** Counted as in the sixth pass (callgrind inside
  the flow loop, ±1k): the APIM policy's hooks 526k → 518k instructions per flow, 1 rule 85k → 81k; byte-identical
  output (`8173054…`) after every commit.
  - **`requestheaders` is offered only while a request body may stream.** mitmproxy looks each hook up on every
    flow and, for an addon that has it, gathers the hook's arguments (`Hook.args`, a `dataclasses.fields` walk), calls
    it and checks its result; apim-mi's `requestheaders` only mattered for a streamed body. It is now an instance
    attribute, set while `stream_large_bodies` is on or an addon before apim-mi (other than mitmproxy's own, none of
    which streams a request) has a `requestheaders` hook, and absent otherwise (decided at each option change and when
    the proxy starts running). A new end-to-end test loads an addon that streams bodies itself before apim-mi, without
    `stream_large_bodies`: the upload reaches the validating backend with its token (it fails without the arming).
    `bench/hookset.py` dropped the hook accordingly.
  - **Smaller cuts:** `MultiMap.remove` takes one pass (no `__contains__` call first); a token's refresh
    time is kept with its cache entry (`cached` asked `_refresh_at` and `Token.lifetime` on every hit); `_scrubbed`
    skips its `all()` over the secrets when there is one; `run_section` hands back the statements' coroutine instead
    of awaiting it in one of its own.
  - **Tried, measured, and left out:** `PolicyRun` made through `object.__new__` (−0.4k, within the counter's
    noise); the managed-identity step reading the token cache before awaiting `get` (−1.1k, but it changed the
    output's timestamps under the fake clock, and test doubles of the token provider have only `get`); set-header
    with inline copies of `evaluated`'s and `apply_exists_action`'s usual cases, and `MultiMap.set` looking for a
    later duplicate before building its list (about −5k together, which no live run could see: folded back into the
    shared helpers in review).
  - **Paired live, the pass's start against its end** (one mitmdump per variant beside a bare one, eight paired
    rounds of 3 s at c=16, CPU per request; before the review folds above): 1 rule 0.954 → 0.970 (37 → 24 µs over bare), the APIM policy 0.852 →
    0.848 (134 → 136 µs over bare: no change this machine can see).
- **Sixth pass: calls, and what mitmproxy's properties cost.** Counted with callgrind inside the flow loop only
  (client requests turn collection on and off around it; the hooks' coroutines driven without the event loop; the
  collector off), which repeats within about ±1k where `bench/instructions.py` moves by a few k: the APIM policy's
  hooks 550k → 523k instructions per flow (−5 %); `bench/instructions.py` reads 542.8k (570.8k before).
  - **The request context reads mitmproxy's `RequestData`**: scheme, path and method decoded there (each of
    mitmproxy's properties is a Python call); `Received` keeps the header fields as read (mitmproxy's immutable
    tuple) and `apply_request` compares the encoded headers with them, so no second decoded list is made;
    `Context.of_flow` and `Url.plain` are made without `__init__` (a 16-keyword `__init__` alone is about 3.6k
    instructions). Building the context went 46.2k → 41.0k.
  - **`in` on bytes is slow**: CPython first tries the needle as an integer, raising and clearing a `TypeError`
    (about 176 ns, against 21 ns for `find`). The echo check uses `find`; the plain-URL test works on the decoded
    path.
  - **Header names are compared by length before `lower()`** (the context's multimap, Host, Content-Type,
    Content-Encoding): `lower()` makes a string, and most names differ in length. Exact: U+0130 is the only
    character whose lower case is longer, so only a key holding U+0307 skips the shortcut; a hypothesis test
    compares get/set/remove/append with the plain definition, and fails without that guard.
  - `MultiMap.get` makes no list or join for the usual one value, and `set` replaces one value in place;
    `String.StartsWith`/`EndsWith` of a plain string skip the general path; `evaluate_now` calls an expression's
    compiled closure itself (`CompiledExpression.failure` maps what it raises, as `evaluate` does); the answer's
    reason is read from its bytes and written back only when outbound changed it.
  - **Tried, measured, and left out**: a sync-first engine (statement lists, sections, inbound and outbound run
    without a coroutine until a statement waits; the managed-identity step without one for a cached token). The
    engine's instructions did not move (303.0k against 304.8k per run of the bench policy's inbound), so it was not
    worth its surface. Driving the addon's coroutine hooks to completion before mitmproxy sees them (an experiment
    addon, live, eight paired rounds) read 0.847 against 0.845: the coroutines mitmproxy awaits are not where the
    policy's time goes.
- **Fifth pass: what a real token costs, and what a flow leaves behind.** `bench/instructions.py`, APIM policy:
  669.4k → 570.1k instructions per flow (−15 %), with the bench's stand-in token now emulator-sized (below); 1 rule
  104.6k → about 92k.
  - **The stand-in token was too short.** gdb on the live mitmdump (a breakpoint on `PyUnicode_Contains` for needles
    over 200 characters, printing the Python stack with `_Py_DumpTraceback`) found set-header's token check searching
    the 1.5 KB emulator token in `Bearer <token>` on every flow: CPython prepares a long needle before it searches,
    22k instructions per flow. The in-process benches never saw it, as their stand-in token had 226 bytes.
    `micro.fake_jwt` now makes one shaped like the emulator's (the same claims, an RS256-sized signature, 1.5 KB),
    and the check compares the value's end first. `bench/identical.py` hashes the new token's output: its digest is
    `8173054…` for this pass's start and for every commit of it.
  - **Where the policy's CPU goes outside its hooks.** callgrind of the whole live mitmdump (1 000 requests at c=16
    after a warm-up): bare 8.73 M instructions per request, 1 rule +227k, the APIM policy +825k, of which the hooks'
    own ~670k; mitmproxy's own work differs by about 35k between 1 rule and the policy. The paired runs put the
    policy's extra CPU at 150–270 µs per request, far more than those instructions at bare's rate. In the live proxy
    every `HTTPFlow` is cyclic garbage (with the collector off, no flow is ever freed), so what a flow's metadata
    holds is freed by the collector, and visited by it until then: with the collector off in both, the policy's
    user-CPU gap over bare fell from +266 to +197 µs per request. So this pass cut objects as well as instructions.
  - **Deferred trace data is a plain tuple**, `(function name, *snapshots)` (`trace.later`, `deferred`): the
    collector stops visiting a tuple of plain values, where a `partial` and its argument tuple stayed tracked for as
    long as the flow lived. The inspector entries keep the request snapshot's data, not the snapshot; set-header's
    values are a tuple. A policy flow leaves 95 tracked objects behind instead of 113, and 4 000 flows in one
    process trigger 102 young collections instead of 156.
  - **`PolicyRun`'s rarely written sequences** (on-response actions, warnings, token failures, finalizers, response
    headers) are an empty tuple until their first entry (`add_…`): five lists fewer in flight per flow.
  - **Token searches**: redaction skips the earlier-occurrence search for a token with no period shorter than its
    prefix (worked out once per token; a property test compares it with a search, for short and periodic tokens
    too); the echo check looks for a JWT's signature only (a body with the whole token has it too); the sent-token
    check and redaction do no bookkeeping for the usual one token in one header, and redaction rewrites only the
    fields it changes; a comment is scrubbed only if a secret could fit in it.
  - **Engine**: one `Scope` per statement list, its path set per statement; an evaluated expression's entry made
    when the trace is read; `RequestId.ToString()` from the integer's bytes in C (checked against `str(UUID)`);
    `obj[key]` compiled without a key list; choose's branches and the identity step's token key prepared once per
    statement; the plain-URL test is substring checks, not a regular expression; the event-stream test joins without
    a list; the outbound "sent in full" entry shares one dict.
- **Fourth pass: the garbage collector, and a paired bench.** In the live proxy, the garbage collector costs bare
  mitmdump about 40 µs per request, and the APIM policy's flows added about 35 µs more (the 1-rule fast path about
  12): every container object a flow keeps while it is in flight is visited by the young and middle collections that
  happen meanwhile (the collector's own CPU time in the live proxy, by generation: `bench/gcstats.py`). So this pass cut objects as well as instructions:
  `bench/instructions.py`, the APIM policy 678.4k → 637.4k instructions per flow (−6 %); the engine path keeps 41
  container objects per flow in flight, down from 47, and 26 fewer for the trace it keeps after.
  - Trace entries are kept flat (four items per entry in one list, not a tuple each) and `Later` is
    `functools.partial` (made in C, no Python frame): 26 fewer objects per engine-path flow.
  - `context.Request`'s body and `OriginalUrl` are made from the flow when first read (`Request.of_flow`;
    `OriginalUrl` from the URL as received, so a policy that rewrote the URL first still sees the original; a body
    never read is never written back); `context.Timestamp` and `context.Deployment` too (`Timestamp` is now when the
    request was received, as APIM documents it; before, when the context was built, a moment later); a client
    certificate is converted only when one was presented; `Trace` is made without its dataclass factories.
  - forward-request with literal options makes no coroutine (and no second one for a backend entity it has not got).
  - A token's bytes and echoes are made once per token, for the sent-token check, redaction and the echo check (one
    cache where there were two); redaction of `<short prefix><token>` leaves a prefix that no secret fits in as it is.
  - The info line's parts are worked out only when the line is shown; the summary keeps its arguments as one tuple.
  - Compiled method calls list literal arguments in place and check the result's length inline; member chains from
    `context` start from it; a string argument that is a plain `str` is taken as it is.
  - The bench pairs each variant's throughput run with a bare run of its own, right before or after it (the order
    alternating by round), and takes the ratios to that run: a rotation of seven variants takes half a minute, in
    which this machine's speed drifts by more than the targets' margins.
- **Third pass, counted in instructions** (`bench/instructions.py`: the hooks' machine instructions per flow under
  valgrind, the same on every run, so a change of one per cent shows on this noisy machine; bytecode counts did not
  do: on CPython 3.13, `map`/`zip`/`compress` over a five-header list took fewer bytecodes than the comprehensions they
  replaced but twice the time, and that change was dropped). Per flow, `bench/instructions.py` on the commit this
  pass started from → now: 1 rule 134.1k → 101.7k instructions (−24 %), the APIM policy 809.9k → 678.4k (−16 %).
  - Matching remembers its answer per request line (`Matcher.match_line`, keyed by mitmproxy's undecoded
    `request.data` values; at most 2 048 lines, paths up to 512 bytes, a new matcher per rules load): a repeated line
    costs one dict lookup instead of decoding, normalising and searching the candidates. The largest single gain for
    the fast path (about a fifth of its instructions) and for 10 000 rules.
  - Both paths read and write headers, body and status through `request.data`/`response.data`: each of mitmproxy's
    properties is a Python call, some decode. The fast-path route carries its identity.
  - The engine path searches a 1 KB token less: the sent-token check compares the end of the header first, redaction
    cuts `<short prefix><token>` (the same result as the general scrub, a property test with periodic tokens says so),
    and each token's echoes are made once, not per flow (with an emulator token these were about 8 µs per flow).
  - The engine path's summary is made when read, as the fast path's; the comment is written at once, scrubbed whole.
  - Trace entries are plain tuples that do not hold their trace (no tuple subclass, no reference cycle per entry);
    `Trace`, the per-flow state and `Body` are slotted; the request id is made without `uuid.UUID`'s argument checks
    (`flowcontext.RequestIds`; `bench/identical.py` gives it the same ids as `uuid4`).
  - Fixed on the way: an internal error in outbound was answered with APIM's 500, but the summary and comment still
    gave the policy's outcome (the error was written into a summary that was then made again). They now say
    `failed: internal error …` and the flow is marked.
- **A fast path for the common rule** (`fastpath.py`): a rule whose whole policy is authentication-managed-identity
  into `Authorization` with the default forward-request (every shorthand rule with the default header) no longer
  builds a policy context, a `PolicyRun` or trace entries while the flow passes. `request` matches, takes the cached
  token, appends the header to mitmproxy's header tuple and keeps a `Quick` record (rule, token key and claims, three
  clock readings, a snapshot of the request as received); `responseheaders` sees that the header tuple is still the
  one it wrote (the token went out), counts, logs and redacts; `response` writes the comment and a `FlowRecord` whose
  request id, summary and APIM trace are made when something first reads them, with the engine path's own entry
  builders. Anything out of the ordinary leaves the fast path where it shows up and the engine path carries on from
  the state it would have had: no cached token yet, trace request headers, a client `Authorization`, an audience that
  differs from the resource, an insecure destination, an event stream or a body mitmproxy streams, a 401/403 or an
  echoed token, a header changed by another addon, an upstream error. `tests/test_fastpath.py` drives nine such
  scenarios, with the default options, `mi_redact=false` and `mi_trace=false`, through both paths and compares
  everything a user sees (the saved flow, request and response, comment, mark, rendered trace, log lines, counters):
  equal except the measured times and the random request ids.
- **The fast path, second pass**: each rule's route (its plan and token key) is worked out once per rules file and
  credential; the token comes from one cache lookup that hands it out only if it is for the rule's audience and only
  then counts the hit (`TokenProvider.cached(key, audience)`); a token's header field and echoes (what of it an answer
  that echoes it would show) are made once per token (`fastpath.Carried`), not a 1 KB encode and concatenation per
  request; `TokenKey` is a named tuple, hashed and compared in C; the match target is read from the request's data in
  one pass. The fast path's hooks went from about 39.5 µs to about 33 µs (micro, paired sampling: see below).
- **The engine path, second pass**: `_record` split into the count-and-log line when the request leaves and the
  summary at the end; set-header, set-variable and base run without a coroutine and `choose` hands its branch back to
  the engine; trace entries are tuples (one allocation per step); set-header's attributes are resolved once per
  statement; outbound writes back only the headers it changed; exists-action scans a header list once. 8 504 → 7 867
  bytecode instructions per APIM-policy flow (counted with `sys.monitoring`: the same on every run); the policy's
  hooks went from about 191 µs to about 174 µs (micro, paired sampling).
- **Micro, paired sampling** (`bench/micro.py`, `cpu_median_over_us`): the hooks' cost is the median of the hooks
  minus the median of making the flow, the two sampled in turn, call by call. Sampled in two blocks one after the
  other, as before, a drifting shared machine moved the difference by up to a quarter between runs (1 rule read
  34.9 µs, then 44.9 µs); paired, it stays within a few per cent. Paired figures are not comparable with the earlier
  ones: for the code at the start of this session they read 39.3–39.8 µs for 1 rule (32.5 before) and 188–194 µs
  for the APIM policy (159.7 before).
- **Hooks without coroutines**: `request` and `response` (like `requestheaders` and `responseheaders` before) are
  plain functions that return a coroutine only when the engine path has async work; a flow no rule matches, or one the
  fast path takes, costs mitmproxy no coroutine.
- **The engine path's bookkeeping**: the summary and comment are written once, at the end (also when the request
  leaves only if the answer streams, where the flow stays open); the sent-token check, redaction, the event-stream
  test and the token-echo check read and write mitmproxy's raw header fields; the URL for trace and log line comes from
  a snapshot of the request (`flowcontext.RequestSnapshot`) only when read; one `Services` per credential source.
- **Policies compiled once** (`policy/expressions/compiler.py`, `policy/engine.py`, `policy/statements/`):
  expressions run as closures compiled once per expression (a bounded subset; the tree-walking interpreter stays for
  the rest), handlers evaluate without a coroutine per value (`engine.evaluate_now`), literal attributes and
  authentication-managed-identity's token key are resolved once per statement, entries that need formatting are
  `Later`, and the context model has slots and cheaper parsing.
- **The APIM trace is built when read** (`trace.py`, `inspector.py`): `Trace.add` keeps (section, source, data,
  elapsed) and nothing else. Timestamps, canonical key order and scrubbing happen when the document is read
  (`to_json`, `entries`), against every secret known by then. The api-inspector and forward-request entries are
  `Later(...)` over snapshots (mitmproxy's immutable `headers.fields` tuples), computed only then.
  `flow.metadata["apim_mi"]` is a `FlowRecord`, a dict that builds the trace on its first read, `json.dumps` or
  `deepcopy` (what `mitmdump -w` does), so saved flows hold exactly the document they held before and read back as
  plain dicts; the trace endpoint (`Ocp-Apim-Trace`, `Apim-Debug-Authorization`) builds it only for a client that
  asked. A flow nobody looks at never builds its trace.
- **One cheap log line** (`logs.py`): apim-mi's records go to the root logger's handlers directly, past mitmproxy's
  deprecated `add_log` bridge (which turned each record into one more hook event dispatched to every addon); a
  per-flow info line that no handler would show (`termlog_verbosity=warn`, as here) is not built at all. At the
  default verbosity the line is printed as before.
- **Byte-identical output**: `bench/identical.py` drives the hooks on fixed flows (a shorthand rule, this APIM
  policy, a policy that fails into on-error; with `Ocp-Apim-Trace`, `Apim-Debug-Authorization` and a client
  `Authorization`) under a fake clock and ids, and hashes saved flows (`-w` bytes), comments, response headers,
  rendered traces, the trace store and the log lines: the digest is the same before and after every change of this
  work (`2b92779…`; `8173054…` since the fifth pass's emulator-sized stand-in token). The existing trace tests pass unchanged.
- **Bench, one variant in two processes** (`--copies`): each throughput variant runs in two mitmdump processes and
  the rounds go round them. Measured side by side in one run, the same variant in different processes differed by
  by up to about 30 µs of CPU per request between runs (the trivial addon measured 1.00 in one run and 0.97 in another,
  apim-mi's hook set doing nothing 1.00 and 0.94), as much as the whole gap to the 1-rule target; within one run,
  three processes of one variant (hash seeds 1–3) agreed within about ±15 µs. Two processes per variant average that
  luck instead of taking one draw of it.
- **Bench**: a trivial-addon variant (`bench/trivial.py`, sets `Authorization` from a constant: the limit for any
  addon), apim-mi's hook set doing nothing (`bench/hookset.py`: the limit for an addon with these hooks), proxy CPU per
  request, the hooks' own CPU inside the live proxy (`bench/timed.py`), micro costs as CPU-time medians, `--rounds`,
  `bench/pyspy.py`. The micro policy case now reuses one `GatewayState` across flows, as the addon does (it made one
  per flow, whose random seeding alone was ≈ 11 µs of the "before" figure).

### What is left

- **The targets, read on a machine like the ninth pass's.** This report is the run of 13:18 UTC on the ninth pass's
  code (every target met: 1 rule 0.95, 10 000 rules 0.96, the APIM policy 0.86, the trivial addon 1.01; added p50
  0.036 ms; hooks 11.4 and 68.1 µs). Since then the policy's hooks lost 12.2 % of their instructions (527.5k →
  462.9k per flow). On today's slower machine the throughput targets, which are ratios to bare, were met in three
  of four runs and pooled (100 % of the policy's bootstrap medians at or above 0.85, 87 % for 1 rule at 0.95); of
  the absolute ones only 1 rule's micro loop (about 31 µs, ≤ 40) is met: there, one bare request costs three times
  the CPU it did in the 13:18 run, the policy's micro loop reads about 150 µs (≤ 120) and 1 rule's added p50 0.138–
  0.170 ms (≤ 0.15). The issue is blocked on that: closing it
  needs whole `scripts/bench` runs of today's code on a machine like the ninth pass's (bare mitmdump about 760 µs
  of CPU per request), pooled with `bench/pooled.py`. Where only slower machines are at hand, the two absolute
  targets would have to be restated against bare mitmdump measured in the same run (in the 13:18 run, 120 µs was
  0.16 of a bare request's CPU and 40 µs 0.05); that is the issue's author's call.
- **Where the policy's CPU goes.** Its hooks run about 463k instructions per flow against the fast path's 93k: half
  of it the engine path's plumbing, whose pieces are measured above (the summary, redaction and the sent-token check
  the largest), half its statements and expressions. Live, the data it touches misses the first-level cache that
  mitmproxy's own work between two flows has filled, and what the flow keeps waits for the collector. py-spy on the
  live proxy puts mitmproxy's own hook dispatch (`trigger_event`, `_iter_hooks`, `traverse`: about a third of all
  samples) far ahead of any apim-mi function.
- **Next cuts.** The summary's comment (about 13k per flow, made on both paths) and the record's trace (37 tracked
  objects per policy flow, each one entry's data) are the largest pieces left; then the sent-token check and the
  echo check, each 2–4 %. The statements' own share is spread over evaluation (closures, trace entries),
  `MultiMap.set` and the managed-identity step.
"""


def _short(text: Any, n: int = 200) -> str:
    t = " ".join(str(text or "").split())
    return (t[: n - 1] + "…") if len(t) > n else t


def _med(values: list[float]) -> float:
    return spread(values)["median"]


# -- plot ------------------------------------------------------------------------------------------------------


def plot(res: dict[str, Any], s: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    thr = res.get("throughput", {})
    summ = summarize_throughput(thr, s) if thr.get("runs") else {}
    lo, hi = min(s.concs), max(s.concs)
    ax = axes[0][0]
    if summ:
        names = list(summ)
        med = [summ[n][hi]["ratio"]["median"] for n in names]
        err = [
            [m - summ[n][hi]["ratio"]["min"] for n, m in zip(names, med, strict=True)],
            [summ[n][hi]["ratio"]["max"] - m for n, m in zip(names, med, strict=True)],
        ]
        ax.bar(
            range(len(names)), med, yerr=err, capsize=4, color=["#888", "#4c72b0", "#55a868", "#c44e52"][: len(names)]
        )
        ax.axhline(0.95, ls="--", c="k", lw=0.8)
        ax.axhline(0.90, ls=":", c="k", lw=0.8)
        ax.set_xticks(range(len(names)), [n.replace("addon, ", "addon\n") for n in names], fontsize=8)
        ax.set_ylim(0, max(1.2, max(med) + 0.1))
    ax.set_title(f"(1) throughput / bare mitmdump, c={hi} (targets 0.95 / 0.90)")
    ax = axes[0][1]
    if summ:
        names = list(summ)
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [summ[n][lo]["p50_ms"]["median"] for n in names], 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [summ[n][lo]["p99_ms"]["median"] for n in names], 0.4, label="p99")
        ax.set_xticks(list(x), [n.replace("addon, ", "addon\n") for n in names], fontsize=8)
        ax.set_ylabel("ms")
        ax.legend()
    ax.set_title(f"(1) latency through mitmdump, c={lo}")
    ax = axes[1][0]
    cold = res.get("cold", {}).get("runs", {})
    names = [n for n in VARIANTS2 if cold.get(n)]
    if names:
        x = range(len(names))
        ax.bar(
            [i - 0.2 for i in x],
            [_med([r["token_requests"] for r in cold[n]]) for n in names],
            0.4,
            label="token requests",
        )
        ax2 = ax.twinx()
        ax2.bar(
            [i + 0.2 for i in x],
            [_med([r["ttfb_last_ms"] for r in cold[n]]) / 1000 for n in names],
            0.4,
            color="#c44e52",
            label="TTFB of last client (s)",
        )
        ax.set_yscale("log")
        ax2.set_yscale("log")
        ax.set_ylim(bottom=0.5)
        ax2.set_ylim(bottom=0.1)
        ax.set_xticks(list(x), names)
        ax.set_ylabel("token requests (log)")
        ax2.set_ylabel("last client's TTFB, s (log)")
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_title(f"(2) cold start, {s.cold_clients} concurrent clients, emulator {s.latency_ms} ms")
    ax = axes[1][1]
    exp = res.get("expiry", {}).get("runs", {})
    for name, color in zip(VARIANTS2, ("#4c72b0", "#c44e52", "#dd8452"), strict=True):
        r = exp.get(name)
        if r:
            pts = r["series"]
            ax.scatter([p[0] for p in pts], [max(p[1], 0.1) for p in pts], s=2, alpha=0.4, color=color, label=name)
    if exp:
        ax.axvspan(0.7 * s.lifetime, s.lifetime + 3, color="#ddd", alpha=0.5, label="expiry window")
        ax.axvline(s.lifetime, c="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("s since the first token")
        ax.set_ylabel("request latency, ms (log)")
        ax.legend(fontsize=8, markerscale=4)
    ax.set_title(f"(2) across a token expiry (lifetime {s.lifetime} s)")
    fig.suptitle("apim-mi benchmarks" + (" (smoke)" if s.smoke else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    if shutil.which("wrk"):
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        gen = (wrk.stdout + wrk.stderr).split("[")[0].strip() or "wrk"
    else:
        gen = "load generator: Python asyncio client (wrk not installed; lower ceiling, ratios still side by side)"
    return {"mitmproxy": version("mitmproxy"), "azure_identity": version("azure-identity"), "wrk": gen}


def _render(res: dict[str, Any], s: Settings, out: Path, png: Path) -> dict[str, Any]:
    res = json.loads(json.dumps(res, default=str))  # the same shapes whether fresh or loaded (int keys → str)
    for t in (res.get("throughput") or {}).get("runs", {}).values():
        for c in list(t):
            t[int(c)] = t.pop(c)
    report, facts = build_report(res, s)
    report += streaming.report(res.get("streaming"), s.smoke)
    facts.update({f"streaming {k}": v for k, v in streaming.facts(res.get("streaming") or {}).items()})
    report = report.replace(
        "\n## Targets", f"\nWall time of this run: {res['meta']['duration_s']:.0f} s.\n\n## Targets", 1
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    try:
        plot(res, s, png)
    except Exception:
        log(f"plot failed: {traceback.format_exc()}")
    return facts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds per section, no verdicts")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--png", type=Path, default=None, help="plot (default: next to --out, .png)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    ap.add_argument("--sections", default="throughput,cold,expiry,micro,streaming")
    ap.add_argument("--from-json", type=Path, default=None, help="re-render the report and plot from saved results")
    ap.add_argument("--rounds", type=int, default=None, help="throughput rounds (default 4; more on a busy machine)")
    ap.add_argument("--copies", type=int, default=None,
                    help="mitmdump processes per throughput variant (default 4: one per round)")  # fmt: skip
    ap.add_argument("--pyspy", type=Path, default=None, help="a bench/pyspy.py report to include (with --from-json)")
    ap.add_argument("--pooled", type=Path, default=None, help="a bench/pooled.py table to include (with --from-json)")
    args = ap.parse_args()
    if args.copies is not None and args.copies < 1:
        ap.error(f"--copies must be at least 1 (got {args.copies})")
    s = Settings.make(args.smoke)
    if args.rounds:
        s.rounds = args.rounds
    if args.copies:
        s.copies = args.copies
    png = args.png or args.out.with_suffix(".png")
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        if args.pyspy:
            res["pyspy"] = args.pyspy.read_text()
        if args.pooled:
            res["pooled"] = args.pooled.read_text()
        shown = Settings.make(bool(res["meta"]["smoke"]))
        shown.rounds = res["meta"].get("rounds") or args.rounds or shown.rounds  # the run's, not the default
        _render(res, shown, args.out, png)
        return 0
    sections = set(args.sections.split(","))
    if not shutil.which("wrk"):
        log("wrk is not installed; section 1 uses the (slower) Python load generator instead")
    pin, pin_desc = common.pinning()
    tmp = Path(tempfile.mkdtemp(prefix="apim-mi-bench-"))
    started = time.time()
    res: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": f"{platform.machine()} Linux {platform.release()}",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pinning": pin_desc,
            "smoke": s.smoke,
            "copies": s.copies,
            "rounds": s.rounds,
            "paired": True,
            "loadavg": [round(os.getloadavg()[0], 2)],
            **_versions(),
        }
    }
    from apim_mi.emulator import EmulatorConfig, EmulatorThread

    backend = common.start_backend()
    emu = EmulatorThread(EmulatorConfig())
    emu.start()
    ctx = {
        "backend": backend,
        "emu": emu,
        "env": clean_env(emu.env("imds")),
        "tmp": tmp,
        "pin": pin,
        "files": rulegen.write_rules(tmp, f"127.0.0.1:{backend.port}", s.big_rules),
    }
    micro_procs = None
    try:
        for name, fn in (("throughput", section_throughput), ("cold", section_cold), ("expiry", section_expiry)):
            if name not in sections:
                continue
            if name == "expiry" and s.smoke and "micro" in sections:
                micro_procs = start_micro(s, ctx)  # smoke: overlap the micro section with the (idle) expiry wait
            log(f"section {name} …")
            try:
                res[name] = fn(s, ctx)
            except Exception as e:
                res[name] = {"errors": {"all": f"{type(e).__name__}: {e}"}, "trace": traceback.format_exc()}
                log(f"section {name} failed: {traceback.format_exc()}")
        if "micro" in sections:
            log("section micro …")
            res["micro"] = finish_micro(s, ctx, micro_procs or start_micro(s, ctx))
        if "streaming" in sections:
            log("section streaming …")
            try:
                res["streaming"] = streaming.section(s.smoke, ctx)
            except Exception as e:
                res["streaming"] = {"errors": {"all": f"{type(e).__name__}: {e}"}, "trace": traceback.format_exc()}
                log(f"section streaming failed: {traceback.format_exc()}")
    finally:
        emu.stop()
        backend.stop()
    res["meta"]["duration_s"] = round(time.time() - started, 1)
    res["meta"]["loadavg"] = [res["meta"]["loadavg"][0], round(os.getloadavg()[0], 2)]
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    facts = _render(res, s, args.out, png)
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {args.out} and {png} in {res['meta']['duration_s']:.0f} s")
    print(json.dumps(facts, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
