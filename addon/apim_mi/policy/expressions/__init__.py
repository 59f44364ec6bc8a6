"""APIM policy expressions: the C# subset of ``@(...)`` / ``@{...}``, parsed to an AST and interpreted.

No user text is ever passed to ``eval``/``exec``/``compile``: a lexer, a recursive-descent parser and a tree-walking
interpreter with a step budget do the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ...errors import LoadError, Location, PolicyError
from . import ast
from .compiler import compile_program
from .dotnet import NetException
from .interpreter import BudgetExceeded, EvalError, Interpreter
from .lexer import LexError
from .members import MemberNotFound
from .parser import parse_program
from .runtime_types import to_net_string

__all__ = [
    "CompiledExpression",
    "ExpressionRuntimeError",
    "ExpressionSyntaxError",
    "compile_expression",
    "parse_expression",
    "to_policy_string",
]

REASON = "ExpressionValueEvaluationFailure"


class ExpressionSyntaxError(LoadError):
    """An expression that does not parse; ``location`` is the absolute file:line:column of the offending token."""


class ExpressionRuntimeError(PolicyError):
    """An expression failed while running (APIM's ``ExpressionValueEvaluationFailure``).

    ``details`` is the underlying .NET-style exception message, ``exception_type`` its .NET type name and
    ``expression`` the expression source. ``source`` (the policy name) is left for the engine to fill in.
    """

    def __init__(self, expression: str, details: str, exception_type: str = "") -> None:
        super().__init__("", f"Expression evaluation failed. {details}", REASON)
        self.expression = expression
        self.details = details
        self.exception_type = exception_type


def offset_location(base: Location, source: str, offset: int) -> Location:
    """The absolute location of ``source[offset]`` when ``source`` starts at ``base``."""
    offset = max(0, min(offset, len(source)))
    before = source[:offset]
    newlines = before.count("\n")
    if newlines == 0:
        return Location(base.file, base.line, base.column + offset)
    return Location(base.file, base.line + newlines, offset - before.rfind("\n"))


ProgramFn = Callable[[Any, None], Any]


@lru_cache(maxsize=4096)
def _parse_cached(source: str) -> tuple[ast.Program, ProgramFn | None]:
    """The program and its closures (``compiler.py``; None: the interpreter runs it), once per source text."""
    program = parse_program(source)
    return program, compile_program(program)


def _parsed(source: str) -> tuple[ast.Program, ProgramFn | None]:
    try:
        return _parse_cached(source)
    except RecursionError:
        raise LexError(0, "The expression is nested too deeply") from None


def parse_expression(source: str) -> ast.Program:
    """Parse ``@(...)``, ``@{...}`` or a bare expression; raises ``LexError`` (with an offset) on bad input."""
    return _parsed(source)[0]


@dataclass(frozen=True)
class CompiledExpression:
    """A parsed expression, ready to evaluate against a :class:`~apim_mi.policy.context.Context`.

    ``closure`` is the program compiled to Python closures (``compiler.py``), called with (context, None); None runs
    it on the interpreter."""

    source: str
    program: ast.Program
    location: Location
    closure: ProgramFn | None = field(default=None, compare=False, repr=False)

    def evaluate(self, context: Any) -> Any:
        """The expression's value; any failure is an :class:`ExpressionRuntimeError`, never another exception."""
        try:
            if self.closure is not None:
                return self.closure(context, None)
            return Interpreter(context).run(self.program)
        except Exception as e:  # the contract: nothing but ExpressionRuntimeError escapes
            raise self.failure(e) from None

    def failure(self, e: Exception) -> ExpressionRuntimeError:
        """The ``ExpressionRuntimeError`` that ``evaluate`` raises for ``e`` (a caller that calls ``closure``
        itself, on every flow, maps what it raises the same way)."""
        if isinstance(e, NetException):
            return ExpressionRuntimeError(self.source, e.message, e.type)
        if isinstance(e, EvalError | BudgetExceeded):
            return ExpressionRuntimeError(self.source, str(e), type(e).__name__)
        if isinstance(e, MemberNotFound):
            return ExpressionRuntimeError(self.source, f"Member '{e}' is not supported", "MemberNotFound")
        if isinstance(e, RecursionError):
            return ExpressionRuntimeError(self.source, "The expression recursed too deeply", "RecursionError")
        if isinstance(e, MemoryError):
            return ExpressionRuntimeError(self.source, "Insufficient memory to continue the execution.",
                                          "System.OutOfMemoryException")  # fmt: skip
        if isinstance(e, TypeError | IndexError | KeyError | AttributeError | ValueError):
            return ExpressionRuntimeError(self.source, f"Invalid arguments or operands: {e}",
                                          "System.ArgumentException")  # fmt: skip
        if isinstance(e, ArithmeticError):
            return ExpressionRuntimeError(self.source, f"Arithmetic operation failed: {e}",
                                          "System.ArithmeticException")  # fmt: skip
        return ExpressionRuntimeError(self.source, f"Internal error: {type(e).__name__}: {e}",
                                      type(e).__name__)  # fmt: skip


def compile_expression(source: str, location: Location) -> CompiledExpression:
    """Parse an expression (cached per source text); syntax errors carry the absolute location of the token."""
    try:
        program, closure = _parsed(source)
    except LexError as e:
        raise ExpressionSyntaxError(offset_location(location, source, e.offset), e.message) from None
    except Exception as e:  # the contract: nothing but ExpressionSyntaxError escapes
        raise ExpressionSyntaxError(location, f"Internal parser error: {type(e).__name__}: {e}") from None
    return CompiledExpression(source, program, location, closure)


def to_policy_string(value: Any) -> str:
    """The text APIM puts into a header, variable-as-string or body for an expression result (``ToString()``).

    ``bool`` → ``True``/``False``, null → "", numbers and dates with the invariant culture, JObject/JArray →
    indented JSON (Newtonsoft's ``JToken.ToString()``), JValue → its raw value.
    """
    return to_net_string(value)
