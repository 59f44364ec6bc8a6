#!/usr/bin/env python3
"""Regression corpus: load every policy of Azure/api-management-policy-snippets and measure expression coverage.

The corpus is not vendored. Get it once with::

    git clone --depth 1 https://github.com/Azure/api-management-policy-snippets .corpus/api-management-policy-snippets

Then ``scripts/corpus.py`` (or ``--json``) prints: files loaded / total, expressions found, parsed (%), and evaluated
against a synthesized request context (%). Named values the snippets reference are supplied automatically with a
placeholder value and listed. Parsing and evaluation use ``apim_mi.policy.expressions`` / ``apim_mi.policy.context``
when they are importable, and report ``n/a`` otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addon"))

from apim_mi.errors import LoadError, Location  # noqa: E402
from apim_mi.policy import rawxml  # noqa: E402
from apim_mi.policy.loader import load_fragment_text, load_policy_text  # noqa: E402
from apim_mi.policy.model import Statement  # noqa: E402

DEFAULT_CORPUS = Path(".corpus/api-management-policy-snippets")
CLONE = "git clone --depth 1 https://github.com/Azure/api-management-policy-snippets " + str(DEFAULT_CORPUS)
PLACEHOLDER = "1"  # a named value placeholder that also passes int/bool-free attribute checks


class AutoNamedValues(Mapping[str, str]):
    """Every name resolves (to ``PLACEHOLDER``); the names asked for are remembered for the report."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return PLACEHOLDER

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class _Unparsed:
    """Stands in for an expression our parser rejected, so the file still loads and the rest is measured."""

    def __init__(self, source: str) -> None:
        self.source = source

    def evaluate(self, context: Any) -> Any:
        raise RuntimeError("not parsed")


@dataclass
class Report:
    corpus: str
    files: int = 0
    loaded: int = 0
    load_failures: list[dict[str, str]] = field(default_factory=list)
    named_values_supplied: list[str] = field(default_factory=list)
    expressions: int = 0
    parsed: int | None = None
    parse_failures: list[dict[str, str]] = field(default_factory=list)
    evaluated: int | None = None
    evaluation_failures: list[dict[str, str]] = field(default_factory=list)
    evaluation_crashes: int = 0  # exceptions other than ExpressionRuntimeError: bugs in the interpreter

    def percent(self, n: int | None) -> str:
        if n is None:
            return "n/a"
        return f"{n}/{self.expressions} ({100.0 * n / self.expressions:.1f}%)" if self.expressions else "0/0"


def _real_compiler() -> Callable[[str, Location], Any] | None:
    try:
        from apim_mi.policy.expressions import compile_expression
    except ImportError:
        return None
    return compile_expression  # type: ignore[no-any-return]


_ROOT_RE = re.compile(r"<([A-Za-z][\w.\-]*)")


def root_name(text: str) -> str:
    """The document element's name, ignoring the XML declaration and comments."""
    prepared = rawxml.prepare(rawxml.normalize_newlines(text))
    m = _ROOT_RE.search(prepared.xml)
    return m.group(1) if m else ""


def policy_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.rglob("*.xml") if ".git" not in p.parts)


def run(corpus: Path, *, evaluate: bool = True) -> Report:
    report = Report(str(corpus))
    real = _real_compiler()
    named = AutoNamedValues()
    compiled: list[tuple[Path, Any, Location]] = []
    per_file: dict[Path, list[Statement]] = {}
    current: list[Path] = []

    def compile_expression(source: str, location: Location) -> Any:
        report.expressions += 1
        if real is None:
            return _Unparsed(source)
        try:
            expr = real(source, location)
        except LoadError as e:
            report.parse_failures.append({"location": str(e.location), "error": e.message, "source": source})
            return _Unparsed(source)
        compiled.append((current[-1], expr, location))
        return expr

    for path in policy_files(corpus):
        report.files += 1
        current.append(path)
        display = str(path.relative_to(corpus))
        try:
            text = path.read_text("utf-8-sig")
            if root_name(text) == "fragment":
                stmts = load_fragment_text(
                    text, source=display, named_values=named, compile_expression=compile_expression
                )
            else:
                policy = load_policy_text(
                    text,
                    source=display,
                    named_values=named,
                    fragments_dir=path.parent,
                    compile_expression=compile_expression,
                )
                stmts = [s for sec in policy.sections.values() for s in sec]
            per_file[path] = stmts
            report.loaded += 1
        except LoadError as e:
            report.load_failures.append({"file": display, "error": str(e)})
        except (OSError, UnicodeDecodeError) as e:
            report.load_failures.append({"file": display, "error": f"cannot read: {e}"})
    report.named_values_supplied = sorted(named.asked)
    if real is not None:
        report.parsed = report.expressions - len(report.parse_failures)
    if evaluate and real is not None:
        _evaluate(report, per_file, compiled)
    return report


def _evaluate(
    report: Report, per_file: dict[Path, list[Statement]], compiled: list[tuple[Path, Any, Location]]
) -> None:
    """Evaluate each parsed expression against a synthesized context, file by file, in document order.

    Variables are fed the way a run would: ``set-variable`` stores its value (the evaluated expression or the
    literal string), ``send-request`` stores a 200 ``IResponse`` with a JSON body.
    """
    try:
        from apim_mi.policy import context as ctxmod
        from apim_mi.policy.expressions import ExpressionRuntimeError
    except ImportError:
        return
    ok = 0
    by_file: dict[Path, list[tuple[Any, Location]]] = {}
    for path, expr, loc in compiled:
        by_file.setdefault(path, []).append((expr, loc))
    for path, exprs in by_file.items():
        context = _synthesized_context(ctxmod)
        done: set[int] = set()
        for stmt in (s for top in per_file.get(path, []) for s in top.walk()):
            for value in [*stmt.attrs.values(), stmt.text]:
                if value is None or value.expression is None or isinstance(value.expression, _Unparsed):
                    continue
                done.add(id(value.expression))
                result, good = _try(value.expression, context, ExpressionRuntimeError, report, value.location)
                ok += good
                if stmt.name == "set-variable" and value is stmt.attrs.get("value") and good:
                    context.variables[stmt.attr("name") or ""] = result
            if stmt.name == "set-variable" and "value" in stmt.attrs and not stmt.attrs["value"].is_expression:
                context.variables[stmt.attr("name") or ""] = stmt.attrs["value"].text
            if stmt.name == "send-request" and stmt.attr("response-variable-name"):
                context.variables[stmt.attr("response-variable-name") or ""] = ctxmod.Response(
                    200, "OK", ctxmod.Headers([("Content-Type", "application/json")]), ctxmod.Body(b'{"value": 1}')
                )
        for expr, loc in exprs:  # anything not reached through the statement walk (should be none)
            if id(expr) not in done:
                ok += _try(expr, context, ExpressionRuntimeError, report, loc)[1]
    report.evaluated = ok


def _try(expr: Any, context: Any, runtime_error: type[Exception], report: Report, loc: Location) -> tuple[Any, int]:
    try:
        return expr.evaluate(context), 1
    except runtime_error as e:
        report.evaluation_failures.append({"location": str(loc), "error": str(e)[:300]})
    except Exception as e:
        report.evaluation_crashes += 1
        report.evaluation_failures.append({"location": str(loc), "error": f"CRASH {type(e).__name__}: {e}"[:300]})
    return None, 0


def _synthesized_context(ctxmod: Any) -> Any:
    jwt = (
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJhcGk6Ly9kZW1vIiwiaXNzIjoiaHR0cHM6Ly9zdHMud2luZG93cy5uZXQvdCIsInN1Y"
        "iI6InVzZXIiLCJleHAiOjQxMDI0NDQ4MDB9.c2ln"
    )
    headers = ctxmod.Headers(
        [
            ("Host", "api.contoso.com"),
            ("Authorization", f"Bearer {jwt}"),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("User-Agent", "apim-mi-corpus"),
            ("Cookie", "session=abc; other=1"),
            ("X-Forwarded-For", "203.0.113.7"),
        ]
    )
    request = ctxmod.Request(
        "POST",
        ctxmod.Url.parse("https://api.contoso.com/orders/42?api-version=2024-01-01&code=abc&state=xyz"),
        headers,
        ctxmod.Body(b'{"id": 42, "name": "demo", "items": [1, 2, 3]}', "application/json"),
    )
    response = ctxmod.Response(
        200, "OK", ctxmod.Headers([("Content-Type", "application/json")]), ctxmod.Body(b'{"ok": true}')
    )
    return ctxmod.Context(request=request, response=response)


def _print(report: Report) -> None:
    print(f"corpus:       {report.corpus}")
    print(f"files loaded: {report.loaded}/{report.files}")
    for f in report.load_failures:
        print(f"  FAILED {f['error']}")
    if report.named_values_supplied:
        names = ", ".join(report.named_values_supplied)
        print(f"named values supplied with placeholder '{PLACEHOLDER}' ({len(report.named_values_supplied)}): {names}")
    print(f"expressions:  {report.expressions}")
    print(f"parsed:       {report.percent(report.parsed)}")
    for f in report.parse_failures[:20]:
        print(f"  {f['location']}: {f['error']}")
    print(f"evaluated:    {report.percent(report.evaluated)}")
    if report.evaluation_crashes:
        print(f"  interpreter crashes (not ExpressionRuntimeError): {report.evaluation_crashes}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help=f"snippets checkout (default {DEFAULT_CORPUS})"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation step")
    args = parser.parse_args(argv)
    corpus: Path = args.corpus
    if not corpus.is_absolute() and not corpus.is_dir() and (ROOT / corpus).is_dir():
        corpus = ROOT / corpus
    if not corpus.is_dir():
        print(f"corpus not found at {corpus}. Get it with:\n    {CLONE}", file=sys.stderr)
        return 2
    report = run(corpus, evaluate=not args.no_eval)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        _print(report)
    return 0 if report.loaded == report.files else 1


if __name__ == "__main__":
    sys.exit(main())
