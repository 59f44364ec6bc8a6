"""``bench/pooled.py``: several benchmark runs' paired rounds read as one, and the report that includes the table.

The runs are synthetic results in the shape ``scripts/bench --json`` writes (the real harness is exercised by
test_bench_smoke.py); their ratios are chosen so that the pooled medians and shares are known in advance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import pooled  # noqa: E402  (bench/ is not a package)

BARE_CPU = 800.0


def _round(cpu_ratio: float, rps_ratio: float) -> dict[str, object]:
    return {"rps": 1000.0 * rps_ratio, "cpu_us_per_request": BARE_CPU / cpu_ratio,
            "bare": {"rps": 1000.0, "cpu_us_per_request": BARE_CPU}}  # fmt: skip


def _run(date: str, variants: dict[str, list[float]]) -> dict[str, object]:
    runs: dict[str, dict[str, list[dict[str, object]]]] = {"bare mitmdump": {"16": [{"rps": 1000.0}]}}
    for name, ratios in variants.items():
        runs[name] = {"16": [_round(r, r) for r in ratios], "1": [_round(0.5, 0.5)]}
    return {"meta": {"date": date, "smoke": False}, "throughput": {"runs": runs}}


RUNS = [
    _run("run A", {"addon, APIM policy": [0.84, 0.86, 0.87, 0.88], "addon, 1 rule": [0.97, 0.97, 0.97, 0.97]}),
    _run("run B", {"addon, APIM policy": [0.83, 0.86, 0.87, 0.90], "addon, 1 rule": [0.90, 0.90, 0.90, 0.90]}),
    _run("run C", {"addon, APIM policy": [0.86, 0.86, 0.86, 0.86], "trivial addon": [1.0, 1.0, 1.0, 1.0]}),
]


def test_pools_every_paired_round_against_its_own_bare() -> None:
    rounds = pooled.paired_rounds(RUNS, "16")
    assert len(rounds["addon, APIM policy"]) == 12
    assert len(rounds["addon, 1 rule"]) == 8
    assert "bare mitmdump" not in rounds
    first = rounds["addon, APIM policy"][0]
    assert abs(first.cpu_ratio - 0.84) < 1e-9 and abs(first.ratio - 0.84) < 1e-9
    assert abs(first.added_us - (BARE_CPU / 0.84 - BARE_CPU)) < 1e-6


def test_median_interval_and_share_against_the_target() -> None:
    conc, table = pooled.pooled_runs(RUNS)
    assert conc == "16"
    policy, one, trivial = table["addon, APIM policy"], table["addon, 1 rule"], table["trivial addon"]
    assert policy.rounds == 12 and abs(policy.cpu_median - 0.86) < 1e-9
    assert policy.low <= policy.cpu_median <= policy.high
    assert policy.target == 0.85 and policy.share is not None and policy.share > 0.9  # 10 of 12 rounds clear it
    assert abs(one.cpu_median - 0.935) < 1e-9 and one.target == 0.95
    assert one.share is not None and one.share < 0.6  # half the rounds at 0.90: not clearly met
    assert trivial.target is None and trivial.share is None
    assert pooled.pooled_runs(RUNS) == pooled.pooled_runs(RUNS)  # a fixed seed: the same table every time


def test_cli_writes_the_table_and_the_report_includes_it(tmp_path: Path) -> None:
    files = []
    for i, run in enumerate(RUNS):
        files.append(tmp_path / f"run{i}.json")
        files[-1].write_text(json.dumps(run))
    out = tmp_path / "pooled.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pooled.py"), *map(str, files), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = out.read_text()
    assert "3 whole runs pooled (run A, run B, run C)" in table
    row = next(line for line in table.splitlines() if line.startswith("| addon, APIM policy |"))
    assert "| 12 | 0.860 | 0.860 [" in row and "| ≥ 0.85 |" in row

    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pooled.py"), str(bad)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "broken.json: not a scripts/bench --json file" in proc.stderr
    assert "Traceback" not in proc.stderr
