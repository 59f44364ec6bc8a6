"""The benchmark harness in smoke mode (tiny sizes, no thresholds), so ``scripts/bench`` cannot rot.

Runs ``bench/harness.py --smoke`` (what ``scripts/bench --smoke`` runs after setup) against real mitmdump processes,
the emulator and the fast backend, all on loopback, and checks that the report has every section and that every
number in its tables is finite. The plot is checked when matplotlib (the ``bench`` extra) is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SECTIONS = (
    "## Targets",
    "## Setup",
    "## 1. Throughput and added latency through mitmdump",
    "## 2. Cold start",
    "## 3. Micro costs",
    "## 4. Streaming",
)
NUMBER = re.compile(r"(?<![\w.])-?\d[\d ]*(?:\.\d+)?")
# what the report prints for a value that is missing or not finite (a whole table cell, or its median)
MISSING = re.compile(r"(?:n/a|nan|-?inf)(?: \[.*\])?(?: ms| s| MiB| µs|×)?", re.I)


@pytest.mark.timeout(240)
def test_bench_smoke(tmp_path: Path) -> None:
    out, raw = tmp_path / "benchmarks.md", tmp_path / "benchmarks.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "harness.py"), "--smoke", "--out", str(out), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=220,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = out.read_text()
    for heading in SECTIONS:
        assert heading in report, f"missing section {heading!r}:\n{report}"
    assert "Across a token expiry" in report
    # nothing failed to be measured: no section or cell says so (prose, code and profile text may say anything)
    assert "not measured" not in report, report

    # every table row of every section carries numbers, and all of them are finite
    rows = [ln for ln in report.splitlines() if ln.startswith("| ") and not ln.startswith("| ---")]
    assert len(rows) > 25
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        bad = [part for c in cells for part in re.split(r" / |, ", c) if MISSING.fullmatch(part.strip())]
        assert not bad, f"a value is missing in {row!r}"
    for section in ("bare mitmdump", "addon, 1 rule", "addon, APIM policy", "apim-mi addon", "naive sync",
                    "naive async", "spread/10000", "header lookup", "stream_large_bodies=1m"):  # fmt: skip
        assert any(section in r and NUMBER.search(r) for r in rows), f"no numbers for {section!r}:\n{report}"

    results = json.loads(raw.read_text())
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts and all(isinstance(v, int | float) and math.isfinite(v) for v in facts.values()), facts
    runs = results["throughput"]["runs"]
    assert set(runs) >= {"bare mitmdump", "addon, 1 rule", "addon, APIM policy"}
    for name, by_conc in runs.items():
        for samples in by_conc.values():
            for s in samples:
                assert math.isfinite(s["rps"]) and s["rps"] > 0 and s["errors"] == 0, (name, s)
                if name != "bare mitmdump":
                    assert s["injected_share"] == 1.0, (name, s)  # a token on every timed request
                    assert s["bare"]["rps"] > 0 and s["bare"]["cpu_us_per_request"] > 0, (name, s)  # its own pair
    cold = results["cold"]["runs"]
    assert cold["apim-mi addon"][0]["token_requests"] == 1  # single-flight, even in smoke
    assert all(r["failed"] == 0 for rs in cold.values() for r in rs)
    assert results["expiry"]["runs"]["apim-mi addon"]["failed"] == 0
    streamed = results["streaming"]
    assert facts["streaming token_share"] == 1.0  # every streamed answer went through the rule with its token
    for row in streamed["big"].values():  # every byte went down and up through the streaming variants
        assert row["down_bytes"] == row["up_bytes"] == streamed["settings"]["big"], row

    if importlib.util.find_spec("matplotlib") is not None:
        png = out.with_suffix(".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the run pooled with itself (bench/pooled.py), and the report re-rendered with that table
    table = tmp_path / "pooled.md"
    pooled = subprocess.run([sys.executable, str(ROOT / "bench" / "pooled.py"), str(raw), str(raw), "--out",
                             str(table)], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert pooled.returncode == 0, pooled.stderr
    again = tmp_path / "again.md"
    rendered = subprocess.run([sys.executable, str(ROOT / "bench" / "harness.py"), "--from-json", str(raw),
                               "--pooled", str(table), "--out", str(again)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-4000:]
    section = again.read_text().split("### Several runs pooled")[1].split("###")[0]
    row = next(line for line in section.splitlines() if line.startswith("| addon, APIM policy |"))
    assert f"| {2 * len(runs['addon, APIM policy']['8'])} |" in row  # every round of both copies of the run


def test_bench_refuses_fewer_than_one_process_per_variant() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "harness.py"), "--copies", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "--copies must be at least 1 (got 0)" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_per_flow() -> None:
    """``bench/instructions.py`` counts the hooks' instructions per flow under valgrind: a positive count for each
    variant, and more for the APIM policy (the engine path) than for one shorthand rule (the fast path)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "instructions.py"), "--flows", "30"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"^(\w+): ([\d,]+) instructions per flow",
                                                                     proc.stdout, re.M)}  # fmt: skip
    assert set(counts) == {"one", "policy"}, proc.stdout
    assert 0 < counts["one"] < counts["policy"], counts


@pytest.mark.parametrize(("args", "message"), [
    (["--variants", "one,nope"], "unknown variant 'nope': choose from one, policy"),
    (["--flows", "0"], "--flows must be at least 1 (got 0)"),
])  # fmt: skip
def test_instruction_counts_refuse_bad_arguments(args: list[str], message: str) -> None:
    """A bad variant or flow count is a usage error (exit 2) before anything runs, not a traceback midway."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "instructions.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_gc_stats_counts_the_collections_that_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench/gcstats.py`` adds up the collector's own time by generation, from the collections that really ran,
    and writes it every ``GCSTATS_EVERY`` answered flows."""
    import gc

    from mitmproxy.test import tflow

    out = tmp_path / "gc.json"
    monkeypatch.setenv("GCSTATS_OUT", str(out))
    monkeypatch.setenv("GCSTATS_EVERY", "2")
    spec = importlib.util.spec_from_file_location("gcstats", ROOT / "bench" / "gcstats.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stats = module.addons[0]
    try:
        gc.collect(0)
        gc.collect(1)
        gc.collect(2)
        stats.response(tflow.tflow(resp=True))
        assert not out.exists()  # one flow: not yet
        stats.response(tflow.tflow(resp=True))
    finally:
        gc.callbacks.remove(stats._callback)
    written = json.loads(out.read_text())
    assert written["flows"] == 2 and all(n >= 1 for n in written["collections"]), written
    assert written["gc_us"] > 0 and written["per_flow_us"] == written["gc_us"] / 2
    assert abs(sum(written["us_by_gen"]) - written["gc_us"]) < 1e-6 * written["gc_us"] + 1e-9
