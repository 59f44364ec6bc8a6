"""Tokenizer for the C# subset of APIM policy expressions.

Interpolated strings are split here into literal parts and holes; each hole keeps its source text and absolute
offset so the parser can parse it with the same machinery and report positions inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .dotnet import Char, Long

KEYWORDS = frozenset(
    [
        "abstract",
        "as",
        "base",
        "bool",
        "break",
        "byte",
        "case",
        "catch",
        "char",
        "checked",
        "class",
        "const",
        "continue",
        "decimal",
        "default",
        "delegate",
        "do",
        "double",
        "else",
        "enum",
        "event",
        "explicit",
        "extern",
        "false",
        "finally",
        "fixed",
        "float",
        "for",
        "foreach",
        "goto",
        "if",
        "implicit",
        "in",
        "int",
        "interface",
        "internal",
        "is",
        "lock",
        "long",
        "namespace",
        "new",
        "null",
        "object",
        "operator",
        "out",
        "override",
        "params",
        "private",
        "protected",
        "public",
        "readonly",
        "ref",
        "return",
        "sbyte",
        "sealed",
        "short",
        "sizeof",
        "stackalloc",
        "static",
        "string",
        "struct",
        "switch",
        "this",
        "throw",
        "true",
        "try",
        "typeof",
        "uint",
        "ulong",
        "unchecked",
        "unsafe",
        "ushort",
        "using",
        "virtual",
        "void",
        "volatile",
        "while",
    ]
)

# Longest first, so that a greedy scan picks e.g. "??=" before "??". ">>" is deliberately absent: the parser joins
# two adjacent ">" tokens, which keeps "List<List<int>>" parseable.
OPERATORS = (
    "??=", "<<=", "=>", "==", "!=", "<=", ">=", "&&", "||", "??", "?.", "++", "--", "+=", "-=", "*=", "/=", "%=",
    "&=", "|=", "^=", "<<", "::",
    "{", "}", "(", ")", "[", "]", ".", ",", ":", ";", "+", "-", "*", "/", "%", "&", "|", "^", "!", "~", "=", "<",
    ">", "?",
)  # fmt: skip

_SIMPLE_ESCAPES = {
    "'": "'", '"': '"', "\\": "\\", "0": "\0", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
    "v": "\v",
}  # fmt: skip


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9" if c else False


class LexError(Exception):
    """A lexical or syntax error at an offset inside the expression source."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


@dataclass(frozen=True)
class Hole:
    """An interpolation hole ``{expr,alignment:format}`` inside ``$"..."``: raw source and where it starts."""

    source: str
    offset: int
    alignment: str | None
    alignment_offset: int
    fmt: str | None


@dataclass(frozen=True)
class Token:
    kind: str  # ident | keyword | int | real | string | char | interp | op | eof
    text: str
    pos: int
    end: int
    value: Any = None


def tokenize(src: str, start: int = 0, stop: int | None = None) -> list[Token]:
    """All tokens of ``src[start:stop]``; offsets stay absolute within ``src``."""
    return _Lexer(src, start, len(src) if stop is None else stop).run()


class _Lexer:
    def __init__(self, src: str, start: int, stop: int) -> None:
        self.src = src
        self.i = start
        self.stop = stop

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.src[j] if j < self.stop else ""

    def run(self) -> list[Token]:
        out: list[Token] = []
        while True:
            self.skip_trivia()
            if self.i >= self.stop:
                out.append(Token("eof", "", self.stop, self.stop))
                return out
            out.append(self.next_token())

    def skip_trivia(self) -> None:
        src = self.src
        while self.i < self.stop:
            c = src[self.i]
            if c in " \t\r\n\f\v\ufeff\u00a0":
                self.i += 1
            elif c == "/" and self.peek(1) == "/":
                while self.i < self.stop and src[self.i] != "\n":
                    self.i += 1
            elif c == "/" and self.peek(1) == "*":
                end = src.find("*/", self.i + 2, self.stop)
                if end < 0:
                    raise LexError(self.i, "End-of-file found, '*/' expected")
                self.i = end + 2
            else:
                return

    def next_token(self) -> Token:
        c = self.peek()
        start = self.i
        if c == "$" or (c == "@" and self.peek(1) in ('"', "$")):
            return self.string_like()
        if c == '"':
            self.i += 1
            return Token("string", *self._regular_string(start))
        if c == "'":
            return self.char_literal()
        if _isdigit(c) or (c == "." and _isdigit(self.peek(1))):
            return self.number()
        if c.isalpha() or c == "_" or (c == "@" and (self.peek(1).isalpha() or self.peek(1) == "_")):
            if c == "@":
                self.i += 1
            j = self.i
            while j < self.stop and (self.src[j].isalnum() or self.src[j] == "_"):
                j += 1
            word = self.src[self.i : j]
            self.i = j
            kind = "keyword" if word in KEYWORDS and c != "@" else "ident"
            return Token(kind, word, start, j, word)
        for op in OPERATORS:
            if self.src.startswith(op, self.i) and self.i + len(op) <= self.stop:
                self.i += len(op)
                return Token("op", op, start, self.i, op)
        raise LexError(start, f"Unexpected character '{c}'")

    # --- strings ---------------------------------------------------------------------------------------------------

    def _regular_string(self, start: int) -> tuple[str, int, int, str]:
        """Scan the rest of a "..." literal (opening quote consumed)."""
        buf: list[str] = []
        while True:
            if self.i >= self.stop or self.src[self.i] == "\n":
                raise LexError(start, "Newline in constant" if self.i < self.stop else "Unterminated string literal")
            c = self.src[self.i]
            if c == '"':
                self.i += 1
                return self.src[start : self.i], start, self.i, "".join(buf)
            if c == "\\":
                buf.append(self.escape())
            else:
                buf.append(c)
                self.i += 1

    def escape(self) -> str:
        at = self.i
        c = self.peek(1)
        if c in _SIMPLE_ESCAPES:
            self.i += 2
            return _SIMPLE_ESCAPES[c]
        if c in ("u", "U", "x"):
            n = {"u": 4, "U": 8}.get(c)
            j = self.i + 2
            digits = ""
            while (
                j < self.stop
                and self.src[j] in "0123456789abcdefABCDEF"
                and (n is None or len(digits) < n)
                and (n is not None or len(digits) < 4)
            ):
                digits += self.src[j]
                j += 1
            if not digits or (n is not None and len(digits) != n):
                raise LexError(at, "Unrecognized escape sequence")
            self.i = j
            cp = int(digits, 16)
            if cp > 0x10FFFF:
                raise LexError(at, "Unrecognized escape sequence")
            return chr(cp)
        raise LexError(at, "Unrecognized escape sequence")

    def char_literal(self) -> Token:
        start = self.i
        self.i += 1
        if self.peek() == "\\":
            ch = self.escape()
        elif self.peek() in ("", "\n", "'"):
            raise LexError(start, "Empty character literal")
        else:
            ch = self.peek()
            self.i += 1
        if self.peek() != "'" or len(ch) != 1:
            raise LexError(start, "Too many characters in character literal")
        self.i += 1
        return Token("char", self.src[start : self.i], start, self.i, Char(ch))

    def string_like(self) -> Token:
        """``@"..."``, ``$"..."``, ``$@"..."`` and ``@$"..."``."""
        start = self.i
        prefix = ""
        while self.peek() in ("$", "@") and len(prefix) < 2 and self.peek() not in prefix:
            prefix += self.peek()
            self.i += 1
        if self.peek() != '"' or not prefix:
            raise LexError(start, f"Unexpected character '{self.src[start]}'")
        self.i += 1
        verbatim = "@" in prefix
        if "$" not in prefix:
            return Token("string", *self._verbatim_rest(start))
        parts: list[str | Hole] = []
        buf: list[str] = []
        while True:
            if self.i >= self.stop or (not verbatim and self.src[self.i] == "\n"):
                raise LexError(start, "Unterminated string literal" if self.i >= self.stop else "Newline in constant")
            c = self.src[self.i]
            if c == '"':
                if verbatim and self.peek(1) == '"':
                    buf.append('"')
                    self.i += 2
                    continue
                self.i += 1
                break
            if c == "\\" and not verbatim:
                buf.append(self.escape())
            elif c == "{" and self.peek(1) == "{":
                buf.append("{")
                self.i += 2
            elif c == "}" and self.peek(1) == "}":
                buf.append("}")
                self.i += 2
            elif c == "}":
                raise LexError(self.i, "A '}' character must be escaped (by doubling) in an interpolated string")
            elif c == "{":
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(self.hole())
            else:
                buf.append(c)
                self.i += 1
        if buf:
            parts.append("".join(buf))
        return Token("interp", self.src[start : self.i], start, self.i, tuple(parts))

    def _verbatim_rest(self, start: int) -> tuple[str, int, int, str]:
        buf: list[str] = []
        while True:
            if self.i >= self.stop:
                raise LexError(start, "Unterminated string literal")
            c = self.src[self.i]
            if c == '"':
                if self.peek(1) == '"':
                    buf.append('"')
                    self.i += 2
                    continue
                self.i += 1
                return self.src[start : self.i], start, self.i, "".join(buf)
            buf.append(c)
            self.i += 1

    def hole(self) -> Hole:
        """Scan ``{expr[,align][:fmt]}``, skipping nested brackets and literals; the opening brace is current."""
        open_at = self.i
        self.i += 1
        expr_start = self.i
        depth = 0
        expr_end = align_start = -1
        while True:
            if self.i >= self.stop:
                raise LexError(open_at, "Unterminated string literal")
            c = self.src[self.i]
            if c in "([{":
                depth += 1
            elif c in ")]" or (c == "}" and depth > 0):
                depth -= 1
            elif depth == 0 and c in ",:}":
                break
            # peek() is "" at the end, and "" is `in` every string: compare with tuples. A sub-lexer that does not
            # move on (a lone '/' at the end) must not stall the scan either.
            if c in "\"'$@" and (c in "\"'" or self.peek(1) in ('"', "$", "@")):
                sub = _Lexer(self.src, self.i, self.stop)
                sub.next_token()
                if sub.i > self.i:
                    self.i = sub.i
                    continue
            elif c == "/" and self.peek(1) in ("/", "*"):
                sub = _Lexer(self.src, self.i, self.stop)
                sub.skip_trivia()
                if sub.i > self.i:
                    self.i = sub.i
                    continue
            self.i += 1
        expr_end = self.i
        alignment: str | None = None
        if self.src[self.i] == ",":
            self.i += 1
            align_start = self.i
            while self.i < self.stop and self.src[self.i] not in ":}":
                self.i += 1
            alignment = self.src[align_start : self.i]
        fmt: str | None = None
        if self.i < self.stop and self.src[self.i] == ":":
            self.i += 1
            fs = self.i
            while self.i < self.stop and self.src[self.i] != "}":
                if self.src[self.i] == "\n":
                    raise LexError(fs, "Newline in constant")
                self.i += 1
            fmt = self.src[fs : self.i]
        if self.i >= self.stop:
            raise LexError(open_at, "Unterminated string literal")
        self.i += 1  # closing brace
        text = self.src[expr_start:expr_end]
        if not text.strip():
            raise LexError(open_at, "Empty format specifier")
        return Hole(text, expr_start, alignment, align_start, fmt)

    # --- numbers ---------------------------------------------------------------------------------------------------

    def number(self) -> Token:
        start = self.i
        src = self.src
        if self.peek() == "0" and self.peek(1) in ("x", "X", "b", "B"):
            base = 16 if self.peek(1) in "xX" else 2
            self.i += 2
            digits = "0123456789abcdefABCDEF_" if base == 16 else "01_"
            while self.i < self.stop and src[self.i] in digits:
                self.i += 1
            body = src[start + 2 : self.i].replace("_", "")
            if not body:
                raise LexError(start, "Invalid number")
            return self._int_suffix(start, int(body, base))
        while self.i < self.stop and (_isdigit(src[self.i]) or src[self.i] == "_"):
            self.i += 1
        is_real = False
        if self.peek() == "." and _isdigit(self.peek(1)):
            is_real = True
            self.i += 1
            while self.i < self.stop and (_isdigit(src[self.i]) or src[self.i] == "_"):
                self.i += 1
        if self.peek() in ("e", "E") and (_isdigit(self.peek(1)) or (self.peek(1) in "+-" and _isdigit(self.peek(2)))):
            is_real = True
            self.i += 2
            while self.i < self.stop and _isdigit(src[self.i]):
                self.i += 1
        body = src[start : self.i].replace("_", "")
        suffix = self.peek().lower()
        if suffix in ("f", "d", "m"):
            self.i += 1
            if suffix == "m":
                try:
                    return Token("real", src[start : self.i], start, self.i, Decimal(body))
                except InvalidOperation as e:
                    raise LexError(start, "Invalid number") from e
            return Token("real", src[start : self.i], start, self.i, float(body))
        if is_real:
            return Token("real", src[start : self.i], start, self.i, float(body))
        return self._int_suffix(start, int(body))

    def _int_suffix(self, start: int, value: int) -> Token:
        suffix = ""
        while self.peek().lower() in ("u", "l") and len(suffix) < 2:
            suffix += self.peek().lower()
            self.i += 1
        if self.peek().isalnum() or self.peek() == "_":
            raise LexError(self.i, f"Invalid number suffix '{self.peek()}'")
        if value >= 2**64:
            raise LexError(start, "Integral constant is too large")
        v: int = Long(value) if ("l" in suffix or value > 0x7FFFFFFF) else value
        return Token("int", self.src[start : self.i], start, self.i, v)
