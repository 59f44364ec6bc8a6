"""Policy expressions compiled once to Python closures, so a flow runs no tree walk, dispatch table or budget check.

Only programs whose run is bounded by their size are compiled: no loops, lambdas, local functions, ``try`` or
``switch``, no ``out``/``ref`` arguments, assignments only to local variables of a ``@{ }`` block, and a tree small
and shallow enough that the interpreter could neither run out of its step budget nor of Python's stack on it.
``compile_program`` returns None for anything else, which the interpreter then runs. Each closure does what the
interpreter's method for its node does, in the same order and through the same helpers, so values and errors are
the same; closures capture only the tree's immutable parts, so one compiled program serves every flow and policy.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from . import ast as A
from .dotnet import MAX_STRING, Char, NetException, check_len, is_integer, null_reference
from .interpreter import (
    _NUMERIC_NAMES,
    MAX_STEPS,
    Closure,
    EvalError,
    Scope,
    _check_type,
    _NullShort,
    binary_op,
    call_member,
    cast_value,
    listed_array,
    member_of,
    sized_array,
    unary_op,
)
from .members import (
    _CONTEXT_ATTRS,
    _METHODS,
    MemberNotFound,
    align,
    call_static,
    construct,
    format_value,
    get_static,
    has_static_method,
    index_get,
    index_set,
    set_property,
)
from .runtime_types import (
    NAMESPACES,
    AnonymousObject,
    NamespaceHandle,
    TypeHandle,
    as_cast,
    cast,
    default_of,
    is_instance,
    net_equals,
    net_type_name,
    resolve_type_name,
)

#: (context, scope) → value; ``scope`` is None in a single expression (it has no local variables).
Fn = Callable[[Any, Scope | None], Any]
#: A statement: None when it completes, ``(value,)`` when it returns ``value``.
StmtFn = Callable[[Any, Scope], tuple[Any] | None]

#: Deeper trees are left to the interpreter: its RecursionError must stay where it would be.
MAX_DEPTH = 48


class _Unsupported(Exception):
    """A node the compiler leaves to the interpreter."""


def compile_program(program: A.Program) -> Fn | None:
    """A function of (context, None) that evaluates ``program`` as ``Interpreter(context).run(program)`` does, or
    None when the interpreter must run it."""
    if not _bounded(program.body, 0, [0]):
        return None
    try:
        if not program.is_block:
            return _Compiler(False).expr(program.body)  # type: ignore[arg-type]
        block = _Compiler(True).block(program.body)  # type: ignore[arg-type]
    except _Unsupported:
        return None

    def run(context: Any, _: None) -> Any:
        returned = block(context, None)  # the block's own scope is the outermost one (Interpreter.run's is empty)
        if returned is None:
            raise EvalError("Not all code paths return a value")
        return returned[0]

    return run


def _bounded(node: Any, depth: int, count: list[int]) -> bool:
    """Whether the tree under ``node`` is at most MAX_DEPTH deep and has fewer nodes than the step budget."""
    if depth > MAX_DEPTH:
        return False
    count[0] += 1
    if count[0] >= MAX_STEPS:
        return False
    if isinstance(node, tuple):
        return all(_bounded(x, depth, count) for x in node)
    fields = getattr(node, "__dataclass_fields__", None)
    if fields is None or isinstance(node, A.TypeRef):
        return True
    return all(_bounded(getattr(node, f), depth + 1, count) for f in fields)


#: What call_member answers before looking at call_method's cache.
_SPECIAL = (TypeHandle, NamespaceHandle, Closure)


def _indexed(obj: Any, values: list[Any]) -> Any:
    """``obj[values]`` as ``index_get`` answers it, with the interpreter's error for a value that has no indexer."""
    try:
        return index_get(obj, values)
    except MemberNotFound:
        raise EvalError(f"Cannot apply indexing with [] to an expression of type '{net_type_name(obj)}'") from None


def _null_target(obj: Any, null_cond: bool) -> Any:
    if null_cond:
        raise _NullShort
    raise null_reference()


def _literal_values(args: tuple[A.Arg, ...]) -> tuple[Any, ...] | None:
    """The values of positional arguments that are all literals (``args`` then returns a list of them), else None."""
    if any(a.name or a.mode in ("out", "ref") or not isinstance(a.value, A.Literal) for a in args):
        return None
    return tuple(a.value.value for a in args)  # type: ignore[attr-defined]


def _checked(result: Any) -> Any:
    if isinstance(result, str) and len(result) > MAX_STRING:
        check_len(result)
    return result


class _Compiler:
    def __init__(self, locals_: bool) -> None:
        #: A ``@{ }`` block: names may be local variables, looked up in the scope at run time.
        self.locals = locals_

    # --- expressions -----------------------------------------------------------------------------------------

    def expr(self, n: A.Expr) -> Fn:
        method = getattr(self, "e_" + type(n).__name__.lower(), None)
        if method is None:
            raise _Unsupported(type(n).__name__)
        return method(n)  # type: ignore[no-any-return]

    def e_literal(self, n: A.Literal) -> Fn:
        value = n.value
        return lambda c, s: value

    def e_name(self, n: A.Name) -> Fn:
        name, type_args = n.name, n.type_args
        full = resolve_type_name(name)

        def outside(c: Any) -> Any:  # e_name past the scope lookup
            if name == "context":
                return c
            if full is not None:
                return TypeHandle(full, type_args)
            if name in NAMESPACES:
                return NamespaceHandle(name)
            raise EvalError(f"The name '{name}' does not exist in the current context")

        if not self.locals:
            if name == "context":
                return lambda c, s: c
            return lambda c, s: outside(c)

        def local(c: Any, s: Scope) -> Any:
            found = s.find(name)
            if found is not None:
                return found.vars[name]
            return outside(c)

        return local  # type: ignore[return-value]

    def _static_type(self, n: A.Expr) -> str | None:
        """The full name of a type that ``n`` (a name) always denotes, or None: then the handle is not needed."""
        if self.locals or not isinstance(n, A.Name) or n.name == "context":
            return None
        return resolve_type_name(n.name)

    def _is_context(self, n: A.Expr) -> bool:
        """Whether ``n`` is the name ``context`` outside a block (no local can shadow it): what ``e_name``
        compiles to ``lambda c, s: c``."""
        return not self.locals and isinstance(n, A.Name) and n.name == "context"

    def e_typeexpr(self, n: A.TypeExpr) -> Fn:
        full = resolve_type_name(n.type.name) or n.type.name
        return lambda c, s: TypeHandle(full)

    def e_member(self, n: A.Member) -> Fn:
        name, type_args = n.name, n.type_args
        if name == "HasValue" and not n.null_cond:
            fn = self.expr(n.target)

            def has_value(c: Any, s: Any) -> Any:
                value = fn(c, s)
                return value is not None and (
                    not isinstance(value, TypeHandle | NamespaceHandle) or member_of(value, name, type_args)
                )

            return has_value
        full = self._static_type(n.target)
        if full is not None:  # Type.Member: what member_of does with a handle nobody else sees

            def static(c: Any, s: Any) -> Any:
                try:
                    return get_static(full, name)
                except MemberNotFound:
                    if has_static_method(full, name):
                        return lambda *a: call_static(full, name, list(a), ())
                    raise EvalError(f"'{full}' does not contain a definition for '{name}'") from None

            return static
        # A chain of plain members (context.Request.Headers) walks in one closure, as nested ones would.
        chain = [(name, type_args, n.null_cond)]
        root: A.Expr = n.target
        while (
            isinstance(root, A.Member)
            and not (root.name == "HasValue" and not root.null_cond)
            and self._static_type(root.target) is None
        ):
            chain.append((root.name, root.type_args, root.null_cond))
            root = root.target
        # Each step: [name, type arguments, null-conditional, the type it last resolved for, its attribute]. A step
        # remembers the context model attribute it found for the type it met: the next flow's objects have the same
        # types, and skip the key tuple, its hash and the lookup (``_CONTEXT_ATTRS`` only grows, so it stays right).
        steps = [[name, targs, null_cond, None, None] for name, targs, null_cond in reversed(chain)]
        fn = None if self._is_context(root) else self.expr(root)  # None: the root is the context itself, no call

        def member(c: Any, s: Any) -> Any:
            obj = c if fn is None else fn(c, s)
            for step in steps:
                if obj is None:
                    _null_target(obj, step[2])
                cls = type(obj)
                if cls is step[3]:
                    obj = getattr(obj, step[4])
                    continue
                attr = _CONTEXT_ATTRS.get((cls, step[0]))
                if attr is None:
                    obj = member_of(obj, step[0], step[1])
                else:  # a context model member: what member_of would find first
                    step[3], step[4] = cls, attr
                    obj = getattr(obj, attr)
            return obj

        return member

    def e_index(self, n: A.Index) -> Fn:
        target, null_cond = self.expr(n.target), n.null_cond
        keys = tuple(self.expr(k) for k in n.args)
        if len(keys) == 1 and isinstance(n.args[0], A.Literal):  # obj["name"]: the key is known now
            key = n.args[0].value

            def index_literal(c: Any, s: Any) -> Any:
                obj = target(c, s)
                if obj is None:
                    _null_target(obj, null_cond)
                if type(obj) is dict and type(key) is str and key in obj:
                    return obj[key]  # index_get's answer for a present string key (context.Variables["…"])
                return _indexed(obj, [key])

            return index_literal
        if len(keys) == 1:  # obj[key], the usual form: no list of keys unless index_get needs one
            only = keys[0]

            def index1(c: Any, s: Any) -> Any:
                obj = target(c, s)
                if obj is None:
                    _null_target(obj, null_cond)
                key = only(c, s)
                if type(obj) is dict and type(key) is str and key in obj:
                    return obj[key]  # index_get's answer for a present string key (context.Variables["…"])
                return _indexed(obj, [key])

            return index1

        def index(c: Any, s: Any) -> Any:
            obj = target(c, s)
            if obj is None:  # Interpreter.target: the value, which must not be null
                _null_target(obj, null_cond)
            return _indexed(obj, [k(c, s) for k in keys])

        return index

    def e_nullcondchain(self, n: A.NullCondChain) -> Fn:
        fn = self.expr(n.expr)

        def chain(c: Any, s: Any) -> Any:
            try:
                return fn(c, s)
            except _NullShort:
                return None

        return chain

    def args(self, args: tuple[A.Arg, ...]) -> Callable[[Any, Any], list[Any]]:
        """Interpreter.args without out/ref: values in source order, then named ones moved last."""
        if any(a.mode in ("out", "ref") for a in args):
            raise _Unsupported("out/ref argument")
        fns = tuple(self.expr(a.value) for a in args)
        if not any(a.name for a in args):
            if all(isinstance(a.value, A.Literal) for a in args):  # the same literal objects, in a new list
                values = tuple(a.value.value for a in args)  # type: ignore[attr-defined]
                return lambda c, s: list(values)
            return lambda c, s: [f(c, s) for f in fns]
        order = [i for i, a in enumerate(args) if not a.name] + [i for i, a in enumerate(args) if a.name]

        def named(c: Any, s: Any) -> list[Any]:
            values = [f(c, s) for f in fns]
            return [values[i] for i in order]

        return named

    def e_call(self, n: A.Call) -> Fn:
        t = n.target
        args = self.args(n.args)
        if isinstance(t, A.Member):
            name, targs = t.name, t.type_args
            full = self._static_type(t.target)
            if full is not None:  # Type.Method(…): call_member on a handle nobody else sees

                def static(c: Any, s: Any) -> Any:
                    values = args(c, s)
                    try:
                        result = call_static(full, name, values, targs)
                    except MemberNotFound as e:
                        if str(e) == name:
                            raise EvalError(f"'{full}' does not contain a definition for '{name}'") from None
                        raise
                    return _checked(result)

                return static
            target, null_cond = self.expr(t.target), t.null_cond
            literals = _literal_values(n.args)
            # the method found for the type last met, as ``member`` remembers attributes (``_METHODS`` only grows)
            seen_cls: type | None = None
            seen_fn: Any = None

            def method(c: Any, s: Any) -> Any:
                nonlocal seen_cls, seen_fn
                obj = target(c, s)
                if obj is None:
                    _null_target(obj, null_cond)
                values = list(literals) if literals is not None else args(c, s)  # what ``args`` would return
                cls = type(obj)
                if cls is seen_cls:
                    fn = seen_fn
                else:
                    fn = None if cls in _SPECIAL else _METHODS.get((cls, name))
                    if fn is None:
                        return _checked(call_member(obj, name, values, targs))
                    seen_cls, seen_fn = cls, fn
                try:  # the method call_member finds first for any other type (call_method's cache)
                    result = fn(obj, values, targs)
                except MemberNotFound as e:
                    if str(e) == name:
                        raise EvalError(f"'{net_type_name(obj)}' does not contain a definition for '{name}'") from None
                    raise
                if type(result) is str and len(result) <= MAX_STRING:  # ``_checked``'s answer, without the call
                    return result
                return _checked(result)

            return method
        fn = self.expr(t)

        def call(c: Any, s: Any) -> Any:
            f = fn(c, s)
            values = args(c, s)
            if isinstance(f, TypeHandle):
                raise EvalError(f"'{f.full}' is a type but is used like a method")
            if not callable(f):
                raise EvalError(f"Method name expected, found a value of type '{net_type_name(f)}'")
            return _checked(f(*values))

        return call

    def e_unary(self, n: A.Unary) -> Fn:
        fn, op = self.expr(n.operand), n.op
        return lambda c, s: unary_op(op, fn(c, s))

    def e_binary(self, n: A.Binary) -> Fn:
        op, left, right = n.op, self.expr(n.left), self.expr(n.right)
        if op in ("&&", "||"):
            stop = op == "||"  # the left value that decides

            def logical(c: Any, s: Any) -> Any:
                a = left(c, s)
                if not isinstance(a, bool):
                    raise EvalError(f"Operator '{op}' cannot be applied to operand of type '{net_type_name(a)}'")
                if a is stop:
                    return a
                b = right(c, s)
                if not isinstance(b, bool):
                    raise EvalError(f"Operator '{op}' cannot be applied to operand of type '{net_type_name(b)}'")
                return b

            return logical
        if op == "??":

            def coalesce(c: Any, s: Any) -> Any:
                a = left(c, s)
                return a if a is not None else right(c, s)

            return coalesce
        if op == "==":
            if isinstance(n.right, A.Literal):  # a literal evaluates to its value, with nothing else to do
                constant = n.right.value
                return lambda c, s: net_equals(left(c, s), constant)
            return lambda c, s: net_equals(left(c, s), right(c, s))
        if op == "+":

            def plus(c: Any, s: Any) -> Any:
                a, b = left(c, s), right(c, s)
                if type(a) is str and type(b) is str:  # binary_op's concatenation (_concat) of two plain strings
                    return _checked(a + b)
                return binary_op(op, a, b)

            return plus
        return lambda c, s: binary_op(op, left(c, s), right(c, s))

    def e_conditional(self, n: A.Conditional) -> Fn:
        cond, then, other = self.expr(n.cond), self.expr(n.then), self.expr(n.other)

        def conditional(c: Any, s: Any) -> Any:
            v = cond(c, s)
            if not isinstance(v, bool):
                raise EvalError(f"Cannot implicitly convert type '{net_type_name(v)}' to 'bool'")
            return then(c, s) if v else other(c, s)

        return conditional

    def _local(self, n: A.Expr) -> str:
        """The local variable an assignment or ``++`` writes (the only targets compiled)."""
        if not self.locals or not isinstance(n, A.Name):
            raise _Unsupported("assignment")
        return n.name

    def e_assign(self, n: A.Assign) -> Fn:
        name, op = self._local(n.target), n.op
        current, value = self.expr(n.target), self.expr(n.value)

        def assign(c: Any, s: Scope) -> Any:
            if op == "=":
                v = value(c, s)
            elif op == "??=":
                cur = current(c, s)
                if cur is not None:
                    return cur
                v = value(c, s)
            else:
                cur = current(c, s)
                v = binary_op(op[:-1], cur, value(c, s))
                if isinstance(cur, Char) and is_integer(v):
                    v = Char(chr(v & 0xFFFF))
            _store(s, name, v)
            return v

        return assign  # type: ignore[return-value]

    def e_update(self, n: A.Update) -> Fn:
        name, op, prefix = self._local(n.target), n.op, n.prefix
        current = self.expr(n.target)

        def update(c: Any, s: Scope) -> Any:
            old = current(c, s)
            if isinstance(old, Char):
                new: Any = Char(chr((ord(old) + (1 if op == "++" else -1)) & 0xFFFF))
            else:
                new = binary_op("+" if op == "++" else "-", old, 1)
            _store(s, name, new)
            return new if prefix else old

        return update  # type: ignore[return-value]

    def e_cast(self, n: A.Cast) -> Fn:
        fn, t = self.expr(n.operand), n.type
        if resolve_type_name(t.name) == "System.String" and not t.array:

            def to_string(c: Any, s: Any) -> Any:
                v = fn(c, s)
                return v if type(v) is str else cast_value(v, t)  # what cast_value answers for a string

            return to_string
        return lambda c, s: cast_value(fn(c, s), t)

    def e_asexpr(self, n: A.AsExpr) -> Fn:
        fn, t = self.expr(n.operand), n.type

        def as_expr(c: Any, s: Any) -> Any:
            v = fn(c, s)
            _check_type(t)
            return as_cast(v, t)

        return as_expr

    def e_isexpr(self, n: A.IsExpr) -> Fn:
        fn, t, name = self.expr(n.operand), n.type, n.name
        if t is None:
            if n.constant is None:
                return lambda c, s: fn(c, s) is None
            constant = self.expr(n.constant)
            return lambda c, s: net_equals(fn(c, s), constant(c, s))
        if name is not None and not self.locals:
            raise _Unsupported("pattern variable outside a block")

        def is_expr(c: Any, s: Any) -> Any:
            v = fn(c, s)
            _check_type(t)
            ok = is_instance(v, t)
            if name is not None:
                s.declare(name, v if ok else default_of(t))
            return ok

        return is_expr

    def e_new(self, n: A.New) -> Fn:
        t, args = n.type, self.args(n.args)
        inits = tuple(self._initializer(i) for i in n.init or ())

        def new(c: Any, s: Any) -> Any:
            full = _check_type(t)
            values = args(c, s)
            try:
                obj = construct(full, values, t.args)
            except MemberNotFound:
                raise EvalError(f"Cannot create an instance of '{t}' in a policy expression") from None
            for init in inits:
                init(obj, c, s)
            return obj

        return new

    def _initializer(self, init: A.Initializer) -> Callable[[Any, Any, Any], None]:
        if init.kind == "add":
            items = tuple(self.expr(x) for x in init.items)
            return lambda obj, c, s: call_member(obj, "Add", [f(c, s) for f in items], ())
        value = self.expr(init.value)  # type: ignore[arg-type]
        if init.kind == "index":
            keys = tuple(self.expr(k) for k in init.keys)
            return lambda obj, c, s: index_set(obj, [k(c, s) for k in keys], value(c, s))
        name = init.name

        def member(obj: Any, c: Any, s: Any) -> None:
            v = value(c, s)
            if isinstance(obj, AnonymousObject):
                obj.members[name] = v
            else:
                set_property(obj, name, v)

        return member

    def e_newarray(self, n: A.NewArray) -> Fn:
        elem = n.type
        size = self.expr(n.size) if n.size is not None else None
        items = tuple(self.expr(x) for x in n.items) if n.items is not None else None

        def new_array(c: Any, s: Any) -> Any:
            full = _check_type(elem) if elem is not None else None
            if items is None:
                return sized_array(elem, full, size(c, s) if size is not None else 0)
            return listed_array(elem, full, [f(c, s) for f in items])

        return new_array

    def e_newanonymous(self, n: A.NewAnonymous) -> Fn:
        members = tuple((k, self.expr(v)) for k, v in n.members)
        return lambda c, s: AnonymousObject({k: f(c, s) for k, f in members})

    def e_default(self, n: A.Default) -> Fn:
        t = n.type
        return lambda c, s: default_of(t)

    def e_typeof(self, n: A.TypeOf) -> Fn:
        t = n.type
        return lambda c, s: TypeHandle(_check_type(t))

    def e_interpolated(self, n: A.Interpolated) -> Fn:
        parts = tuple(p if isinstance(p, str) else self._hole(p) for p in n.parts)

        def interpolated(c: Any, s: Any) -> str:
            out: list[str] = []
            size = 0
            for part in parts:
                if isinstance(part, str):
                    text = part
                else:
                    fn, alignment, fmt = part
                    text = format_value(fn(c, s), fmt)
                    if alignment is not None:
                        text = align(text, int(alignment(c, s)))
                size += len(text)
                if size > MAX_STRING:
                    check_len("x" * (MAX_STRING + 1))
                out.append(text)
            return "".join(out)

        return interpolated

    def _hole(self, p: A.InterpHole) -> tuple[Fn, Fn | None, str | None]:
        return self.expr(p.expr), None if p.alignment is None else self.expr(p.alignment), p.fmt

    # --- statements (a ``@{ }`` block) ----------------------------------------------------------------------

    def stmt(self, st: A.Stmt) -> StmtFn:
        method = getattr(self, "s_" + type(st).__name__.lower(), None)
        if method is None:
            raise _Unsupported(type(st).__name__)
        return method(st)  # type: ignore[no-any-return]

    def block(self, block: A.Block) -> StmtFn:
        """Interpreter.exec_block: the statements in a scope of their own."""
        body = tuple(self.stmt(st) for st in block.body)

        def run(c: Any, s: Scope | None) -> tuple[Any] | None:
            inner = Scope(s)
            for st in body:
                returned = st(c, inner)
                if returned is not None:
                    return returned
            return None

        return run

    def s_block(self, st: A.Block) -> StmtFn:
        return self.block(st)

    def s_exprstmt(self, st: A.ExprStmt) -> StmtFn:
        fn = self.expr(st.expr)

        def expression(c: Any, s: Scope) -> None:
            fn(c, s)

        return expression

    def s_vardecl(self, st: A.VarDecl) -> StmtFn:
        t = st.type
        names = tuple((name, None if init is None else self.expr(init)) for name, init in st.names)

        def declare(c: Any, s: Scope) -> None:
            full = _check_type(t) if t is not None else None
            for name, init in names:
                if init is None:
                    value = default_of(t)
                else:
                    value = init(c, s)
                    if (
                        t is not None
                        and full in _NUMERIC_NAMES
                        and not t.array
                        and (is_integer(value) or isinstance(value, float | Decimal | Char))
                    ):
                        value = cast(value, t)
                s.declare(name, value)

        return declare

    def s_if(self, st: A.If) -> StmtFn:
        cond, then = self.expr(st.cond), self.stmt(st.then)
        other = self.stmt(st.other) if st.other is not None else None

        def if_(c: Any, s: Scope) -> tuple[Any] | None:
            v = cond(c, s)
            if not isinstance(v, bool):
                raise EvalError(f"Cannot implicitly convert type '{net_type_name(v)}' to 'bool'")
            if v:
                return then(c, Scope(s))
            if other is not None:
                return other(c, Scope(s))
            return None

        return if_

    def s_return(self, st: A.Return) -> StmtFn:
        if st.value is None:
            return lambda c, s: (None,)
        fn = self.expr(st.value)
        return lambda c, s: (fn(c, s),)

    def s_throw(self, st: A.Throw) -> StmtFn:
        fn = self.expr(st.value) if st.value is not None else None

        def throw(c: Any, s: Scope) -> None:
            if fn is None:  # nothing is caught outside a try, which is never compiled
                raise EvalError("A throw statement with no arguments is not allowed outside of a catch clause")
            exc = fn(c, s)
            if isinstance(exc, NetException):
                raise exc
            if exc is None:
                raise null_reference()
            raise EvalError(
                f"The type caught or thrown must be derived from System.Exception, not '{net_type_name(exc)}'"
            )

        return throw

    def s_empty(self, st: A.Empty) -> StmtFn:
        return lambda c, s: None


def _store(scope: Scope, name: str, value: Any) -> None:
    """Interpreter.assign_to for a name."""
    found = scope.find(name)
    if found is None:
        raise EvalError(f"The name '{name}' does not exist in the current context")
    found.vars[name] = value
