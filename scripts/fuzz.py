"""Mutation fuzzer for the three parsers that read user input: the YAML rules loader, the policy XML loader and the
C# expression parser. Every input must give a result or a typed error (``LoadError`` / ``ApimMiError``) within
``--hang`` seconds; anything else is a crash (or a hang) and is printed with the input that caused it.

    .venv/bin/python scripts/fuzz.py                    # 100 000 inputs (a minute or two; progress on stderr)
    .venv/bin/python scripts/fuzz.py --inputs 3000      # quick
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addon"))

from apim_mi.errors import ApimMiError, Location  # noqa: E402

ALPHABET = "@(){}[]<>\"'$\\/:;,.=*?!&|+-_ \n\t{{}}abcxyz0129é\u0000"
EXPRESSIONS = [
    '@(context.Request.Headers.GetValueOrDefault("Authorization", "").Split(\' \').Last())',
    '@((string)context.Variables["msi-access-token"])',
    '@("Bearer " + context.Variables.GetValueOrDefault<string>("t", ""))',
    '@{ var b = context.Request.Body.As<JObject>(preserveContent: true); return b["id"]?.ToString() ?? "none"; }',
    '@($"{context.Request.Url.Host}:{context.Request.Url.Port}")',
    '@(context.Request.Headers.Any(h => h.Key.StartsWith("x-")) ? 1 : 2)',
    '@(int.Parse(context.Variables.GetValueOrDefault<string>("n", "0")) < 256000)',
]


def seeds() -> dict[str, list[str]]:
    yaml_seeds = [p.read_text() for p in [ROOT / "rules.yaml", *sorted((ROOT / "tests/data/bad").glob("*.yaml"))]]
    yaml_seeds += [p.read_text() for p in sorted((ROOT / "examples").glob("**/*.yaml"))]
    xml_seeds = [p.read_text() for p in sorted((ROOT / "tests/data").glob("**/*.xml"))]
    corpus = ROOT / ".corpus/api-management-policy-snippets"
    if corpus.exists():
        xml_seeds += [p.read_text(errors="replace") for p in sorted(corpus.glob("**/*.xml"))[:40]]
    return {"yaml": yaml_seeds, "xml": xml_seeds or ["<policies><inbound/></policies>"], "expression": EXPRESSIONS}


def mutate(rng: random.Random, text: str, pool: list[str]) -> str:
    chars = list(text)
    for _ in range(1 if rng.random() < 0.5 else rng.randint(2, 8)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.35 and chars:
            del chars[min(pos, len(chars) - 1) : min(pos + rng.randint(1, 6), len(chars))]
        elif op < 0.7:
            chars[pos:pos] = rng.choice(ALPHABET)
        elif op < 0.85 and chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(ALPHABET)
        else:
            other = rng.choice(pool)
            start = rng.randint(0, max(len(other) - 1, 0))
            chars[pos:pos] = other[start : start + rng.randint(1, 40)]
    return "".join(chars)


def targets() -> dict[str, Callable[[str], object]]:
    from apim_mi.policy.expressions import compile_expression, parse_expression
    from apim_mi.policy.loader import load_policy_text
    from apim_mi.rules import load_rules_text

    def expression(text: str) -> object:
        parse_expression.cache_clear() if hasattr(parse_expression, "cache_clear") else None
        return compile_expression(text, Location("fuzz.xml", 1, 1))

    return {
        "yaml": lambda text: load_rules_text(text, ROOT / "fuzz.yaml"),
        "xml": lambda text: load_policy_text(text, source="fuzz.xml"),
        "expression": expression,
    }


class Hang(Exception):
    """An input that took longer than ``--hang`` seconds: as much a defect as a crash (a proxy that stalls)."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang("no result within the time limit")


def run(
    inputs: int, seed: int, hang: float = 5.0, progress: bool = False
) -> tuple[Counter[str], list[tuple[str, str, BaseException]], tuple[float, str, str]]:
    """Counts per target, the crashes and hangs, and the slowest input (seconds, target, text)."""
    rng = random.Random(seed)
    pools = seeds()
    fns = targets()
    counts: Counter[str] = Counter()
    crashes: list[tuple[str, str, BaseException]] = []
    slowest = (0.0, "", "")
    names = list(fns)
    signal.signal(signal.SIGALRM, _alarm)
    for i in range(inputs):
        name = names[i % len(names)]
        text = mutate(rng, rng.choice(pools[name]), pools[name])
        counts[name] += 1
        started = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, hang)
        try:
            fns[name](text)
            counts[f"{name}.ok"] += 1
        except ApimMiError:
            counts[f"{name}.typed_error"] += 1
        except Exception as e:  # the defects this fuzzer looks for: any other exception, or a hang
            crashes.append((name, text, e))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.perf_counter() - started
        if took > slowest[0]:
            slowest = (took, name, text)
        if progress and (i + 1) % 10_000 == 0:
            print(f"  {i + 1} inputs, {len(crashes)} crashes", file=sys.stderr, flush=True)
    return counts, crashes, slowest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hang", type=float, default=5.0, help="seconds after which an input counts as a hang")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    counts, crashes, slowest = run(args.inputs, args.seed, args.hang, progress=True)
    took = time.monotonic() - t0
    print(f"{args.inputs} inputs in {took:.1f} s (seed {args.seed}); slowest {slowest[0] * 1000:.1f} ms ({slowest[1]})")
    for name in ("yaml", "xml", "expression"):
        print(f"  {name:<10} {counts[name]:>7} inputs: {counts[name + '.ok']:>6} accepted, "
              f"{counts[name + '.typed_error']:>6} typed errors, "
              f"{sum(1 for c in crashes if c[0] == name)} crashes")
    if slowest[0] > 1.0:
        print(f"SLOW in {slowest[1]}: {slowest[0]:.1f} s\n  input: {slowest[2]!r}")
    for name, text, e in crashes[:10]:
        print(f"CRASH in {name}: {type(e).__name__}: {e}\n  input: {text!r}")
    return 1 if crashes or slowest[0] >= args.hang else 0


if __name__ == "__main__":
    sys.exit(main())
