"""Tree-walking evaluator for parsed policy expressions, with a step budget and a call-depth limit.

Runtime failures surface as :class:`~.dotnet.NetException` (a .NET exception, catchable by ``try/catch`` in a block)
or :class:`EvalError` (what C# would have rejected at compile time, such as an unknown member). The package's
``CompiledExpression.evaluate`` turns both into ``ExpressionRuntimeError``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, DivisionByZero, InvalidOperation
from typing import Any

from .. import context as ctx
from . import ast as A
from .dotnet import (
    MAX_STRING,
    Char,
    Long,
    NetException,
    check_len,
    is_integer,
    null_reference,
    wrap32,
    wrap64,
)
from .jsonlinq import JValue
from .members import (
    MAX_ITEMS,
    MemberNotFound,
    OutRef,
    align,
    call_method,
    call_static,
    construct,
    format_value,
    get_property,
    get_static,
    has_static_method,
    index_get,
    index_set,
    items_of,
    set_property,
)
from .runtime_types import (
    NAMESPACES,
    AnonymousObject,
    DateTimeOffset,
    NamespaceHandle,
    TypeHandle,
    as_cast,
    cast,
    compare,
    default_of,
    is_instance,
    net_equals,
    net_type_name,
    resolve_type_name,
    to_net_string,
)

MAX_STEPS = 250_000
MAX_CALL_DEPTH = 64


class EvalError(Exception):
    """A failure C# would report at compile time (unknown name or member, wrong operand types)."""


class BudgetExceeded(Exception):
    """The expression ran too long or recursed too deeply."""


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _NullShort(Exception):
    """A ``?.``/``?[`` met null: the enclosing :class:`~.ast.NullCondChain` evaluates to null."""


class Scope:
    __slots__ = ("parent", "vars")

    def __init__(self, parent: Scope | None = None) -> None:
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def find(self, name: str) -> Scope | None:
        s: Scope | None = self
        while s is not None:
            if name in s.vars:
                return s
            s = s.parent
        return None

    def declare(self, name: str, value: Any) -> None:
        if self.find(name) is not None:
            raise EvalError(f"A local variable named '{name}' is already defined in this scope")
        self.vars[name] = value


@dataclass
class Closure:
    """A lambda or local function with the scope it captured."""

    params: tuple[str, ...]
    body: A.Expr | A.Block
    scope: Scope
    interp: Interpreter

    @property
    def arity(self) -> int:
        return len(self.params)

    def __call__(self, *args: Any) -> Any:
        return self.interp.invoke(self, args)


_NUMERIC_NAMES = frozenset(
    {
        "System.Int32",
        "System.Int64",
        "System.Double",
        "System.Single",
        "System.Decimal",
        "System.Int16",
        "System.Byte",
        "System.SByte",
        "System.UInt16",
        "System.UInt32",
        "System.UInt64",
        "System.Char",
    }
)


class Interpreter:
    def __init__(self, context: Any, max_steps: int = MAX_STEPS) -> None:
        self.context = context
        self.max_steps = max_steps
        self.steps = 0
        self.depth = 0
        self.caught: list[NetException] = []
        self.readonly: set[int] = set()
        if isinstance(context, ctx.Context):
            self.readonly = {id(context.variables), id(context.request.matched_parameters)}

    # --- entry points ----------------------------------------------------------------------------------------------

    def run(self, program: A.Program) -> Any:
        if not program.is_block:
            return self.ev(program.body, Scope())  # type: ignore[arg-type]
        try:
            self.exec_block(program.body, Scope())  # type: ignore[arg-type]
        except _Return as r:
            return r.value
        except (_Break, _Continue):
            raise EvalError("No enclosing loop out of which to break or continue") from None
        raise EvalError("Not all code paths return a value")

    def invoke(self, fn: Closure, args: tuple[Any, ...]) -> Any:
        if len(args) != len(fn.params):
            raise EvalError(f"Delegate does not take {len(args)} arguments")
        self.depth += 1
        if self.depth > MAX_CALL_DEPTH:
            raise BudgetExceeded("The expression recursed too deeply")
        try:
            scope = Scope(fn.scope)
            scope.vars.update(zip(fn.params, args, strict=True))
            if isinstance(fn.body, A.Block):
                try:
                    self.exec_block(fn.body, scope)
                except _Return as r:
                    return r.value
                return None
            return self.ev(fn.body, scope)
        finally:
            self.depth -= 1

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise BudgetExceeded(f"The expression exceeded its budget of {self.max_steps} evaluation steps")

    # --- expressions -----------------------------------------------------------------------------------------------

    def ev(self, node: A.Expr, scope: Scope) -> Any:
        self.tick()
        return _EXPR[type(node)](self, node, scope)

    def e_literal(self, n: A.Literal, scope: Scope) -> Any:
        return n.value

    def e_interpolated(self, n: A.Interpolated, scope: Scope) -> str:
        out: list[str] = []
        size = 0
        for part in n.parts:
            if isinstance(part, str):
                text = part
            else:
                text = format_value(self.ev(part.expr, scope), part.fmt)
                if part.alignment is not None:
                    text = align(text, int(self.ev(part.alignment, scope)))
            size += len(text)
            if size > MAX_STRING:
                check_len("x" * (MAX_STRING + 1))
            out.append(text)
        return "".join(out)

    def e_name(self, n: A.Name, scope: Scope) -> Any:
        s = scope.find(n.name)
        if s is not None:
            return s.vars[n.name]
        if n.name == "context":
            return self.context
        full = resolve_type_name(n.name)
        if full is not None:
            return TypeHandle(full, n.type_args)
        if n.name in NAMESPACES:
            return NamespaceHandle(n.name)
        raise EvalError(f"The name '{n.name}' does not exist in the current context")

    def e_typeexpr(self, n: A.TypeExpr, scope: Scope) -> Any:
        return TypeHandle(resolve_type_name(n.type.name) or n.type.name)

    def target(self, node: A.Expr, scope: Scope, null_cond: bool) -> Any:
        obj = self.ev(node, scope)
        if obj is None:
            if null_cond:
                raise _NullShort
            raise null_reference()
        return obj

    def e_member(self, n: A.Member, scope: Scope) -> Any:
        if n.name == "HasValue" and not n.null_cond:
            value = self.ev(n.target, scope)
            return value is not None and (
                not isinstance(value, TypeHandle | NamespaceHandle) or self.e_member_of(value, n)
            )
        return self.e_member_of(self.target(n.target, scope, n.null_cond), n)

    def e_member_of(self, obj: Any, n: A.Member) -> Any:
        return member_of(obj, n.name, n.type_args)

    def e_index(self, n: A.Index, scope: Scope) -> Any:
        obj = self.target(n.target, scope, n.null_cond)
        keys = [self.ev(k, scope) for k in n.args]
        try:
            return index_get(obj, keys)
        except MemberNotFound:
            raise EvalError(f"Cannot apply indexing with [] to an expression of type '{net_type_name(obj)}'") from None

    def e_nullcondchain(self, n: A.NullCondChain, scope: Scope) -> Any:
        try:
            return self.ev(n.expr, scope)
        except _NullShort:
            return None

    def args(self, args: tuple[A.Arg, ...], scope: Scope) -> tuple[list[Any], list[tuple[A.Expr, OutRef]]]:
        values: list[Any] = []
        outs: list[tuple[A.Expr, OutRef]] = []
        named: list[Any] = []
        for a in args:
            if a.mode in ("out", "ref"):
                if isinstance(a.value, A.OutDecl):
                    scope.declare(a.value.name, default_of(a.value.type))
                    ref = OutRef()
                    target: A.Expr = A.Name(a.value.pos, a.value.name)
                else:
                    ref = OutRef(self.ev(a.value, scope) if a.mode == "ref" else None)
                    target = a.value
                outs.append((target, ref))
                value: Any = ref
            else:
                value = self.ev(a.value, scope)
            (named if a.name else values).append(value)
        return values + named, outs

    def e_call(self, n: A.Call, scope: Scope) -> Any:
        t = n.target
        if isinstance(t, A.Member):
            obj = self.target(t.target, scope, t.null_cond)
            args, outs = self.args(n.args, scope)
            result = call_member(obj, t.name, args, t.type_args)
        else:
            fn = self.ev(t, scope)
            args, outs = self.args(n.args, scope)
            if isinstance(fn, TypeHandle):
                raise EvalError(f"'{fn.full}' is a type but is used like a method")
            if not callable(fn):
                raise EvalError(f"Method name expected, found a value of type '{net_type_name(fn)}'")
            result = fn(*args)
        for target, ref in outs:
            self.assign_to(target, ref.value, scope)
        if isinstance(result, str) and len(result) > MAX_STRING:
            check_len(result)
        return result

    def e_unary(self, n: A.Unary, scope: Scope) -> Any:
        return unary_op(n.op, self.ev(n.operand, scope))

    def e_update(self, n: A.Update, scope: Scope) -> Any:
        old = self.ev(n.target, scope)
        if isinstance(old, Char):
            new: Any = Char(chr((ord(old) + (1 if n.op == "++" else -1)) & 0xFFFF))
        else:
            new = binary_op("+" if n.op == "++" else "-", old, 1)
        self.assign_to(n.target, new, scope)
        return new if n.prefix else old

    def e_binary(self, n: A.Binary, scope: Scope) -> Any:
        op = n.op
        if op in ("&&", "||"):
            left = self.ev(n.left, scope)
            if not isinstance(left, bool):
                raise EvalError(f"Operator '{op}' cannot be applied to operand of type '{net_type_name(left)}'")
            if (op == "&&" and not left) or (op == "||" and left):
                return left
            right = self.ev(n.right, scope)
            if not isinstance(right, bool):
                raise EvalError(f"Operator '{op}' cannot be applied to operand of type '{net_type_name(right)}'")
            return right
        if op == "??":
            left = self.ev(n.left, scope)
            return left if left is not None else self.ev(n.right, scope)
        return binary_op(op, self.ev(n.left, scope), self.ev(n.right, scope))

    def e_conditional(self, n: A.Conditional, scope: Scope) -> Any:
        c = self.ev(n.cond, scope)
        if not isinstance(c, bool):
            raise EvalError(f"Cannot implicitly convert type '{net_type_name(c)}' to 'bool'")
        return self.ev(n.then if c else n.other, scope)

    def e_assign(self, n: A.Assign, scope: Scope) -> Any:
        if n.op == "=":
            value = self.ev(n.value, scope)
        elif n.op == "??=":
            cur = self.ev(n.target, scope)
            if cur is not None:
                return cur
            value = self.ev(n.value, scope)
        else:
            cur = self.ev(n.target, scope)
            value = binary_op(n.op[:-1], cur, self.ev(n.value, scope))
            if isinstance(cur, Char) and is_integer(value):
                value = Char(chr(value & 0xFFFF))
        self.assign_to(n.target, value, scope)
        return value

    def assign_to(self, target: A.Expr, value: Any, scope: Scope) -> None:
        if isinstance(target, A.Name):
            s = scope.find(target.name)
            if s is None:
                raise EvalError(f"The name '{target.name}' does not exist in the current context")
            s.vars[target.name] = value
        elif isinstance(target, A.Index):
            obj = self.target(target.target, scope, False)
            if id(obj) in self.readonly:
                raise NetException("System.NotSupportedException", "Collection is read-only.")
            keys = [self.ev(k, scope) for k in target.args]
            try:
                index_set(obj, keys, value)
            except MemberNotFound:
                raise EvalError(
                    f"Cannot apply indexing with [] to an expression of type '{net_type_name(obj)}'"
                ) from None
        elif isinstance(target, A.Member):
            obj = self.target(target.target, scope, False)
            set_property(obj, target.name, value)
        else:
            raise EvalError("The left-hand side of an assignment must be a variable, property or indexer")

    def e_cast(self, n: A.Cast, scope: Scope) -> Any:
        return cast_value(self.ev(n.operand, scope), n.type)

    def e_asexpr(self, n: A.AsExpr, scope: Scope) -> Any:
        v = self.ev(n.operand, scope)
        _check_type(n.type)
        return as_cast(v, n.type)

    def e_isexpr(self, n: A.IsExpr, scope: Scope) -> Any:
        v = self.ev(n.operand, scope)
        if n.type is None:
            return net_equals(v, self.ev(n.constant, scope)) if n.constant is not None else v is None
        _check_type(n.type)
        ok = is_instance(v, n.type)
        if n.name is not None:
            scope.declare(n.name, v if ok else default_of(n.type))
        return ok

    def e_lambda(self, n: A.Lambda, scope: Scope) -> Closure:
        return Closure(n.params, n.body, scope, self)

    def e_new(self, n: A.New, scope: Scope) -> Any:
        full = _check_type(n.type)
        args, _ = self.args(n.args, scope)
        try:
            obj = construct(full, args, n.type.args)
        except MemberNotFound:
            raise EvalError(f"Cannot create an instance of '{n.type}' in a policy expression") from None
        for init in n.init or ():
            if init.kind == "add":
                call_member(obj, "Add", [self.ev(x, scope) for x in init.items], ())
            elif init.kind == "index":
                index_set(obj, [self.ev(k, scope) for k in init.keys], self.ev(init.value, scope))  # type: ignore
            else:
                value = self.ev(init.value, scope)  # type: ignore[arg-type]
                if isinstance(obj, AnonymousObject):
                    obj.members[init.name] = value
                else:
                    set_property(obj, init.name, value)
        return obj

    def e_newarray(self, n: A.NewArray, scope: Scope) -> Any:
        elem = n.type
        full = _check_type(elem) if elem is not None else None
        if n.items is None:
            return sized_array(elem, full, self.ev(n.size, scope) if n.size is not None else 0)
        return listed_array(elem, full, [self.ev(x, scope) for x in n.items])

    def e_newanonymous(self, n: A.NewAnonymous, scope: Scope) -> AnonymousObject:
        return AnonymousObject({k: self.ev(v, scope) for k, v in n.members})

    def e_default(self, n: A.Default, scope: Scope) -> Any:
        return default_of(n.type)

    def e_typeof(self, n: A.TypeOf, scope: Scope) -> Any:
        return TypeHandle(_check_type(n.type))

    def e_outdecl(self, n: A.OutDecl, scope: Scope) -> Any:
        raise EvalError("An out variable declaration is only valid as a method argument")

    # --- statements ------------------------------------------------------------------------------------------------

    def exec(self, st: A.Stmt, scope: Scope) -> None:
        self.tick()
        _STMT[type(st)](self, st, scope)

    def exec_block(self, block: A.Block, scope: Scope) -> None:
        inner = Scope(scope)
        for st in block.body:
            self.exec(st, inner)

    def s_block(self, st: A.Block, scope: Scope) -> None:
        self.exec_block(st, scope)

    def s_exprstmt(self, st: A.ExprStmt, scope: Scope) -> None:
        self.ev(st.expr, scope)

    def s_vardecl(self, st: A.VarDecl, scope: Scope) -> None:
        full = _check_type(st.type) if st.type is not None else None
        for name, init in st.names:
            if init is None:
                value = default_of(st.type)
            else:
                value = self.ev(init, scope)
                if (
                    st.type is not None
                    and full in _NUMERIC_NAMES
                    and not st.type.array
                    and (is_integer(value) or isinstance(value, float | Decimal | Char))
                ):
                    value = cast(value, st.type)
            scope.declare(name, value)

    def s_if(self, st: A.If, scope: Scope) -> None:
        c = self.ev(st.cond, scope)
        if not isinstance(c, bool):
            raise EvalError(f"Cannot implicitly convert type '{net_type_name(c)}' to 'bool'")
        if c:
            self.exec(st.then, Scope(scope))
        elif st.other is not None:
            self.exec(st.other, Scope(scope))

    def s_return(self, st: A.Return, scope: Scope) -> None:
        raise _Return(self.ev(st.value, scope) if st.value is not None else None)

    def loop_body(self, body: A.Stmt, scope: Scope) -> bool:
        """Run one iteration; False when the loop must stop (``break``)."""
        try:
            self.exec(body, scope)
        except _Break:
            return False
        except _Continue:
            pass
        return True

    def s_foreach(self, st: A.Foreach, scope: Scope) -> None:
        seq = self.ev(st.iterable, scope)
        if seq is None:
            raise null_reference()
        try:
            items = items_of(seq)
        except NetException:
            raise EvalError(f"foreach statement cannot operate on variables of type '{net_type_name(seq)}'") from None
        for item in items:
            self.tick()
            inner = Scope(scope)
            inner.declare(
                st.name,
                cast(item, st.type)
                if st.type is not None
                and item is not None
                and resolve_type_name(st.type.name) not in (None, "System.Object")
                and not is_instance(item, st.type)
                else item,
            )
            if not self.loop_body(st.body, inner):
                break

    def s_for(self, st: A.For, scope: Scope) -> None:
        outer = Scope(scope)
        for s in st.init:
            self.exec(s, outer)
        while True:
            self.tick()
            if st.cond is not None:
                c = self.ev(st.cond, outer)
                if not isinstance(c, bool):
                    raise EvalError(f"Cannot implicitly convert type '{net_type_name(c)}' to 'bool'")
                if not c:
                    break
            if not self.loop_body(st.body, Scope(outer)):
                break
            for u in st.update:
                self.ev(u, outer)

    def s_while(self, st: A.While, scope: Scope) -> None:
        first = st.do
        while True:
            self.tick()
            if not first:
                c = self.ev(st.cond, scope)
                if not isinstance(c, bool):
                    raise EvalError(f"Cannot implicitly convert type '{net_type_name(c)}' to 'bool'")
                if not c:
                    break
            first = False
            if not self.loop_body(st.body, Scope(scope)):
                break

    def s_break(self, st: A.Break, scope: Scope) -> None:
        raise _Break

    def s_continue(self, st: A.Continue, scope: Scope) -> None:
        raise _Continue

    def s_throw(self, st: A.Throw, scope: Scope) -> None:
        if st.value is None:
            if not self.caught:
                raise EvalError("A throw statement with no arguments is not allowed outside of a catch clause")
            raise self.caught[-1]
        exc = self.ev(st.value, scope)
        if isinstance(exc, NetException):
            raise exc
        if exc is None:
            raise null_reference()
        raise EvalError(f"The type caught or thrown must be derived from System.Exception, not '{net_type_name(exc)}'")

    def s_try(self, st: A.Try, scope: Scope) -> None:
        try:
            try:
                self.exec_block(st.body, scope)
            except NetException as e:
                for c in st.catches:
                    if not _catches(c, e):
                        continue
                    inner = Scope(scope)
                    if c.name:
                        inner.declare(c.name, e)
                    if c.when is not None and self.ev(c.when, inner) is not True:
                        continue
                    self.caught.append(e)
                    try:
                        self.exec_block(c.body, inner)
                    finally:
                        self.caught.pop()
                    break
                else:
                    raise
        finally:
            if st.final is not None:
                self.exec_block(st.final, scope)

    def s_switch(self, st: A.Switch, scope: Scope) -> None:
        v = self.ev(st.subject, scope)
        chosen: A.SwitchSection | None = None
        for sec in st.sections:
            for label in sec.labels:
                if label is not None and net_equals(v, self.ev(label, scope)):
                    chosen = sec
                    break
            if chosen is not None:
                break
        if chosen is None:
            chosen = next((sec for sec in st.sections if None in sec.labels), None)
        if chosen is None:
            return
        inner = Scope(scope)
        try:
            for s in chosen.body:
                self.exec(s, inner)
        except _Break:
            pass

    def s_localfunction(self, st: A.LocalFunction, scope: Scope) -> None:
        scope.declare(st.name, Closure(st.params, st.body, scope, self))

    def s_empty(self, st: A.Empty, scope: Scope) -> None:
        return None


# --- what the interpreter and the compiler (``compiler.py``) share -------------------------------------------


def member_of(obj: Any, name: str, type_args: tuple[A.TypeRef, ...]) -> Any:
    """``obj.Name`` for a non-null ``obj`` (namespaces and types included)."""
    if isinstance(obj, NamespaceHandle):
        path = f"{obj.path}.{name}"
        full = resolve_type_name(path)
        if full is not None:
            return TypeHandle(full, type_args)
        if path in NAMESPACES:
            return NamespaceHandle(path)
        raise EvalError(f"The type or namespace name '{name}' does not exist in the namespace '{obj.path}'")
    if isinstance(obj, TypeHandle):
        try:
            return get_static(obj.full, name)
        except MemberNotFound:
            if has_static_method(obj.full, name):
                full = obj.full
                return lambda *a: call_static(full, name, list(a), ())
            raise EvalError(f"'{obj.full}' does not contain a definition for '{name}'") from None
    if isinstance(obj, Closure | NetException) and name not in ("Message",):
        raise EvalError(f"'{net_type_name(obj)}' does not contain a definition for '{name}'")
    try:
        return get_property(obj, name)
    except MemberNotFound:
        raise EvalError(f"'{net_type_name(obj)}' does not contain a definition for '{name}'") from None


def call_member(obj: Any, name: str, args: list[Any], targs: tuple[A.TypeRef, ...]) -> Any:
    """``obj.Name(args)`` for a non-null ``obj``."""
    if isinstance(obj, NamespaceHandle):
        raise EvalError(f"'{obj.path}' is a namespace but is used like a value")
    if isinstance(obj, TypeHandle):
        try:
            return call_static(obj.full, name, args, targs)
        except MemberNotFound as e:
            if str(e) == name:
                raise EvalError(f"'{obj.full}' does not contain a definition for '{name}'") from None
            raise
    if isinstance(obj, Closure) and name == "Invoke":
        return obj(*args)
    try:
        return call_method(obj, name, args, targs)
    except MemberNotFound as e:
        if str(e) == name:
            raise EvalError(f"'{net_type_name(obj)}' does not contain a definition for '{name}'") from None
        raise


def unary_op(op: str, value: Any) -> Any:
    """A C# unary operator (``! + - ~``) on a runtime value."""
    v = _unwrap(value)
    if op == "!":
        if not isinstance(v, bool):
            raise EvalError(f"Operator '!' cannot be applied to operand of type '{net_type_name(v)}'")
        return not v
    if v is None:
        return None
    if isinstance(v, Char):
        v = ord(v)
    if isinstance(v, bool) or not isinstance(v, int | float | Decimal | timedelta):
        raise EvalError(f"Operator '{op}' cannot be applied to operand of type '{net_type_name(v)}'")
    if op == "+":
        return v
    if op == "-":
        return _wrap_like(-v, v) if is_integer(v) else -v
    if op == "~" and is_integer(v):
        return _wrap_like(~v, v)
    raise EvalError(f"Operator '{op}' cannot be applied to operand of type '{net_type_name(v)}'")


def sized_array(elem: A.TypeRef | None, full: str | None, size: Any) -> Any:
    """``new T[size]`` (``full``: T's full name)."""
    if not is_integer(size) or size < 0:
        raise NetException("System.OverflowException", "Arithmetic operation resulted in an overflow.")
    if size > MAX_ITEMS:
        raise NetException("System.OutOfMemoryException", "Array dimensions exceeded supported range.")
    if full == "System.Byte" and elem is not None and not elem.array:
        return bytearray(size)
    return [default_of(elem)] * size


def listed_array(elem: A.TypeRef | None, full: str | None, items: list[Any]) -> Any:
    """``new T[] { items }`` (``full``: T's full name)."""
    if elem is not None and full in _NUMERIC_NAMES and not elem.array:
        items = [cast(x, elem) for x in items]
        if full == "System.Byte":
            return bytearray(items)
    return items


def cast_value(v: Any, t: A.TypeRef) -> Any:
    """C# ``(T)v``, with the interpreter's checks of the type name and of values no cast applies to."""
    _check_type(t)
    if isinstance(v, AnonymousObject | Closure) and resolve_type_name(t.name) != "System.Object":
        raise NetException("System.InvalidCastException", f"Unable to cast to type '{t}'.")
    return cast(v, t)


def _catches(c: A.Catch, e: NetException) -> bool:
    if c.type is None:
        return True
    full = resolve_type_name(c.type.name) or c.type.name
    if full == "System.Exception":
        return True
    if full == "System.ArgumentException" and e.type in (
        "System.ArgumentNullException",
        "System.ArgumentOutOfRangeException",
    ):
        return True
    return full == e.type or e.type.endswith("." + c.type.name)


def _check_type(t: A.TypeRef | None) -> str:
    if t is None:
        return "System.Object"
    full = resolve_type_name(t.name)
    if full is None:
        raise EvalError(f"The type or namespace name '{t.name}' could not be found")
    return full


_EXPR: dict[type, Callable[[Interpreter, Any, Scope], Any]] = {
    A.Literal: Interpreter.e_literal, A.Interpolated: Interpreter.e_interpolated, A.Name: Interpreter.e_name,
    A.TypeExpr: Interpreter.e_typeexpr, A.Member: Interpreter.e_member, A.Index: Interpreter.e_index,
    A.NullCondChain: Interpreter.e_nullcondchain, A.Call: Interpreter.e_call, A.Unary: Interpreter.e_unary,
    A.Update: Interpreter.e_update, A.Binary: Interpreter.e_binary, A.Conditional: Interpreter.e_conditional,
    A.Assign: Interpreter.e_assign, A.Cast: Interpreter.e_cast, A.AsExpr: Interpreter.e_asexpr,
    A.IsExpr: Interpreter.e_isexpr, A.Lambda: Interpreter.e_lambda, A.New: Interpreter.e_new,
    A.NewArray: Interpreter.e_newarray, A.NewAnonymous: Interpreter.e_newanonymous, A.Default: Interpreter.e_default,
    A.TypeOf: Interpreter.e_typeof, A.OutDecl: Interpreter.e_outdecl,
}  # fmt: skip

_STMT: dict[type, Callable[[Interpreter, Any, Scope], None]] = {
    A.Block: Interpreter.s_block, A.ExprStmt: Interpreter.s_exprstmt, A.VarDecl: Interpreter.s_vardecl,
    A.If: Interpreter.s_if, A.Return: Interpreter.s_return, A.Foreach: Interpreter.s_foreach,
    A.For: Interpreter.s_for, A.While: Interpreter.s_while, A.Break: Interpreter.s_break,
    A.Continue: Interpreter.s_continue, A.Throw: Interpreter.s_throw, A.Try: Interpreter.s_try,
    A.Switch: Interpreter.s_switch, A.LocalFunction: Interpreter.s_localfunction, A.Empty: Interpreter.s_empty,
}  # fmt: skip


# --- operators ----------------------------------------------------------------------------------------------


def _unwrap(v: Any) -> Any:
    """Primitive JValues take part in arithmetic and ordering by value (C# would need a cast)."""
    return v.value if isinstance(v, JValue) else v


def _wrap_like(result: int, *operands: Any) -> int:
    if any(isinstance(o, Long) for o in operands):
        return wrap64(result)
    return wrap32(result)


def _num(v: Any) -> Any:
    return ord(v) if isinstance(v, Char) else v


def _is_num(v: Any) -> bool:
    return isinstance(v, Char) or (isinstance(v, int | float | Decimal) and not isinstance(v, bool))


_RING_OPS: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
"""``+ - *`` mean the same on Decimal, double and integers; only ``/`` and ``%`` need a rule per type."""


def _arith(op: str, a: Any, b: Any) -> Any:
    x, y = _num(a), _num(b)
    ring = _RING_OPS.get(op)
    if isinstance(x, Decimal) or isinstance(y, Decimal):
        dx, dy = (
            Decimal(str(x)) if isinstance(x, float) else Decimal(x),
            Decimal(str(y)) if isinstance(y, float) else Decimal(y),
        )
        try:
            if ring is not None:
                return ring(dx, dy)
            if dy == 0:
                raise NetException("System.DivideByZeroException", "Attempted to divide by zero.")
            return dx / dy if op == "/" else dx % dy
        except (InvalidOperation, DivisionByZero, OverflowError):
            raise NetException(
                "System.OverflowException", "Value was either too large or too small for a Decimal."
            ) from None
    if isinstance(x, float) or isinstance(y, float):
        fx, fy = float(x), float(y)
        try:
            if ring is not None:
                return ring(fx, fy)
            if op == "/":
                if fy == 0:
                    return math.nan if fx == 0 or math.isnan(fx) else math.copysign(math.inf, fx) * math.copysign(1, fy)
                return fx / fy
            if fy == 0 or math.isinf(fx):
                return math.nan
            return math.fmod(fx, fy)
        except OverflowError:
            return math.inf
    ix, iy = int(x), int(y)
    if ring is not None:
        r = ring(ix, iy)
    else:
        if iy == 0:
            raise NetException("System.DivideByZeroException", "Attempted to divide by zero.")
        q = abs(ix) // abs(iy)
        q = q if (ix >= 0) == (iy >= 0) else -q
        r = q if op == "/" else ix - q * iy
    return _wrap_like(r, a, b)


def _shift(op: str, a: Any, b: Any) -> Any:
    x, y = _num(a), _num(b)
    if not is_integer(x) or not is_integer(y):
        raise EvalError(
            f"Operator '{op}' cannot be applied to operands of type '{net_type_name(a)}' and '{net_type_name(b)}'"
        )
    bits = 64 if isinstance(a, Long) else 32
    n = int(y) & (bits - 1)
    r = int(x) << n if op == "<<" else int(x) >> n
    return wrap64(r) if bits == 64 else wrap32(r)


def _concat(a: Any, b: Any) -> str:
    s = to_net_string(a) + to_net_string(b)
    if len(s) > MAX_STRING:
        check_len(s)
    return s


def binary_op(op: str, a: Any, b: Any) -> Any:
    """A C# binary operator (other than ``&&``, ``||``, ``??``) on runtime values."""
    if op == "==":
        return net_equals(a, b)
    if op == "!=":
        return not net_equals(a, b)
    if op == "+" and (
        (isinstance(a, str) and not isinstance(a, Char))
        or (isinstance(b, str) and not isinstance(b, Char))
        or (isinstance(a, Char) and isinstance(b, str) and not isinstance(b, Char))
    ):
        return _concat(a, b)
    a, b = _unwrap(a), _unwrap(b)
    if op in ("+", "-", "*", "/", "%"):
        if a is None or b is None:
            if (a is None or _is_num(a)) and (b is None or _is_num(b)):
                return None
        elif _is_num(a) and _is_num(b):
            return _arith(op, a, b)
        else:
            r = _temporal(op, a, b)
            if r is not NotImplemented:
                return r
    elif op in ("<", ">", "<=", ">="):
        if a is None or b is None:
            return False
        if (_is_num(a) and _is_num(b)) or (type(a) is type(b) and isinstance(a, datetime | timedelta | DateTimeOffset)):
            c = compare(a, b)
            if any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
                return False
            return {"<": c < 0, ">": c > 0, "<=": c <= 0, ">=": c >= 0}[op]
    elif op in ("&", "|", "^"):
        if isinstance(a, bool) and isinstance(b, bool):
            return {"&": a and b, "|": a or b, "^": a != b}[op]
        x, y = _num(a), _num(b)
        if is_integer(x) and is_integer(y):
            r = {"&": int(x) & int(y), "|": int(x) | int(y), "^": int(x) ^ int(y)}[op]
            return _wrap_like(r, a, b)
    elif op in ("<<", ">>"):
        return _shift(op, a, b)
    raise EvalError(
        f"Operator '{op}' cannot be applied to operands of type '{net_type_name(a)}' and '{net_type_name(b)}'"
    )


def _temporal(op: str, a: Any, b: Any) -> Any:
    try:
        if isinstance(a, datetime) and isinstance(b, timedelta) and op in "+-":
            return a + b if op == "+" else a - b
        if isinstance(a, DateTimeOffset) and isinstance(b, timedelta) and op in "+-":
            return DateTimeOffset(a.dt + b if op == "+" else a.dt - b)
        if isinstance(a, datetime) and isinstance(b, datetime) and op == "-":
            return a.replace(tzinfo=None) - b.replace(tzinfo=None)
        if isinstance(a, DateTimeOffset) and isinstance(b, DateTimeOffset) and op == "-":
            return a.dt - b.dt
        if isinstance(a, timedelta) and isinstance(b, timedelta) and op in "+-":
            return a + b if op == "+" else a - b
        if isinstance(a, timedelta) and _is_num(b) and op in "*/":
            return a * float(_num(b)) if op == "*" else a / float(_num(b))
    except (OverflowError, ZeroDivisionError):
        raise NetException(
            "System.OverflowException", "TimeSpan overflowed because the duration is too long."
        ) from None
    return NotImplemented
