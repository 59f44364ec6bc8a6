"""Several whole runs of ``scripts/bench`` read as one: every paired throughput round of every run, pooled.

One run's headline ratio is a median over its four rounds, and a round's ratio moves by a few per cent with the
machine and with its mitmdump process's luck (hash seed, memory layout). Where a target sits within that, one run
cannot say whether it is met: pooling the rounds of several runs (each against its own bare neighbour) can. For each
variant this gives the median ratio over all rounds, a bootstrap interval of that median, and the share of bootstrap
medians that clear the variant's target.

    bench/pooled.py run1.json run2.json … [--out pooled.md]    # runs written with scripts/bench --json
    bench/harness.py --from-json run1.json --pooled pooled.md     # the table in the report
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BARE, Settings, ratio_targets

#: Bootstrap resamples; with a fixed seed the same runs always give the same table.
RESAMPLES = 4000


@dataclass(frozen=True)
class Round:
    """One paired round of a variant: throughput and CPU-per-request ratios to its bare neighbour, and the CPU it
    added per request (µs)."""

    ratio: float
    cpu_ratio: float
    added_us: float


@dataclass(frozen=True)
class Pooled:
    """A variant's rounds from every run, summarised; ``share`` is None for a variant without a target."""

    rounds: int
    median: float
    low: float
    high: float
    cpu_median: float
    added_us: float
    target: float | None
    share: float | None


def paired_rounds(results: list[dict[str, Any]], conc: str) -> dict[str, list[Round]]:
    """Every variant's paired rounds at ``conc`` over all ``results`` (a round without its bare neighbour, as in a
    report older than the pairing, is left out)."""
    out: dict[str, list[Round]] = {}
    for res in results:
        for name, by_conc in res.get("throughput", {}).get("runs", {}).items():
            if name == BARE:
                continue
            for x in by_conc.get(conc, []):
                bare = x.get("bare")
                if not bare or not x.get("rps") or not x.get("cpu_us_per_request"):
                    continue
                out.setdefault(name, []).append(Round(
                    x["rps"] / bare["rps"], bare["cpu_us_per_request"] / x["cpu_us_per_request"],
                    x["cpu_us_per_request"] - bare["cpu_us_per_request"]))  # fmt: skip
    return out


def bootstrap_medians(values: list[float], rng: random.Random, resamples: int = RESAMPLES) -> list[float]:
    """Sorted medians of ``resamples`` resamples (with replacement) of ``values``."""
    return sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))


def pool(rounds: list[Round], target: float | None, rng: random.Random) -> Pooled:
    """The variant's median CPU ratio with its 90 % bootstrap interval, and how often it clears ``target``."""
    cpu = [r.cpu_ratio for r in rounds]
    medians = bootstrap_medians(cpu, rng)
    share = None if target is None else sum(m >= target for m in medians) / len(medians)
    return Pooled(len(rounds), statistics.median(r.ratio for r in rounds), medians[len(medians) * 5 // 100],
                  medians[len(medians) * 95 // 100], statistics.median(cpu),
                  statistics.median(r.added_us for r in rounds), target, share)  # fmt: skip


def pooled_runs(results: list[dict[str, Any]], seed: int = 0) -> tuple[str, dict[str, Pooled]]:
    """The higher concurrency of the runs and every variant pooled over them."""
    smoke = any(r.get("meta", {}).get("smoke") for r in results)
    s = Settings.make(smoke)
    conc = str(max(s.concs))
    targets = dict(ratio_targets(s.many_rules))
    rng = random.Random(seed)
    return conc, {name: pool(rs, targets.get(name), rng) for name, rs in paired_rounds(results, conc).items()}


def render(results: list[dict[str, Any]], seed: int = 0) -> str:
    """A markdown table of the pooled variants, with the runs it pools."""
    conc, pooled = pooled_runs(results, seed)
    dates = ", ".join(str(r.get("meta", {}).get("date", "?")) for r in results)
    lines = [
        f"{len(results)} whole runs pooled ({dates}): every paired round at c={conc}, each variant's ratio taken to "
        "its own bare neighbour. Interval: 90 % of the bootstrap medians of the CPU ratio "
        f"({RESAMPLES} resamples); share: of those medians at or above the target.",
        "",
        "| variant | rounds | throughput / bare, median | CPU per request, bare / variant: median [90 % interval] "
        "| CPU added per request | target | share at or above |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in pooled.items():
        target = "–" if p.target is None else f"≥ {p.target:.2f}"
        share = "–" if p.share is None else f"{p.share:.0%}"
        lines.append(f"| {name} | {p.rounds} | {p.median:.3f} | {p.cpu_median:.3f} [{p.low:.3f}–{p.high:.3f}] | "
                     f"{p.added_us:.0f} µs | {target} | {share} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="results of scripts/bench --json")
    ap.add_argument("--out", type=Path, default=None, help="write the table here (default: standard output)")
    args = ap.parse_args()
    results = []
    for path in args.runs:
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            ap.error(f"{path}: not a scripts/bench --json file ({e})")
    table = render(results)
    if args.out is None:
        sys.stdout.write(table)
    else:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
