"""Load and soak test: many requests through a real mitmdump across several token lifetimes and one rules reload.

Loopback only: the emulator (short token lifetimes), the validating backend and mitmdump all listen on 127.0.0.1,
and mitmdump's environment holds only the emulator's managed-identity variables.

    scripts/soak                 # the full run: 20 000 requests, concurrency 50, >= 3 lifetimes, one reload
    scripts/soak --short         # the CI variant (seconds)
    scripts/soak --json out.json

Pass criteria (exit code 1 otherwise): no 5xx and no other failure, the backend accepted every request's token,
token requests at the emulator = token lifetimes the run spans (±1), mitmdump's RSS stable (< 25 % growth after
warm-up), and the reload was applied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addon"))

AUDIENCE = "api://00000000-0000-0000-0000-00000000a11c"
_ENV_DROP = re.compile(r"^(AZURE_|IDENTITY_|MSI_|IMDS_|HTTPS?_PROXY$|ALL_PROXY$)", re.I)


@dataclass
class SoakResult:
    requests: int
    concurrency: int
    lifetime_s: int
    duration_s: float
    statuses: dict[str, int]
    backend_accepted: int
    backend_rejected: int
    token_requests: int
    lifetimes_crossed: int
    rss_kib: list[int]
    reload_applied: bool
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def rules_text(name: str) -> str:
    return f'rules:\n  - name: "{name}"\n    match: {{host: 127.0.0.1, path: /api}}\n    resource: "{AUDIENCE}"\n'


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_mitmdump(
    rules: Path, backend_url: str, env: dict[str, str], confdir: Path
) -> tuple[subprocess.Popen[str], int, list[str]]:
    cmd = [
        str(Path(sys.executable).parent / "mitmdump"), "--listen-host", "127.0.0.1", "--listen-port", "0",
        "--mode", f"reverse:{backend_url}", "--flow-detail", "0", "--set", f"confdir={confdir}",
        "-s", str(ROOT / "addon" / "mi.py"), "--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity",
    ]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not _ENV_DROP.match(k)}
    proc = subprocess.Popen(cmd, env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(lines):
            m = re.search(r"listening at 127\.0\.0\.1:(\d+)", line)
            if m and any("tokens are injected only for" in x for x in lines):
                return proc, int(m.group(1)), lines
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mitmdump did not start:\n" + "\n".join(lines))


async def load(
    port: int, total: int, concurrency: int, min_duration: float, on_half: object
) -> tuple[Counter[str], float]:
    import httpx

    statuses: Counter[str] = Counter()
    sent = 0
    start = time.monotonic()
    half_done = False

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, half_done
        while sent < total or time.monotonic() - start < min_duration:
            sent += 1
            if not half_done and time.monotonic() - start >= min_duration / 2 and sent >= total // 2:
                half_done = True
                on_half()  # type: ignore[operator]
            try:
                r = await client.get(f"http://127.0.0.1:{port}/api/{sent}")
                statuses[str(r.status_code)] += 1
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(trust_env=False, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses, time.monotonic() - start


def soak(total: int, concurrency: int, lifetime: int, lifetimes: float) -> SoakResult:
    from apim_mi.backend import DemoBackendThread
    from apim_mi.emulator import EmulatorConfig, EmulatorThread

    work = Path(tempfile.mkdtemp(prefix="apim-mi-soak-"))
    rules = work / "rules.yaml"
    rules.write_text(rules_text("soak"))
    with EmulatorThread(EmulatorConfig(token_lifetime=lifetime)) as emu, DemoBackendThread(
        jwks_uri=emu.jwks_uri, issuer=emu.issuer, audiences=[AUDIENCE]
    ) as backend:
        proc, port, lines = start_mitmdump(rules, backend.url, emu.env("imds"), work / "confdir")
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append(rss_kib(proc.pid))

        threading.Thread(target=sample, daemon=True).start()

        def reload_rules() -> None:
            rules.write_text(rules_text("soak (reloaded)"))

        try:
            statuses, duration = asyncio.run(load(port, total, concurrency, lifetime * lifetimes, reload_rules))
        finally:
            stop.set()
            proc.terminate()
            proc.wait(15)
        stats = emu.stats()
        bstats = backend.stats()
        token_requests = stats.count(AUDIENCE)
        crossed = math.floor(duration / lifetime)
        result = SoakResult(
            requests=sum(statuses.values()), concurrency=concurrency, lifetime_s=lifetime,
            duration_s=round(duration, 1), statuses=dict(statuses), backend_accepted=bstats.accepted,
            backend_rejected=bstats.rejected, token_requests=token_requests, lifetimes_crossed=crossed,
            rss_kib=samples, reload_applied=any("rules reloaded" in x for x in lines),
        )  # fmt: skip
    check(result)
    return result


def check(r: SoakResult) -> None:
    bad = {k: v for k, v in r.statuses.items() if k != "200"}
    if bad:
        r.failures.append(f"non-200 answers: {bad}")
    if r.backend_accepted != r.requests or r.backend_rejected:
        r.failures.append(
            f"backend accepted {r.backend_accepted} of {r.requests} tokens ({r.backend_rejected} rejected)"
        )
    if r.lifetimes_crossed < 3:
        r.failures.append(f"only {r.lifetimes_crossed} token lifetimes crossed (3 needed)")
    begun = math.ceil(r.duration_s / r.lifetime_s)  # token lifetimes the run touched
    if not (begun - 1 <= r.token_requests <= begun + 1):  # ±1: whole-second expiry and the wait at each expiry
        r.failures.append(f"{r.token_requests} token requests in {begun} token lifetimes")
    if not r.reload_applied:
        r.failures.append("the rules reload was not applied")
    warm = r.rss_kib[len(r.rss_kib) // 4 :]
    if len(warm) >= 4 and max(warm) > 1.25 * warm[0]:
        r.failures.append(f"RSS grew from {warm[0]} KiB to {max(warm)} KiB after warm-up")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--lifetime", type=int, default=15, help="emulator token lifetime in seconds")
    p.add_argument("--lifetimes", type=float, default=3.3, help="minimum run length, in token lifetimes")
    p.add_argument("--short", action="store_true", help="CI variant: 2 000 requests, 4 s tokens")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    args = p.parse_args(argv)
    if args.short:
        args.requests, args.lifetime, args.lifetimes = 2_000, 4, 3.3
    print(f"soak: {args.requests} requests, concurrency {args.concurrency}, token lifetime {args.lifetime} s, "
          f">= {args.lifetimes} lifetimes, one rules reload", flush=True)
    r = soak(args.requests, args.concurrency, args.lifetime, args.lifetimes)
    summary = {**asdict(r), "rss_kib": {"first": r.rss_kib[:1], "max": max(r.rss_kib, default=0),
                                        "last": r.rss_kib[-1:]}, "ok": r.ok}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
