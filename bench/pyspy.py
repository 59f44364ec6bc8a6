"""Where the live proxy's CPU goes: py-spy samples a real mitmdump (reverse mode, the benchmark backend, the
emulator's tokens) while wrk keeps it busy, and the samples are summed per function (own time) and per apim-mi
function (inclusive time), as Markdown.

    .venv/bin/python bench/pyspy.py [--variant 1rule|policy|bare] [--seconds 10] [--conns 8] [--out FILE]

Needs py-spy (``pip install py-spy``, in the ``bench`` extra) and permission to ptrace the child (root, or
``kernel.yama.ptrace_scope=0``). Loopback only, like the rest of the benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import rulegen
from common import clean_env

ADDON = str(common.ROOT / "addon" / "mi.py")


def collapse(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, samples per function where it was on top (own time), and per apim_mi function anywhere on the
    stack (inclusive time, counted once per sample)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[_short(frames[-1])] += n
        for name in {_short(f) for f in frames if "apim_mi" in f}:
            inclusive[name] += n
    return total, own, inclusive


def _short(frame: str) -> str:
    """``function (path/to/module.py:123)`` → ``module.py:function``."""
    name, _, where = frame.partition(" (")
    module = where.rstrip(")").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{module}:{name.strip()}"


def table(title: str, counts: collections.Counter[str], total: int, top: int) -> list[str]:
    out = [f"| {title} | share of samples |", "| --- | --- |"]
    out += [f"| `{name}` | {n / max(total, 1):.1%} |" for name, n in counts.most_common(top)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=("1rule", "policy", "bare"), default="1rule")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    from apim_mi.emulator import EmulatorConfig, EmulatorThread

    tmp = Path(tempfile.mkdtemp(prefix="apim-mi-pyspy-"))
    backend = common.start_backend()
    emu = EmulatorThread(EmulatorConfig())
    emu.start()
    md = None
    try:
        files = rulegen.write_rules(tmp, f"127.0.0.1:{backend.port}", big=1)
        extra: list[str] = []
        if args.variant != "bare":
            rules = files["one"] if args.variant == "1rule" else files["policy"]
            extra = ["-s", ADDON, "--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity"]
        pin, _ = common.pinning()
        md = common.start_mitmdump(
            "profiled", backend.port, extra, env=clean_env(emu.env("imds")), confdir=tmp / "confdir", pin=pin
        )
        status, body = common.http_get(md.port, "/api/warmup")
        if status != 200:
            raise RuntimeError(f"warm-up answered {status}: {body[:200]!r}")
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds + 4}s", f"http://127.0.0.1:{md.port}/api/orders/42"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
        )
        time.sleep(2)
        raw = tmp / "samples.txt"
        subprocess.run(
            [pyspy, "record", "--pid", str(md.proc.pid), "--duration", str(args.seconds), "--rate", str(args.rate),
             "--format", "raw", "--output", str(raw), "--nonblocking"],
            check=True, capture_output=True, timeout=args.seconds + 60,
        )  # fmt: skip
        wrk.wait(timeout=args.seconds + 30)
        total, own, inclusive = collapse(raw.read_text())
    finally:
        if md is not None:
            md.stop()
        emu.stop()
        backend.stop()
    lines = [
        f"py-spy on the live mitmdump ({args.variant}, `wrk -c{args.conns}`, {args.seconds} s at {args.rate} Hz: "
        f"{total} samples)",
        "",
        *table("function (own time)", own, total, args.top),
        "",
        *table("apim-mi function (inclusive)", inclusive, total, args.top),
        "",
    ]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
