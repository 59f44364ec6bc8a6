"""Recursive-descent / precedence-climbing parser for the C# subset, producing :mod:`.ast` nodes.

C#'s grammar ambiguities are resolved the way the C# specification does: ``(T)x`` is a cast when ``T`` is a
predefined type or the token after ``)`` can start an operand; ``F<T>(`` is a generic call when the type argument
list parses and is followed by one of the tokens in ``_GENERIC_FOLLOW``; ``(a, b) =>`` is a lambda when ``=>``
follows the matching parenthesis.
"""

from __future__ import annotations

from . import ast as A
from .lexer import Hole, LexError, Token, tokenize

MAX_DEPTH = 200

PREDEFINED = frozenset(
    [
        "bool",
        "byte",
        "sbyte",
        "char",
        "decimal",
        "double",
        "float",
        "int",
        "uint",
        "long",
        "ulong",
        "object",
        "short",
        "ushort",
        "string",
        "void",
    ]
)
_GENERIC_FOLLOW = frozenset(
    ["(", ")", "]", "}", ":", ";", ",", ".", "?", "==", "!=", "|", "^", "&&", "||", "&", "[", "=>", "?."]
)
_ASSIGN_OPS = frozenset(["=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>=", "??="])
# Binary operators by precedence level, lowest first (conditional and assignment are handled separately).
_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"??"}),
    frozenset({"||"}),
    frozenset({"&&"}),
    frozenset({"|"}),
    frozenset({"^"}),
    frozenset({"&"}),
    frozenset({"==", "!="}),
    frozenset({"<", ">", "<=", ">=", "is", "as"}),
    frozenset({"<<", ">>"}),
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
)
_CAST_FOLLOW_KINDS = frozenset({"ident", "int", "real", "string", "char", "interp"})
_CAST_FOLLOW_OPS = frozenset({"(", "!", "~"})
_STMT_KEYWORDS = frozenset(
    [
        "if",
        "return",
        "foreach",
        "for",
        "while",
        "do",
        "break",
        "continue",
        "throw",
        "try",
        "switch",
        "using",
        "checked",
        "unchecked",
        "const",
    ]
)


class _Backtrack(Exception):
    """A speculative parse did not match; the caller restores the position."""


def parse_program(src: str) -> A.Program:
    """Parse ``@(expr)``, ``@{ statements }`` or, for tests and tooling, a bare expression."""
    s = src.lstrip()
    lead = len(src) - len(s)
    if s.startswith("@(") or s.startswith("@{"):
        p = Parser(src, tokenize(src, lead + 1))
        if s[1] == "(":
            p.expect("(")
            body: A.Expr | A.Block = p.expression()
            p.expect(")")
        else:
            body = p.block()
        p.expect_eof()
        return A.Program(body, is_block=isinstance(body, A.Block))
    p = Parser(src, tokenize(src))
    expr = p.expression()
    p.expect_eof()
    return A.Program(expr)


class Parser:
    def __init__(self, src: str, tokens: list[Token]) -> None:
        self.src = src
        self.toks = tokens
        self.i = 0
        self.depth = 0

    # --- token helpers ---------------------------------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def look(self, k: int = 1) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def at(self, text: str, k: int = 0) -> bool:
        t = self.look(k)
        return t.text == text and t.kind in ("op", "keyword", "ident")

    def at_op(self, text: str, k: int = 0) -> bool:
        t = self.look(k)
        return t.kind == "op" and t.text == text

    def advance(self) -> Token:
        t = self.toks[self.i]
        if self.i < len(self.toks) - 1:
            self.i += 1
        return t

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.advance()
            return True
        return False

    def error(self, message: str, tok: Token | None = None) -> LexError:
        return LexError((tok or self.tok).pos, message)

    def unexpected(self, tok: Token | None = None) -> LexError:
        t = tok or self.tok
        if t.kind == "eof":
            return LexError(t.pos, "Unexpected end of expression")
        return LexError(t.pos, f"Invalid expression term '{t.text}'")

    def expect(self, text: str) -> Token:
        if not self.at(text):
            if self.tok.kind == "eof" or text in (")", "]", "}", ";", ">", ":"):
                raise self.error(f"'{text}' expected" + (f", found '{self.tok.text}'" if self.tok.text else ""))
            raise self.unexpected()
        return self.advance()

    def expect_eof(self) -> None:
        if self.tok.kind != "eof":
            raise self.error(f"Unexpected '{self.tok.text}' after the end of the expression")

    def ident(self) -> str:
        t = self.tok
        if t.kind != "ident":
            raise self.error(f"Identifier expected, found '{t.text}'" if t.text else "Identifier expected")
        self.advance()
        return t.text

    # --- types -----------------------------------------------------------------------------------------------------

    def try_type(self, allow_array: bool = True, nullable_follow_ident: bool = True) -> A.TypeRef | None:
        save = self.i
        try:
            return self._type_ref(allow_array, nullable_follow_ident)
        except (_Backtrack, LexError):
            self.i = save
            return None

    def type_ref(self, allow_array: bool = True, nullable_follow_ident: bool = True) -> A.TypeRef:
        try:
            return self._type_ref(allow_array, nullable_follow_ident)
        except _Backtrack:
            raise self.error(f"Type expected, found '{self.tok.text}'" if self.tok.text else "Type expected") from None

    def _type_ref(self, allow_array: bool = True, nullable_follow_ident: bool = True) -> A.TypeRef:
        t = self.tok
        if t.kind == "keyword" and t.text in PREDEFINED:
            self.advance()
            name = t.text
            args: tuple[A.TypeRef, ...] = ()
        elif t.kind == "ident":
            self.advance()
            name = t.text
            args = self.type_args() if self.at_op("<") else ()
            while self.at_op(".") and self.look().kind == "ident":
                self.advance()
                name += "." + self.advance().text
                args = self.type_args() if self.at_op("<") else ()
        else:
            raise _Backtrack
        nullable = False
        if self.at_op("?"):
            nxt = self.look()
            ok = nxt.kind == "eof" or nxt.text in (")", ";", ",", "]", "}", ">", "[", "??", "==", "!=", "&&", "||")
            if ok or (nullable_follow_ident and nxt.kind == "ident"):
                self.advance()
                nullable = True
        rank = 0
        while allow_array and self.at_op("[") and self.look().text in ("]", ","):
            self.advance()
            while self.accept(","):
                pass
            self.expect("]")
            rank += 1
        return A.TypeRef(name, args, rank, nullable)

    def type_args(self) -> tuple[A.TypeRef, ...]:
        if not self.at_op("<"):
            raise _Backtrack
        self.advance()
        args = [self._type_ref()]
        while self.at_op(","):
            self.advance()
            args.append(self._type_ref())
        if not self.at_op(">"):
            raise _Backtrack
        self.advance()
        return tuple(args)

    def try_generic_args(self) -> tuple[A.TypeRef, ...]:
        """Type arguments after a name in an expression, if this ``<`` starts them (else ``()``, position kept)."""
        save = self.i
        try:
            args = self.type_args()
        except (_Backtrack, LexError):
            self.i = save
            return ()
        if self.tok.kind == "eof" or self.tok.text in _GENERIC_FOLLOW:
            return args
        self.i = save
        return ()

    # --- expressions -----------------------------------------------------------------------------------------------

    def expression(self) -> A.Expr:
        with _Deeper(self):
            return self.assignment()

    def assignment(self) -> A.Expr:
        lam = self.try_lambda()
        if lam is not None:
            return lam
        left = self.conditional()
        t = self.tok
        op = t.text if t.kind == "op" else ""
        if op == ">" and self.look().text == ">=" and self.look().pos == t.end:
            self.advance()
            op = ">>="
        if op in _ASSIGN_OPS:
            self.advance()
            if not isinstance(left, A.Name | A.Member | A.Index):
                raise self.error("The left-hand side of an assignment must be a variable, property or indexer", t)
            return A.Assign(t.pos, op, left, self.expression())
        return left

    def try_lambda(self) -> A.Lambda | None:
        t = self.tok
        if t.kind == "ident" and self.at_op("=>", 1):
            self.advance()
            self.advance()
            return A.Lambda(t.pos, (t.text,), self.lambda_body())
        if not self.at_op("("):
            return None
        depth, j = 0, self.i
        while j < len(self.toks):
            x = self.toks[j]
            if x.kind == "op" and x.text == "(":
                depth += 1
            elif x.kind == "op" and x.text == ")":
                depth -= 1
                if depth == 0:
                    break
            elif x.kind == "eof":
                return None
            j += 1
        if j + 1 >= len(self.toks) or not (self.toks[j + 1].kind == "op" and self.toks[j + 1].text == "=>"):
            return None
        self.advance()
        params: list[str] = []
        while not self.at_op(")"):
            if self.look().kind == "ident" and self.tok.kind in ("ident", "keyword"):
                self.type_ref()
            params.append(self.ident())
            if not self.accept(","):
                break
        self.expect(")")
        self.expect("=>")
        return A.Lambda(t.pos, tuple(params), self.lambda_body())

    def lambda_body(self) -> A.Expr | A.Block:
        if self.at_op("{"):
            return self.block()
        return self.expression()

    def conditional(self) -> A.Expr:
        cond = self.binary(0)
        if self.at_op("?"):
            q = self.advance()
            with _Deeper(self):
                then = self.expression()
                self.expect(":")
                other = self.expression()
            return A.Conditional(q.pos, cond, then, other)
        return cond

    def _binary_op(self) -> tuple[str, int]:
        """The binary operator at the cursor and how many tokens it spans (``>>`` is two ``>``)."""
        t = self.tok
        if t.kind == "op":
            nxt = self.look()
            if t.text == ">" and nxt.kind == "op" and nxt.text in (">", ">=") and nxt.pos == t.end:
                return ">" + nxt.text, 2
            return t.text, 1
        if t.kind == "keyword" and t.text in ("is", "as"):
            return t.text, 1
        return "", 0

    def binary(self, level: int) -> A.Expr:
        if level >= len(_LEVELS):
            return self.unary()
        ops = _LEVELS[level]
        left = self.binary(level + 1)
        while True:
            op, width = self._binary_op()
            if op not in ops:
                return left
            t = self.tok
            for _ in range(width):
                self.advance()
            if op == "is":
                left = self.is_pattern(left, t)
            elif op == "as":
                left = A.AsExpr(t.pos, left, self.type_ref(nullable_follow_ident=False))
            elif op == "??":
                with _Deeper(self):
                    left = A.Binary(t.pos, op, left, self.binary(level))  # right associative
            else:
                left = A.Binary(t.pos, op, left, self.binary(level + 1))

    def is_pattern(self, left: A.Expr, t: Token) -> A.Expr:
        nt = self.tok
        if nt.kind in ("int", "real", "string", "char") or nt.text in ("null", "true", "false", "-"):
            return A.IsExpr(t.pos, left, None, None, self.unary())
        if nt.text == "not" and nt.kind == "ident":
            self.advance()
            inner = self.is_pattern(left, t)
            return A.Unary(t.pos, "!", inner)
        typ = self.type_ref(nullable_follow_ident=False)
        name = None
        if self.tok.kind == "ident" and not (self.tok.text in ("and", "or") and self.look().kind != "op"):
            name = self.advance().text
        return A.IsExpr(t.pos, left, typ, name)

    def unary(self) -> A.Expr:
        t = self.tok
        if t.kind == "op" and t.text in ("!", "-", "+", "~"):
            self.advance()
            with _Deeper(self):
                operand = self.unary()
            return A.Unary(t.pos, t.text, operand)
        if t.kind == "op" and t.text in ("++", "--"):
            self.advance()
            target = self.unary()
            return A.Update(t.pos, t.text, target, True)
        if t.kind == "op" and t.text == "(":
            cast = self.try_cast()
            if cast is not None:
                return cast
        return self.postfix(self.primary())

    def try_cast(self) -> A.Expr | None:
        save = self.i
        start = self.advance()
        typ = self.try_type()
        if typ is None or not self.at_op(")"):
            self.i = save
            return None
        self.advance()
        nxt = self.tok
        predefined = typ.name in PREDEFINED
        follows = (
            (nxt.kind in _CAST_FOLLOW_KINDS)
            or (nxt.kind == "op" and nxt.text in _CAST_FOLLOW_OPS)
            or (nxt.kind == "keyword" and nxt.text not in ("as", "is"))
        )
        closes = nxt.kind == "eof" or (nxt.kind == "op" and nxt.text in (")", ";", ",", "]", "}"))
        if (predefined and not closes) or follows:
            with _Deeper(self):
                operand = self.unary()
            return A.Cast(start.pos, typ, operand)
        self.i = save
        return None

    def postfix(self, expr: A.Expr) -> A.Expr:
        null_cond = False
        while True:
            t = self.tok
            if t.kind != "op":
                break
            if t.text in (".", "?."):
                self.advance()
                name_tok = self.tok
                name = self.ident()
                targs = self.try_generic_args() if self.at_op("<") else ()
                if t.text == "?.":
                    null_cond = True
                expr = A.Member(name_tok.pos, expr, name, targs, t.text == "?.")
            elif t.text == "?" and self.at_op("[", 1):
                self.advance()
                self.advance()
                null_cond = True
                expr = A.Index(t.pos, expr, self.expr_list("]"), True)
            elif t.text == "[":
                self.advance()
                expr = A.Index(t.pos, expr, self.expr_list("]"))
            elif t.text == "(":
                self.advance()
                expr = A.Call(t.pos, expr, self.arguments())
            elif t.text in ("++", "--"):
                self.advance()
                expr = A.Update(t.pos, t.text, expr, False)
            else:
                break
        return A.NullCondChain(expr.pos, expr) if null_cond else expr

    def expr_list(self, close: str) -> tuple[A.Expr, ...]:
        items: list[A.Expr] = []
        if not self.at_op(close):
            items.append(self.expression())
            while self.accept(","):
                items.append(self.expression())
        self.expect(close)
        return tuple(items)

    def arguments(self) -> tuple[A.Arg, ...]:
        args: list[A.Arg] = []
        if self.accept(")"):
            return ()
        while True:
            name = None
            if self.tok.kind == "ident" and self.at_op(":", 1):
                name = self.advance().text
                self.advance()
            mode = ""
            if self.tok.kind == "keyword" and self.tok.text in ("out", "ref", "in"):
                mode = self.advance().text
            if mode == "out":
                args.append(A.Arg(self.out_target(), name, mode))
            else:
                args.append(A.Arg(self.expression(), name, mode))
            if not self.accept(","):
                break
        self.expect(")")
        return tuple(args)

    def out_target(self) -> A.Expr:
        t = self.tok
        if t.kind == "ident" and t.text == "var" and self.look().kind == "ident":
            self.advance()
            return A.OutDecl(t.pos, None, self.ident())
        save = self.i
        typ = self.try_type()
        if typ is not None and self.tok.kind == "ident":
            return A.OutDecl(t.pos, typ, self.ident())
        self.i = save
        return self.unary()

    def primary(self) -> A.Expr:
        t = self.tok
        k = t.kind
        if k in ("int", "real", "string", "char"):
            self.advance()
            return A.Literal(t.pos, t.value)
        if k == "interp":
            self.advance()
            return self.interpolated(t)
        if k == "ident":
            self.advance()
            targs = self.try_generic_args() if self.at_op("<") else ()
            return A.Name(t.pos, t.text, targs)
        if k == "keyword":
            return self.keyword_primary(t)
        if k == "op" and t.text == "(":
            self.advance()
            with _Deeper(self):
                inner = self.expression()
            self.expect(")")
            return inner
        raise self.unexpected()

    def keyword_primary(self, t: Token) -> A.Expr:
        w = t.text
        if w in ("true", "false", "null"):
            self.advance()
            return A.Literal(t.pos, {"true": True, "false": False, "null": None}[w])
        if w in PREDEFINED:
            self.advance()
            return A.TypeExpr(t.pos, A.TypeRef(w))
        if w == "new":
            self.advance()
            return self.new_expr(t)
        if w in ("typeof", "default", "checked", "unchecked", "sizeof", "nameof"):
            self.advance()
            if w == "default" and not self.at_op("("):
                return A.Default(t.pos, None)
            self.expect("(")
            if w in ("checked", "unchecked"):
                inner = self.expression()
                self.expect(")")
                return inner
            typ = self.type_ref()
            self.expect(")")
            return A.Default(t.pos, typ) if w == "default" else A.TypeOf(t.pos, typ)
        if w == "this" or w == "base":
            raise self.error(f"Keyword '{w}' is not valid in a policy expression")
        raise self.unexpected()

    def new_expr(self, t: Token) -> A.Expr:
        if self.at_op("["):  # new[] { ... }
            self.advance()
            self.expect("]")
            return A.NewArray(t.pos, None, None, self.array_items())
        if self.at_op("{"):  # anonymous object
            self.advance()
            members: list[tuple[str, A.Expr]] = []
            while not self.at_op("}"):
                mt = self.tok
                if mt.kind == "ident" and self.at_op("=", 1):
                    self.advance()
                    self.advance()
                    members.append((mt.text, self.expression()))
                else:
                    e = self.expression()
                    name = e.name if isinstance(e, A.Member | A.Name) else None
                    if name is None:
                        raise self.error("Invalid anonymous type member declarator", mt)
                    members.append((name, e))
                if not self.accept(","):
                    break
            self.expect("}")
            return A.NewAnonymous(t.pos, tuple(members))
        typ = self.type_ref(allow_array=False)
        if self.at_op("["):
            self.advance()
            if self.at_op("]") or self.at_op(","):
                while self.accept(","):
                    pass
                self.expect("]")
                while self.at_op("[") and self.look().text in ("]", ","):
                    self.advance()
                    self.expect("]")
                return A.NewArray(t.pos, typ, None, self.array_items())
            size = self.expression()
            self.expect("]")
            items = self.array_items() if self.at_op("{") else None
            return A.NewArray(t.pos, typ, size, items)
        args: tuple[A.Arg, ...] = ()
        if self.accept("("):
            args = self.arguments()
        elif not self.at_op("{"):
            raise self.error("'(' expected")
        init = self.initializer() if self.at_op("{") else None
        return A.New(t.pos, typ, args, init)

    def array_items(self) -> tuple[A.Expr, ...]:
        self.expect("{")
        items: list[A.Expr] = []
        while not self.at_op("}"):
            if self.at_op("{"):
                items.append(A.NewArray(self.tok.pos, None, None, self.array_items()))
            else:
                items.append(self.expression())
            if not self.accept(","):
                break
        self.expect("}")
        return tuple(items)

    def initializer(self) -> tuple[A.Initializer, ...]:
        self.expect("{")
        out: list[A.Initializer] = []
        while not self.at_op("}"):
            t = self.tok
            if t.kind == "op" and t.text == "[":
                self.advance()
                keys = self.expr_list("]")
                self.expect("=")
                out.append(A.Initializer("index", keys=keys, value=self.expression()))
            elif t.kind == "ident" and self.at_op("=", 1):
                self.advance()
                self.advance()
                value = (
                    A.NewArray(self.tok.pos, None, None, self.array_items()) if self.at_op("{") else (self.expression())
                )
                out.append(A.Initializer("member", name=t.text, value=value))
            elif t.kind == "op" and t.text == "{":
                self.advance()
                out.append(A.Initializer("add", items=self.expr_list("}")))
            else:
                out.append(A.Initializer("add", items=(self.expression(),)))
            if not self.accept(","):
                break
        self.expect("}")
        return tuple(out)

    def interpolated(self, t: Token) -> A.Interpolated:
        parts: list[str | A.InterpHole] = []
        for part in t.value:
            if isinstance(part, str):
                parts.append(part)
                continue
            parts.append(self.hole(part))
        return A.Interpolated(t.pos, tuple(parts))

    def hole(self, h: Hole) -> A.InterpHole:
        sub = Parser(self.src, tokenize(self.src, h.offset, h.offset + len(h.source)))
        sub.depth = self.depth + 1
        expr = sub.expression()
        sub.expect_eof()
        align = None
        if h.alignment is not None:
            asub = Parser(self.src, tokenize(self.src, h.alignment_offset, h.alignment_offset + len(h.alignment)))
            align = asub.expression()
            asub.expect_eof()
        return A.InterpHole(expr, align, h.fmt)

    # --- statements ------------------------------------------------------------------------------------------------

    def block(self) -> A.Block:
        t = self.expect("{")
        with _Deeper(self):
            body: list[A.Stmt] = []
            while not self.at_op("}"):
                if self.tok.kind == "eof":
                    raise self.error("'}' expected")
                body.append(self.statement())
            self.advance()
        return A.Block(t.pos, tuple(body))

    def statement(self) -> A.Stmt:
        t = self.tok
        if t.kind == "op" and t.text == "{":
            return self.block()
        if t.kind == "op" and t.text == ";":
            self.advance()
            return A.Empty(t.pos)
        if t.kind == "keyword" and t.text in _STMT_KEYWORDS:
            if t.text in ("checked", "unchecked") and not self.at_op("{", 1):
                return self.expression_statement()
            return getattr(self, "stmt_" + t.text)()
        decl = self.try_declaration()
        if decl is not None:
            if not isinstance(decl, A.LocalFunction):
                self.expect(";")
            return decl
        return self.expression_statement()

    def expression_statement(self) -> A.Stmt:
        t = self.tok
        e = self.expression()
        if not isinstance(e, A.Assign | A.Call | A.Update | A.New | A.NullCondChain):
            raise self.error(
                "Only assignment, call, increment, decrement, and new object expressions can be used as a statement", t
            )
        self.expect(";")
        return A.ExprStmt(t.pos, e)

    def try_declaration(self) -> A.Stmt | None:
        t = self.tok
        if t.kind not in ("ident", "keyword"):
            return None
        save = self.i
        is_var = t.kind == "ident" and t.text == "var" and self.look().kind == "ident"
        if is_var:
            self.advance()
            typ: A.TypeRef | None = None
        else:
            typ = self.try_type()
            if typ is None or self.tok.kind != "ident":
                self.i = save
                return None
        nt = self.look()
        if nt.kind == "op" and nt.text == "(" and not is_var:  # local function
            name = self.ident()
            self.expect("(")
            params: list[str] = []
            while not self.at_op(")"):
                self.type_ref()
                params.append(self.ident())
                if not self.accept(","):
                    break
            self.expect(")")
            if self.accept("=>"):
                body: A.Block | A.Expr = self.expression()
                self.expect(";")
            else:
                body = self.block()
            return A.LocalFunction(t.pos, name, tuple(params), body)
        if not (nt.kind == "op" and nt.text in ("=", ";", ",")):
            self.i = save
            return None
        names: list[tuple[str, A.Expr | None]] = []
        while True:
            name = self.ident()
            init = None
            if self.accept("="):
                if self.at_op("{"):
                    init = A.NewArray(
                        self.tok.pos, typ.element() if typ and typ.array else None, None, self.array_items()
                    )
                else:
                    init = self.expression()
            names.append((name, init))
            if not self.accept(","):
                break
        return A.VarDecl(t.pos, typ, tuple(names))

    def paren_expr(self) -> A.Expr:
        self.expect("(")
        e = self.expression()
        self.expect(")")
        return e

    def embedded(self) -> A.Stmt:
        with _Deeper(self):
            return self.statement()

    def stmt_if(self) -> A.Stmt:
        t = self.advance()
        cond = self.paren_expr()
        then = self.embedded()
        other = self.embedded() if self.accept("else") else None
        return A.If(t.pos, cond, then, other)

    def stmt_return(self) -> A.Stmt:
        t = self.advance()
        value = None if self.at_op(";") else self.expression()
        self.expect(";")
        return A.Return(t.pos, value)

    def stmt_throw(self) -> A.Stmt:
        t = self.advance()
        value = None if self.at_op(";") else self.expression()
        self.expect(";")
        return A.Throw(t.pos, value)

    def stmt_break(self) -> A.Stmt:
        t = self.advance()
        self.expect(";")
        return A.Break(t.pos)

    def stmt_continue(self) -> A.Stmt:
        t = self.advance()
        self.expect(";")
        return A.Continue(t.pos)

    def stmt_foreach(self) -> A.Stmt:
        t = self.advance()
        self.expect("(")
        if self.tok.text == "var" and self.tok.kind == "ident":
            self.advance()
            typ = None
        else:
            typ = self.type_ref()
        name = self.ident()
        self.expect("in")
        iterable = self.expression()
        self.expect(")")
        return A.Foreach(t.pos, typ, name, iterable, self.embedded())

    def stmt_for(self) -> A.Stmt:
        t = self.advance()
        self.expect("(")
        init: list[A.Stmt] = []
        if not self.at_op(";"):
            decl = self.try_declaration()
            if decl is not None:
                init.append(decl)
            else:
                init.append(A.ExprStmt(self.tok.pos, self.expression()))
                while self.accept(","):
                    init.append(A.ExprStmt(self.tok.pos, self.expression()))
        self.expect(";")
        cond = None if self.at_op(";") else self.expression()
        self.expect(";")
        update: list[A.Expr] = []
        if not self.at_op(")"):
            update.append(self.expression())
            while self.accept(","):
                update.append(self.expression())
        self.expect(")")
        return A.For(t.pos, tuple(init), cond, tuple(update), self.embedded())

    def stmt_while(self) -> A.Stmt:
        t = self.advance()
        cond = self.paren_expr()
        return A.While(t.pos, cond, self.embedded())

    def stmt_do(self) -> A.Stmt:
        t = self.advance()
        body = self.embedded()
        self.expect("while")
        cond = self.paren_expr()
        self.expect(";")
        return A.While(t.pos, cond, body, do=True)

    def stmt_try(self) -> A.Stmt:
        t = self.advance()
        body = self.block()
        catches: list[A.Catch] = []
        while self.at("catch"):
            self.advance()
            typ = name = None
            if self.accept("("):
                typ = self.type_ref()
                if self.tok.kind == "ident":
                    name = self.ident()
                self.expect(")")
            when = None
            if self.tok.kind == "ident" and self.tok.text == "when":
                self.advance()
                when = self.paren_expr()
            catches.append(A.Catch(typ, name, self.block(), when))
        final = self.block() if self.accept("finally") else None
        if not catches and final is None:
            raise self.error("Expected catch or finally")
        return A.Try(t.pos, body, tuple(catches), final)

    def stmt_switch(self) -> A.Stmt:
        t = self.advance()
        subject = self.paren_expr()
        self.expect("{")
        sections: list[A.SwitchSection] = []
        while not self.at_op("}"):
            labels: list[A.Expr | None] = []
            while self.at("case") or self.at("default"):
                if self.advance().text == "case":
                    labels.append(self.expression())
                else:
                    labels.append(None)
                self.expect(":")
            if not labels:
                raise self.error("'case' or 'default' expected")
            body: list[A.Stmt] = []
            while not (self.at("case") or self.at("default") or self.at_op("}")):
                if self.tok.kind == "eof":
                    raise self.error("'}' expected")
                body.append(self.embedded())
            sections.append(A.SwitchSection(tuple(labels), tuple(body)))
        self.advance()
        return A.Switch(t.pos, subject, tuple(sections))

    def stmt_using(self) -> A.Stmt:
        t = self.advance()
        self.expect("(")
        decl = self.try_declaration() or A.ExprStmt(self.tok.pos, self.expression())
        self.expect(")")
        return A.Block(t.pos, (decl, self.embedded()))

    def stmt_checked(self) -> A.Stmt:
        self.advance()
        return self.block()

    stmt_unchecked = stmt_checked

    def stmt_const(self) -> A.Stmt:
        self.advance()
        decl = self.try_declaration()
        if decl is None:
            raise self.error("Type expected")
        self.expect(";")
        return decl


class _Deeper:
    """``with _Deeper(parser):`` parses one level deeper: past MAX_DEPTH a located syntax error, not a runaway
    recursion; the level is left however the enclosed parse ends (a backtrack included)."""

    __slots__ = ("p",)

    def __init__(self, p: Parser) -> None:
        self.p = p

    def __enter__(self) -> None:
        p = self.p
        p.depth += 1
        if p.depth > MAX_DEPTH:
            raise p.error("The expression is nested too deeply")

    def __exit__(self, *exc: object) -> None:
        self.p.depth -= 1
