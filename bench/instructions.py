"""Machine instructions per flow of apim-mi's hooks, counted by valgrind (cachegrind): within a few thousand of the
same count on every run (the random flow ids and the collections the flows trigger move it a little), whatever else
the machine is doing, so a change of a few per cent shows where timings on a shared machine cannot.

    python bench/instructions.py                  # 1 rule and the APIM policy, 1 000 flows each (about 2 minutes)
    python bench/instructions.py --variants policy --flows 500

Each variant runs twice under ``valgrind --tool=cachegrind --cache-sim=no`` in a fresh process (hash seed fixed):
once making the flows and driving request + responseheaders + response on them, once only making them. The
difference over the number of flows is the hooks' instructions per flow. Interpreter start-up and the warm-up cancel
out. Counts are per build of Python and mitmproxy, so compare two commits on one machine, not with other machines.
Fewer bytecodes do not always mean fewer instructions: on CPython 3.13, ``map``/``zip`` over a five-header list cost
more than the comprehension they replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from micro import TARGET_HOST, StubCredential  # noqa: E402
from rulegen import BENCH, policy_rules_text, rules_text  # noqa: E402

VARIANTS = ("one", "policy")
WARM = 300


def drive(variant: str, flows: int, hooks: bool) -> None:
    """In this process: load the variant's rules, warm up, then make ``flows`` flows (and run the hooks on them)."""
    from apim_mi.addon import ApimMi
    from apim_mi.tokens import TokenProvider
    from mitmproxy.test import taddons, tflow, tutils

    tmp = Path(tempfile.mkdtemp(prefix="apim-mi-instructions-"))
    (tmp / "bench-policy.xml").write_text((BENCH / "policy.xml").read_text())
    rules = tmp / "rules.yaml"
    rules.write_text(policy_rules_text(TARGET_HOST) if variant == "policy" else rules_text(1, TARGET_HOST))
    host, port = TARGET_HOST.split(":")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    addon = ApimMi()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, mi_rules=str(rules), mi_credential="managed-identity")

        async def setup() -> None:
            addon.tokens = TokenProvider(lambda s, c: StubCredential(), timeout=5)
            addon._ready = asyncio.get_running_loop().create_future()
            addon._ready.set_result(None)

        loop.run_until_complete(setup())

        def make_flow() -> Any:
            f = tflow.tflow(req=tutils.treq(host=host, port=int(port), path=b"/api/orders/42",
                                            headers=((b"host", TARGET_HOST.encode()), (b"x-tenant", b"fabrikam"))))
            f.request.scheme = "http"
            return f

        async def with_hooks() -> Any:
            f = make_flow()
            if (pending := addon.request(f)) is not None:
                await pending
            f.response = tutils.tresp()
            if inspect.isawaitable(pending := addon.responseheaders(f)):
                await pending
            if (pending := addon.response(f)) is not None:
                await pending
            return f

        async def without() -> None:
            f = make_flow()
            f.response = tutils.tresp()

        for _ in range(WARM):  # checked here, not while counting: the check would be counted with the hooks
            flow = loop.run_until_complete(with_hooks())
            if b"authorization" not in {name.lower() for name, _ in flow.request.data.headers.fields}:
                raise SystemExit(f"no token injected: {flow.comment}")
        gc.collect()
        gc.freeze()  # a full collection of the start-up heap would land in one run and not the other
        once = with_hooks if hooks else without
        for _ in range(flows):
            loop.run_until_complete(once())
    loop.close()
    shutil.rmtree(tmp, ignore_errors=True)


def count(variant: str, flows: int, hooks: bool) -> int:
    """Instructions of one child process that drives ``flows`` flows."""
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", sys.executable,
           __file__, "--child", variant, "--flows", str(flows)] + (["--hooks"] if hooks else [])  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(HERE.parent / "addon"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed ({out.returncode}): {out.stderr[-800:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="one,policy")
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--hooks", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        drive(args.child, args.flows, args.hooks)
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {', '.join(map(repr, unknown))}: choose from {', '.join(VARIANTS)}")
    if args.flows < 1:
        ap.error(f"--flows must be at least 1 (got {args.flows})")
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    for variant in variants:
        with ThreadPoolExecutor(2) as pool:  # the two runs side by side: the counts do not depend on the load
            runs = [pool.submit(count, variant, args.flows, hooks) for hooks in (True, False)]
            per_flow = (runs[0].result() - runs[1].result()) / args.flows
        print(f"{variant}: {per_flow:,.0f} instructions per flow ({args.flows} flows)", flush=True)


if __name__ == "__main__":
    main()
