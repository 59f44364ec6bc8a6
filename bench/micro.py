"""Micro costs, in-process: rule match, expression evaluation, policy execution per flow, the addon's hooks per flow,
and (``--load FILE``, in a fresh process) load time and memory of a rules file. Prints one JSON object.

    python bench/micro.py [--quick] [--profile]        # match / expressions / policy / hooks
    python bench/micro.py --load rules-10000.yaml      # load time + RSS of one file (run it in a fresh process)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import inspect
import io
import json
import pstats
import sys
import time
import timeit
import traceback
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rulegen import AUDIENCE, BENCH, rules_text

TARGET_HOST = "127.0.0.1:18080"

# Expressions a typical APIM policy evaluates per request (C# subset).
EXPRESSIONS = {
    "header lookup": '@(context.Request.Headers.GetValueOrDefault("X-Tenant", "contoso"))',
    "method compare": '@(context.Request.Method == "DELETE")',
    "path StartsWith": '@(context.Request.Url.Path.StartsWith("/api/admin"))',
    "Bearer + variable": '@("Bearer " + (string)context.Variables["msi-access-token"])',
    "RequestId.ToString()": "@(context.RequestId.ToString())",
    "multi-statement block": '@{ var t = context.Request.Headers.GetValueOrDefault("X-Tenant", "contoso"); '
    'return t.ToUpper() + "-" + context.Request.Method; }',
}


def _status_kib(name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return float(line.split()[1])
    return float("nan")


def per_call_us(fn: Any, min_time: float) -> float:
    """Best of 5 repeats of an auto-sized loop, in microseconds per call.

    Below 0.2 s (``--quick``, the smoke run) the loop is sized to ``min_time / 5`` per repeat instead of timeit's
    0.2 s autorange, so a quick run takes a fraction of a second per measurement."""
    t = timeit.Timer(fn)
    if min_time < 0.2:
        number, took = 1, t.timeit(1)
        while took < min_time / 50:
            number *= 10
            took = t.timeit(number)
        number = max(1, int(number * min_time / 5 / max(took, 1e-9)))
        return min(t.repeat(5, number)) / number * 1e6
    number, took = t.autorange()
    number = max(1, int(number * max(min_time / 5 / max(took, 1e-9), 1)))
    return min(t.repeat(5, number)) / number * 1e6


def cpu_median_us(fn: Any, n: int) -> float:
    """Median CPU time of one call (this thread's, so time the scheduler gives other processes on a shared machine
    is not counted), in microseconds."""
    clock = time.thread_time_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    samples.sort()
    return samples[len(samples) // 2] / 1000


def cpu_median_over_us(base: Any, fn: Any, n: int) -> float:
    """``cpu_median_us(fn) - cpu_median_us(base)`` with the two sampled in turn, call by call, so that a machine whose
    speed drifts weighs on both alike. Sampled in two blocks one after the other, as before, the difference moved by
    up to a quarter between runs on a shared machine; in turn it stays within a few per cent."""
    clock = time.thread_time_ns
    under: list[int] = []
    over: list[int] = []
    for _ in range(n):
        t0 = clock()
        base()
        t1 = clock()
        fn()
        t2 = clock()
        under.append(t1 - t0)
        over.append(t2 - t1)
    under.sort()
    over.sort()
    return (over[n // 2] - under[n // 2]) / 1000


def fake_jwt(lifetime: float = 86400.0) -> tuple[str, float]:
    """A token shaped like the emulator's and Entra's (the same claims, an RS256-sized signature; about 1.5 KB): the
    hooks search and cut tokens, so a short stand-in would make them look cheaper than they are live."""
    exp = time.time() + lifetime

    def b64(o: dict[str, Any] | bytes) -> str:
        raw = o if isinstance(o, bytes) else json.dumps(o).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    oid = "5f0c4b9e-7a51-4a8e-9c1e-2b6f0f1f4c3d"
    payload = {
        "aud": AUDIENCE, "iss": "https://sts.windows.net/bench/", "iat": int(exp) - 86400, "nbf": int(exp) - 86400,
        "exp": int(exp), "aio": b64(bytes(range(48))), "appid": oid, "appidacr": "2",
        "idp": "https://sts.windows.net/bench/", "idtyp": "app", "oid": oid, "rh": "0." + b64(bytes(range(24))) + ".",
        "sub": oid, "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "uti": b64(bytes(range(16))),
        "jti": str(uuid.UUID(int=len(AUDIENCE))), "ver": "1.0",
        "xms_mirid": "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/bench/providers/"
                     "Microsoft.ManagedIdentity/userAssignedIdentities/bench",
    }  # fmt: skip
    header = {"typ": "JWT", "alg": "RS256", "kid": "bench-key", "x5t": "bench-key"}
    return f"{b64(header)}.{b64(payload)}.{b64(bytes(256))}", exp


class StubCredential:
    """Answers at once with a long-lived token: the token cache is warm, as in steady state."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self.calls += 1
        token, exp = fake_jwt()
        return type("AccessToken", (), {"token": token, "expires_on": exp})()

    async def close(self) -> None:
        pass


# -- rule match ------------------------------------------------------------------------------------------------


def bench_match(quick: bool) -> dict[str, Any]:
    from apim_mi.matcher import Matcher, RequestTarget
    from apim_mi.rules import load_rules_text

    host, port = TARGET_HOST.split(":")
    hit = RequestTarget("http", host, int(port), "/api/orders/42", "GET")
    miss = RequestTarget("https", "unknown.example.org", 443, "/api/orders/42", "GET")
    first_host = RequestTarget("https", "svc1.bench.test", 443, "/api/v1/x", "GET")
    out: dict[str, Any] = {}
    layouts = [("spread", (10, 1000, 10_000)), ("one-host", (10, 1000, 10_000)), ("one-host-api", (10, 1000, 10_000))]
    if quick:
        layouts = [("spread", (10, 1000, 10_000)), ("one-host-api", (10, 1000))]
    for layout, sizes in layouts:
        for n in sizes:
            cfg = load_rules_text(rules_text(n, TARGET_HOST, layout=layout), Path(f"/bench/rules-{n}.yaml"))
            m = Matcher(cfg.rules)
            assert m.match(hit) is cfg.rules[-1], "the last rule must be the match"
            row = {
                "last rule matches": per_call_us(lambda m=m: m.match(hit), 0.1 if quick else 0.3),
                "no rule matches": per_call_us(lambda m=m: m.match(miss), 0.1 if quick else 0.3),
            }
            if layout == "spread" and n > 10:
                row["an early rule matches"] = per_call_us(lambda m=m: m.match(first_host), 0.1 if quick else 0.3)
            out[f"{layout}/{n}"] = row
            del cfg, m
            gc.collect()
    return out


# -- expressions -----------------------------------------------------------------------------------------------


def make_context(token: str = "eyJ0eXAi.eyJhdWQi.sig") -> Any:
    from apim_mi.policy.context import Body, Context, Headers, Request, Url

    url = f"http://{TARGET_HOST}/api/orders/42?x=1"
    headers = Headers([("Host", TARGET_HOST), ("User-Agent", "wrk"), ("Accept", "*/*"), ("X-Tenant", "fabrikam")])
    request = Request(
        method="GET",
        url=Url.parse(url),
        headers=headers,
        body=Body(b""),
        ip_address="127.0.0.1",
        original_url=Url.parse(url),
    )
    ctx = Context(request=request, request_id=uuid.uuid4())
    ctx.variables["msi-access-token"] = token
    ctx.variables["tenant"] = "fabrikam"
    return ctx


def bench_expressions(quick: bool) -> dict[str, Any]:
    try:
        from apim_mi.errors import Location
        from apim_mi.policy.expressions import compile_expression
    except Exception as e:
        return {"error": f"expression engine not available: {e!r}"}
    ctx = make_context()
    out: dict[str, Any] = {}
    for name, src in EXPRESSIONS.items():
        try:
            expr = compile_expression(src, Location("bench.xml", 1, 1))
            value = expr.evaluate(ctx)
            out[name] = {
                "source": src,
                "us": per_call_us(lambda e=expr: e.evaluate(ctx), 0.1 if quick else 0.3),
                "value": str(value)[:40],
            }
        except Exception as e:
            out[name] = {"source": src, "error": f"{type(e).__name__}: {e}"[:200]}
    return out


# -- policy execution ------------------------------------------------------------------------------------------


def _policies() -> dict[str, Any]:
    from apim_mi.rules import load_rules_text
    from rulegen import policy_rules_text

    tmp = Path("/tmp") / f"apim-mi-bench-micro-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / "bench-policy.xml").write_text((BENCH / "policy.xml").read_text())
    out: dict[str, Any] = {"shorthand rule": load_rules_text(rules_text(1, TARGET_HOST), tmp / "r1.yaml").rules[0]}
    try:
        (tmp / "rp.yaml").write_text(policy_rules_text(TARGET_HOST))
        out["APIM policy"] = load_rules_text((tmp / "rp.yaml").read_text(), tmp / "rp.yaml").rules[0]
    except Exception as e:
        out["APIM policy"] = e
    return out


def bench_policy(quick: bool) -> dict[str, Any]:
    from apim_mi.policy import engine
    from apim_mi.policy.gateway import GatewayState
    from apim_mi.tokens import TokenProvider
    from apim_mi.trace import Trace

    loop = asyncio.new_event_loop()
    provider = TokenProvider(lambda s, c: StubCredential(), timeout=5)
    state = GatewayState()  # one per addon, shared by every flow (as ApimMi.gateway)
    out: dict[str, Any] = {}
    for name, rule in _policies().items():
        if isinstance(rule, Exception):
            out[name] = {"error": f"{type(rule).__name__}: {rule}"[:300]}
            continue

        async def once(rule: Any = rule) -> engine.PolicyRun:
            ctx = make_context()
            trace = Trace(trace_id=ctx.request_id.hex)
            run = engine.PolicyRun(
                rule.policy, ctx, trace, engine.Services(provider, "managed-identity", state=state), rule_name=rule.name
            )
            await engine.run_inbound(run)
            return run

        try:
            run = loop.run_until_complete(once())
            if run.error is not None or not run.injections:
                raise RuntimeError(f"policy did not inject a token: {run.error or run.trace.to_json()}")
            n = 1500 if quick else 10000
            best = cpu_median_us(lambda: loop.run_until_complete(once()), n)
            # the same loop with nothing inside: what run_until_complete itself costs
            empty = cpu_median_us(lambda: loop.run_until_complete(asyncio.sleep(0)), n)
            out[name] = {"us": best - empty, "statements": sum(1 for _ in rule.policy.statements())}
        except Exception as e:
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    loop.close()
    return out


# -- the addon's hooks per flow --------------------------------------------------------------------------------


def bench_hooks(quick: bool, profile: bool) -> dict[str, Any]:
    """request + responseheaders + response of ApimMi on a mitmproxy test flow, token cache warm."""
    from apim_mi.addon import ApimMi
    from apim_mi.tokens import TokenProvider
    from mitmproxy.test import taddons, tflow, tutils

    out: dict[str, Any] = {}
    host, port = TARGET_HOST.split(":")
    tmp = Path("/tmp") / f"apim-mi-bench-hooks-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / "bench-policy.xml").write_text((BENCH / "policy.xml").read_text())
    from rulegen import policy_rules_text

    files = {
        "1 rule": (tmp / "r1.yaml", rules_text(1, TARGET_HOST)),
        "1 rule, mi_trace=false": (tmp / "r1.yaml", rules_text(1, TARGET_HOST)),
        "10 000 rules": (tmp / "r10k.yaml", rules_text(10_000, TARGET_HOST)),
        "APIM policy": (tmp / "rp.yaml", policy_rules_text(TARGET_HOST)),
    }
    if quick:
        files.pop("10 000 rules")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for name, (path, text) in files.items():
        path.write_text(text)
        try:
            addon = ApimMi()
            with taddons.context(addon) as tctx:
                tctx.configure(
                    addon, mi_rules=str(path), mi_credential="managed-identity", mi_trace="mi_trace=false" not in name
                )
                if addon._startup_error:
                    raise RuntimeError("rules did not load")

                async def setup(addon: ApimMi = addon) -> None:
                    addon.tokens = TokenProvider(lambda s, c: StubCredential(), timeout=5)
                    addon._ready = asyncio.get_running_loop().create_future()
                    addon._ready.set_result(None)

                loop.run_until_complete(setup())

                def make_flow() -> Any:
                    f = tflow.tflow(
                        req=tutils.treq(
                            host=host,
                            port=int(port),
                            path=b"/api/orders/42",
                            headers=((b"host", TARGET_HOST.encode()), (b"x-tenant", b"fabrikam")),
                        )
                    )
                    f.request.scheme = "http"
                    return f

                async def hooks(addon: ApimMi = addon) -> Any:
                    f = make_flow()
                    if (pending := addon.request(f)) is not None:  # sync unless there is async work
                        await pending
                    f.response = tutils.tresp()
                    if inspect.isawaitable(pending := addon.responseheaders(f)):
                        await pending
                    if (pending := addon.response(f)) is not None:  # sync unless there is async work
                        await pending
                    return f

                f = loop.run_until_complete(hooks())
                if "Authorization" not in f.request.headers or f.response.status_code != 200:
                    raise RuntimeError(f"no token injected: {f.comment}")

                async def only_flow() -> Any:
                    f = make_flow()
                    f.response = tutils.tresp()
                    return f

                n = 200 if quick else 1500

                row: dict[str, Any] = {"us": cpu_median_over_us(lambda: loop.run_until_complete(only_flow()),
                                                                lambda: loop.run_until_complete(hooks()), 5 * n)}
                if profile and name in ("1 rule", "APIM policy"):
                    pr = cProfile.Profile()
                    pr.enable()
                    for _ in range(n):
                        loop.run_until_complete(hooks())
                    pr.disable()
                    s = io.StringIO()
                    pstats.Stats(pr, stream=s).strip_dirs().sort_stats("tottime").print_stats(18)
                    row["profile"] = _trim_profile(s.getvalue())
                out[name] = row
        except Exception as e:
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300], "trace": traceback.format_exc()[-800:]}
    loop.close()
    return out


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    head = next((ln.strip() for ln in lines if "function calls" in ln), "")
    return "\n".join([head, *lines[start:]]).rstrip()


# -- load time and memory of a rules file ----------------------------------------------------------------------


def bench_load(path: Path) -> dict[str, Any]:
    import apim_mi.matcher
    import apim_mi.policy.loader
    import apim_mi.rules

    apim_mi.rules.rules_schema()
    gc.collect()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    cfg = apim_mi.rules.load_rules(path)
    t1 = time.perf_counter()
    m = apim_mi.matcher.Matcher(cfg.rules)
    t2 = time.perf_counter()
    gc.collect()
    rss1 = _status_kib("VmRSS")
    return {
        "rules": len(cfg.rules),
        "load_s": t1 - t0,
        "matcher_s": t2 - t1,
        "rss_delta_mib": (rss1 - rss0) / 1024,
        "rss_total_mib": rss1 / 1024,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
        "_keep": len(m.rules),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--load", type=Path)
    ap.add_argument("--only", default="match,expressions,policy,hooks")
    args = ap.parse_args()
    if args.load:
        print(json.dumps(bench_load(args.load)))
        return
    out: dict[str, Any] = {}
    parts = args.only.split(",")
    for part, fn in (
        ("match", lambda: bench_match(args.quick)),
        ("expressions", lambda: bench_expressions(args.quick)),
        ("policy", lambda: bench_policy(args.quick)),
        ("hooks", lambda: bench_hooks(args.quick, args.profile)),
    ):
        if part in parts:
            try:
                out[part] = fn()
            except Exception as e:
                out[part] = {"error": f"{type(e).__name__}: {e}"[:300], "trace": traceback.format_exc()[-1500:]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
