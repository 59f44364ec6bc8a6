"""AST node dataclasses for the C# subset. ``pos`` is the offset of the node's first token in the source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --- types --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeRef:
    """A written type: dotted name, generic arguments, array ranks and ``?``."""

    name: str
    args: tuple[TypeRef, ...] = ()
    array: int = 0  # number of [] suffixes
    nullable: bool = False

    def __str__(self) -> str:
        s = self.name
        if self.args:
            s += "<" + ",".join(str(a) for a in self.args) + ">"
        if self.nullable:
            s += "?"
        return s + "[]" * self.array

    def element(self) -> TypeRef:
        return TypeRef(self.name, self.args, self.array - 1, self.nullable)


# --- expressions --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    pos: int


@dataclass(frozen=True)
class Literal(Expr):
    value: Any


@dataclass(frozen=True)
class InterpHole:
    expr: Expr
    alignment: Expr | None
    fmt: str | None


@dataclass(frozen=True)
class Interpolated(Expr):
    parts: tuple[str | InterpHole, ...]


@dataclass(frozen=True)
class Name(Expr):
    name: str
    type_args: tuple[TypeRef, ...] = ()


@dataclass(frozen=True)
class TypeExpr(Expr):
    """A predefined type keyword used as an expression target, e.g. ``string.IsNullOrEmpty``."""

    type: TypeRef


@dataclass(frozen=True)
class Member(Expr):
    target: Expr
    name: str
    type_args: tuple[TypeRef, ...] = ()
    null_cond: bool = False


@dataclass(frozen=True)
class Index(Expr):
    target: Expr
    args: tuple[Expr, ...]
    null_cond: bool = False


@dataclass(frozen=True)
class Arg:
    value: Expr
    name: str | None = None
    mode: str = ""  # "", "out", "ref", "in"


@dataclass(frozen=True)
class OutDecl(Expr):
    """``out var x`` / ``out string[] x`` inside an argument list."""

    type: TypeRef | None
    name: str


@dataclass(frozen=True)
class Call(Expr):
    target: Expr  # Name or Member (carrying generic arguments)
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class NullCondChain(Expr):
    """The top of a postfix chain containing ``?.``/``?[``: a null there makes the whole chain null."""

    expr: Expr


@dataclass(frozen=True)
class Unary(Expr):
    op: str
    operand: Expr


@dataclass(frozen=True)
class Update(Expr):
    """``++x``, ``x--`` …"""

    op: str
    target: Expr
    prefix: bool


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Conditional(Expr):
    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True)
class Assign(Expr):
    op: str  # "=", "+=", …
    target: Expr
    value: Expr


@dataclass(frozen=True)
class Cast(Expr):
    type: TypeRef
    operand: Expr


@dataclass(frozen=True)
class AsExpr(Expr):
    operand: Expr
    type: TypeRef


@dataclass(frozen=True)
class IsExpr(Expr):
    """``x is T``, ``x is T name``, ``x is null`` / constant patterns (``type`` None, ``constant`` set)."""

    operand: Expr
    type: TypeRef | None
    name: str | None = None
    constant: Expr | None = None


@dataclass(frozen=True)
class Lambda(Expr):
    params: tuple[str, ...]
    body: Expr | Block


@dataclass(frozen=True)
class Initializer:
    """One entry of ``{ ... }`` after ``new T(...)``: ``Name = v``, ``[k] = v`` or a collection item."""

    kind: str  # "member" | "index" | "add"
    name: str = ""
    keys: tuple[Expr, ...] = ()
    value: Expr | None = None
    items: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class New(Expr):
    type: TypeRef
    args: tuple[Arg, ...]
    init: tuple[Initializer, ...] | None = None


@dataclass(frozen=True)
class NewArray(Expr):
    """``new T[n]``, ``new T[] {..}``, ``new[] {..}`` (``type`` is the element type or None)."""

    type: TypeRef | None
    size: Expr | None
    items: tuple[Expr, ...] | None


@dataclass(frozen=True)
class NewAnonymous(Expr):
    members: tuple[tuple[str, Expr], ...]


@dataclass(frozen=True)
class Default(Expr):
    type: TypeRef | None


@dataclass(frozen=True)
class TypeOf(Expr):
    type: TypeRef


# --- statements ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stmt:
    pos: int


@dataclass(frozen=True)
class Block(Stmt):
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class ExprStmt(Stmt):
    expr: Expr


@dataclass(frozen=True)
class VarDecl(Stmt):
    type: TypeRef | None  # None for ``var``
    names: tuple[tuple[str, Expr | None], ...]


@dataclass(frozen=True)
class If(Stmt):
    cond: Expr
    then: Stmt
    other: Stmt | None


@dataclass(frozen=True)
class Return(Stmt):
    value: Expr | None


@dataclass(frozen=True)
class Foreach(Stmt):
    type: TypeRef | None
    name: str
    iterable: Expr
    body: Stmt


@dataclass(frozen=True)
class For(Stmt):
    init: tuple[Stmt, ...]
    cond: Expr | None
    update: tuple[Expr, ...]
    body: Stmt


@dataclass(frozen=True)
class While(Stmt):
    cond: Expr
    body: Stmt
    do: bool = False


@dataclass(frozen=True)
class Break(Stmt):
    pass


@dataclass(frozen=True)
class Continue(Stmt):
    pass


@dataclass(frozen=True)
class Throw(Stmt):
    value: Expr | None


@dataclass(frozen=True)
class Catch:
    type: TypeRef | None
    name: str | None
    body: Block
    when: Expr | None = None


@dataclass(frozen=True)
class Try(Stmt):
    body: Block
    catches: tuple[Catch, ...]
    final: Block | None


@dataclass(frozen=True)
class SwitchSection:
    labels: tuple[Expr | None, ...]  # None = default
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Switch(Stmt):
    subject: Expr
    sections: tuple[SwitchSection, ...]


@dataclass(frozen=True)
class LocalFunction(Stmt):
    name: str
    params: tuple[str, ...]
    body: Block | Expr


@dataclass(frozen=True)
class Empty(Stmt):
    pass


@dataclass(frozen=True)
class Program:
    """A parsed policy expression: a single expression ``@(...)`` or a statement block ``@{...}``."""

    body: Expr | Block
    is_block: bool = False
