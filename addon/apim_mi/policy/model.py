"""The in-memory form of an APIM policy document, shared by the XML loader, the YAML shorthand and the engine.

The model stays close to the XML: a statement is an element name, its attribute values, its element text and its
child elements. Handlers in the engine give each element its meaning, so unknown policies can still be loaded and
fail loudly only when they run, as the spec asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import Location

SECTIONS: tuple[str, ...] = ("inbound", "backend", "outbound", "on-error")


class CompiledExpression(Protocol):
    """What the expression package returns for ``@(...)`` / ``@{...}`` text. ``closure``: the compiled program, which
    ``engine.evaluate_now`` calls itself (mapping what it raises with ``failure``), or None: ``evaluate`` runs it."""

    source: str
    closure: Any

    def evaluate(self, context: Any) -> Any: ...


@dataclass(frozen=True)
class Value:
    """An attribute value or element text: a literal string, or a compiled policy expression.

    ``text`` is what was written after named-value substitution (for an expression, the whole ``@(...)``).
    """

    text: str
    location: Location
    expression: CompiledExpression | None = None

    @property
    def is_expression(self) -> bool:
        return self.expression is not None

    def evaluate(self, context: Any) -> Any:
        """The literal text, or the expression's value against ``context``."""
        if self.expression is None:
            return self.text
        return self.expression.evaluate(context)


@dataclass
class Statement:
    """One policy element such as ``<set-header>``, ``<when>`` or ``<value>``."""

    name: str
    location: Location
    attrs: dict[str, Value] = field(default_factory=dict)
    text: Value | None = None
    children: list[Statement] = field(default_factory=list)
    #: The scope whose document the statement was written in ("global" … "operation"; "" when unknown). Survives
    #: composition, so the engine can fill ``context.LastError.Scope`` and the effective-policy dump its markers.
    scope: str = ""
    #: What handlers derived from this statement alone (``engine.prepared``); never copied by ``replace``.
    compiled: dict[Any, Any] | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def policy_id(self) -> str:
        """APIM's optional ``id`` attribute, reported as ``context.LastError.PolicyId``."""
        v = self.attrs.get("id")
        return v.text if v is not None else ""

    def attr(self, name: str, default: str | None = None) -> str | None:
        """The literal text of an attribute (for attributes that do not allow expressions)."""
        v = self.attrs.get(name)
        return v.text if v is not None else default

    def child(self, name: str) -> Statement | None:
        return next((c for c in self.children if c.name == name), None)

    def children_named(self, name: str) -> list[Statement]:
        return [c for c in self.children if c.name == name]

    def walk(self) -> list[Statement]:
        """This statement and every nested one, depth first in document order."""
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


@dataclass
class Policy:
    """A whole ``<policies>`` document after composition: one statement list per section."""

    source: str
    sections: dict[str, list[Statement]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    #: The scope the document was written at ("" when unknown); a composed policy has the innermost one.
    scope: str = ""
    #: Sections the document did not write at all. ``sections`` still has an (empty) list for them; composition
    #: treats them as ``<base/>`` (apim.md §1.3), unlike a written but empty section.
    absent: frozenset[str] = frozenset()
    #: The API definition (``openapi.ApiDefinition``) a rule names with ``openapi:``, for the validation policies
    #: and mock-response; None without one.
    api_definition: Any = None
    #: Load-time warnings (``file:line:column: …``) that ``apim-mi validate`` prints: what loads although APIM's
    #: reference does not list it (a policy outside its documented sections).
    warnings: tuple[str, ...] = ()
    #: Statement lists resolved for running (``engine.steps``), by (list id, parent path); a section's literal header
    #: edits (``statements.core.header_edits``), by ("header-edits", section).
    compiled: dict[tuple[Any, str], Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def statements(self) -> list[Statement]:
        """Every statement of every section, nested ones included."""
        return [s for sec in SECTIONS for top in self.sections.get(sec, []) for s in top.walk()]


ExpressionCompiler = Callable[[str, Location], CompiledExpression]
