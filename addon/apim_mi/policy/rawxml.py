"""Turning APIM "rawxml" into something an XML parser accepts, without losing where anything was written.

APIM policy files are usually not well-formed XML: expressions hold raw ``"`` and ``<`` inside attributes
(``condition="@(x.GetValueOrDefault<string>("a") == "b")"``). The gateway, and the policy toolkit's
``PolicyDecompiler.PreprocessXml``, cope by finding every ``@(…)`` / ``@{…}`` span with a C#-aware scanner and hiding it
before the XML parse (research/apim.md §1.2). This module holds those text-level steps; ``loader.py`` drives them:

1. ``substitute_named_values``: ``{{name}}`` → value, with an ``OffsetMap`` back to the original text.
2. ``prepare``: comments blanked and expression spans replaced by placeholders **of the same length, keeping their
   newlines**, so every offset, line and column after a span stays what it was in the file.
3. ``tokenize_tags``: start-tag / attribute positions (lxml has no element columns and normalises attribute
   whitespace, which would turn ``// comment\\n`` inside an ``@{ }`` block into a comment eating the rest).
4. ``restore`` and ``xml_unescape``: the original expression text back, with ``&quot;``/``&lt;``/… decoded.

Everything here is a pure function over strings. Failures are ``ScanError`` (a ``LoadError``) and nothing else.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import LoadError, Location

#: APIM named-value display names: letters, digits, '.', '-' and '_'. Anything else between ``{{ }}`` (Liquid's
#: ``{{ body.x }}`` with spaces, ``{{queue|topic}}`` in a snippet) is ordinary text.
NAMED_VALUE_RE = re.compile(r"\{\{([A-Za-z0-9._\-]+)\}\}")

UNTERMINATED_STRING = (
    'Unterminated string literal.  Strings that start with a quotation mark (") must be terminated before the end '
    'of the line.  However, strings that start with @ and a quotation mark (@") can span multiple lines.'
)

_PLACEHOLDER_MARK = "\ue000"
_PLACEHOLDER_PAD = "\ue001"
_PLACEHOLDER_INDEX_BASE = 0xF0000  # supplementary private use area: one character per index
MAX_EXPRESSIONS = 0xFFFD

Locator = Callable[[int], Location]


# --------------------------------------------------------------------------------------------------------- positions


@dataclass(frozen=True)
class LineIndex:
    """Offset ↔ 1-based (line, column) for one text; columns count characters, as .NET's XmlReader does."""

    starts: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> LineIndex:
        return cls((0, *(m.end() for m in re.finditer("\n", text))))

    def position(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.starts, max(offset, 0)) - 1
        return i + 1, offset - self.starts[i] + 1

    def offset(self, line: int, column: int) -> int:
        line = min(max(line, 1), len(self.starts))
        return self.starts[line - 1] + max(column, 1) - 1


@dataclass(frozen=True)
class OffsetMap:
    """Maps offsets in text after named-value substitution back to the file text.

    ``segments`` are ``(new_start, new_end, old_start, old_end)`` per substitution, in order. An offset inside a
    substituted value maps to its ``{{``: that is where the user wrote it.
    """

    segments: tuple[tuple[int, int, int, int], ...] = ()

    def to_original(self, offset: int) -> int:
        i = bisect.bisect_right([s[0] for s in self.segments], offset) - 1
        if i < 0:
            return offset
        _, new_end, old_start, old_end = self.segments[i]
        if offset < new_end:
            return old_start
        return offset - new_end + old_end


def make_locator(source: str, original: str, offsets: OffsetMap | None = None) -> Locator:
    """A function from an offset in the (substituted) text to a ``Location`` in the file."""
    index = LineIndex.of(original)
    omap = offsets or OffsetMap()

    def locate(offset: int) -> Location:
        line, column = index.position(omap.to_original(offset))
        return Location(source, line, column)

    return locate


def normalize_newlines(text: str) -> str:
    """XML's end-of-line handling (\\r\\n and \\r → \\n) up front, so our offsets and the parser's agree."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------------------------------------- errors


class PolicyLoadError(LoadError):
    """A validation error worded like APIM's; ``str()`` is ``file: Error in element 'x' on line L, column C: …``.

    ``location`` still carries the exact file:line:column (LoadError's contract); only the text avoids repeating it.
    """

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(location, message)
        self.args = (f"{location.file}: {message}",)


class ScanError(LoadError):
    """The raw policy text cannot be split into XML and expressions (unterminated expression, string, comment).

    ``reason`` is the bare explanation and ``offset`` the position in the scanned text, so the loader can wrap it
    in APIM's ``Error in element 'x' on line L, column C: …`` wording.
    """

    def __init__(self, location: Location, reason: str, offset: int = 0) -> None:
        super().__init__(location, reason)
        self.reason = reason
        self.offset = offset


class _Stop(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


# --------------------------------------------------------------------------------------------------- named values


@dataclass(frozen=True)
class NamedValueRef:
    name: str
    start: int  # offset of '{{' in the text
    end: int


def named_value_references(text: str) -> list[NamedValueRef]:
    """Every ``{{name}}`` outside XML comments (comments are documentation, not configuration)."""
    comments = _comment_ranges(text)
    refs = []
    for m in NAMED_VALUE_RE.finditer(text):
        if not _inside(comments, m.start()):
            refs.append(NamedValueRef(m.group(1), m.start(), m.end()))
    return refs


def lookup_named_value(named_values: Mapping[str, str], name: str) -> str | None:
    """Exact display name first, then case-insensitively (APIM treats display names case-insensitively)."""
    try:
        return named_values[name]
    except KeyError:
        pass
    folded = name.casefold()
    for key in list(named_values):
        if isinstance(key, str) and key.casefold() == folded:
            return named_values[key]
    return None


def substitute_named_values(
    text: str,
    named_values: Mapping[str, str],
    *,
    locate: Locator,
    describe: Callable[[int], str] | None = None,
) -> tuple[str, OffsetMap]:
    """Replace ``{{name}}`` textually, before anything else (values may hold expressions; they do not nest).

    Values are XML-escaped on the way in: that is invisible in attributes, text and expressions alike (expressions
    are XML-unescaped when extracted) and keeps a value holding ``&``, ``<`` or ``"`` from breaking the markup.
    ``describe(offset)`` may return an ``Error in element …: `` prefix for the unknown-name message.
    """
    out: list[str] = []
    segments: list[tuple[int, int, int, int]] = []
    pos = 0
    new_len = 0
    for ref in named_value_references(text):
        value = lookup_named_value(named_values, ref.name)
        if value is None:
            prefix = describe(ref.start) if describe else ""
            loc = locate(ref.start)
            raise PolicyLoadError(
                loc, f"{prefix}Named value '{ref.name}' is not defined (line {loc.line}, column {loc.column})."
            )
        chunk = text[pos : ref.start]
        out.append(chunk)
        new_len += len(chunk)
        escaped = xml_escape(str(value))
        out.append(escaped)
        segments.append((new_len, new_len + len(escaped), ref.start, ref.end))
        new_len += len(escaped)
        pos = ref.end
    if not segments:
        return text, OffsetMap()
    out.append(text[pos:])
    return "".join(out), OffsetMap(tuple(segments))


# ------------------------------------------------------------------------------------------------------- escaping

_ENTITY_RE = re.compile(r"&(#[0-9]+|#x[0-9A-Fa-f]+|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def xml_unescape(text: str) -> str:
    """XML's five entities and character references only (``html.unescape`` would also eat ``&lt`` without ';')."""

    def repl(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref.startswith("#"):
            try:
                code = int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])
                return chr(code)
            except (ValueError, OverflowError):
                return m.group(0)
        return _NAMED[ref]

    return _ENTITY_RE.sub(repl, text) if "&" in text else text


def xml_escape(text: str, *, quote: bool = True) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;").replace("'", "&apos;") if quote else text


# ----------------------------------------------------------------------------------------------- the C# scanner


def _skip_string(text: str, i: int, strict: bool) -> int:
    """``text[i:]`` starts a C# string literal (any prefix form); the offset just after it.

    Not ``strict`` (the toolkit's way), a regular string may run over a newline: the scanner only balances, and the
    expression compiler reports bad C#. ``strict`` is used to explain an unterminated span.
    """
    n = len(text)
    start = i
    verbatim = interpolated = False
    while i < n and text[i] in "@$":
        verbatim |= text[i] == "@"
        interpolated |= text[i] == "$"
        i += 1
    i += 1  # the opening quote
    while i < n:
        c = text[i]
        if c == '"':
            if verbatim and i + 1 < n and text[i + 1] == '"':
                i += 2
                continue
            return i + 1
        if not verbatim and c == "\\":
            i += 2
            continue
        if strict and not verbatim and c == "\n":
            raise _Stop(start, UNTERMINATED_STRING)
        if interpolated and c in "{}":
            if i + 1 < n and text[i + 1] == c:
                i += 2
                continue
            if c == "{":
                i = _scan_code(text, i + 1, "{", "}", hole=True, strict=strict)
                continue
        i += 1
    raise _Stop(start, UNTERMINATED_STRING if not verbatim else "Unterminated string literal.")


def _skip_char(text: str, i: int) -> int:
    """A char literal ``'x'`` / ``'\\n'`` / ``'\\u0041'``; a lone apostrophe is left as an ordinary character."""
    n = len(text)
    j = i + 1
    if j < n and text[j] == "\\":
        j += 2
        while j < n and text[j] not in "'\n" and j - i < 12:
            j += 1
    else:
        j += 1
    if j < n and text[j] == "'":
        return j + 1
    return i + 1


def _is_string_start(text: str, i: int) -> bool:
    c = text[i]
    if c == '"':
        return True
    if c in "@$":
        nxt = text[i + 1 : i + 3]
        return nxt[:1] == '"' or (nxt in ('$"', '@"') and nxt[0] != c)
    return False


def _scan_code(text: str, i: int, opener: str, closer: str, *, hole: bool = False, strict: bool = False) -> int:
    """Scan C# from ``i`` to the ``closer`` that balances an already consumed ``opener``; the offset after it.

    Like the toolkit, only the region's own bracket type is counted. In an interpolation hole a top-level ``:``
    starts a format specifier, which runs to the closing ``}``.
    """
    n = len(text)
    depth = 0
    other = 0
    while i < n:
        c = text[i]
        if _is_string_start(text, i):
            i = _skip_string(text, i, strict)
            continue
        if c == "'":
            i = _skip_char(text, i)
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            end = text.find("*/", i + 2)
            if end < 0:
                raise _Stop(i, "End-of-file found, '*/' expected.")
            i = end + 2
            continue
        if c == opener:
            depth += 1
        elif c == closer:
            if depth == 0:
                return i + 1
            depth -= 1
        elif hole:
            if c in "([":
                other += 1
            elif c in ")]":
                other = max(0, other - 1)
            elif c == ":" and depth == 0 and other == 0 and text[i + 1 : i + 2] != ":" and text[i - 1] != ":":
                end = text.find("}", i)
                if end < 0:
                    break
                return end + 1
        i += 1
    raise _Stop(-1, f"'{closer}' expected.")


def scan_expression(text: str, start: int = 0, *, locate: Locator | None = None) -> int:
    """The end offset (exclusive) of the ``@(…)`` or ``@{…}`` span starting at ``text[start]``.

    Raises ``ScanError`` for an unterminated span, string or block comment, located through ``locate`` (or in
    ``<text>`` coordinates when not given).
    """
    if text[start : start + 2] not in ("@(", "@{"):
        raise ScanError(_locate(text, start, locate), "A policy expression starts with '@(' or '@{'.", start)
    opener = text[start + 1]
    closer = ")" if opener == "(" else "}"
    try:
        return _scan_code(text, start + 2, opener, closer)
    except _Stop as lenient:
        stop = lenient
    try:  # the strict pass usually points at the real culprit: a string left open at the end of its line
        _scan_code(text, start + 2, opener, closer, strict=True)
    except _Stop as strict:
        stop = strict
    offset = start if stop.offset < 0 else stop.offset
    reason = stop.reason
    if stop.offset < 0:
        reason = f"The policy expression '@{opener}' is not terminated: {reason}"
    raise ScanError(_locate(text, offset, locate), reason, offset)


def whole_expression(value: str) -> bool:
    """Is the whole (trimmed) value one ``@(…)``/``@{…}`` span? Only then is it an expression (apim.md §1.2 rule 6)."""
    v = value.strip()
    if v[:2] not in ("@(", "@{"):
        return False
    try:
        return scan_expression(v) == len(v)
    except ScanError:
        return False


def _locate(text: str, offset: int, locate: Locator | None) -> Location:
    if locate is not None:
        return locate(offset)
    line, column = LineIndex.of(text).position(offset)
    return Location("<text>", line, column)


# ------------------------------------------------------------------------------------------------ placeholders


@dataclass(frozen=True)
class Span:
    """One ``@(…)``/``@{…}`` span of the (named-value substituted) text; ``raw`` is the text as written."""

    start: int
    end: int
    raw: str

    @property
    def source(self) -> str:
        """The expression text the compiler sees: XML entities decoded."""
        return xml_unescape(self.raw)


@dataclass(frozen=True)
class Prepared:
    """The text ready for an XML parser, plus the hidden spans (index = placeholder number)."""

    xml: str
    spans: tuple[Span, ...] = field(default_factory=tuple)


def placeholder(index: int, raw: str) -> str:
    """A stand-in with ``raw``'s length and newlines, made of characters that are plain XML text everywhere."""
    pad = "".join("\n" if c == "\n" else _PLACEHOLDER_PAD for c in raw[2:])
    return _PLACEHOLDER_MARK + chr(_PLACEHOLDER_INDEX_BASE + index) + pad


def _blank(text: str) -> str:
    return "".join("\n" if c == "\n" else " " for c in text)


def prepare(text: str, *, locate: Locator | None = None) -> Prepared:
    """One left-to-right pass: blank ``<!-- -->``, keep CDATA and ``<? ?>`` as they are, hide expression spans.

    Only spans that start a value (attribute value or element text, after optional whitespace) are hidden: in the
    middle of a literal (``Bearer @(x)``) an ``@(`` can never be an expression (§1.2 rule 6), and scanning it
    could swallow the markup after it when it happens to balance further on.

    A single pass (rather than "strip comments, then scan") keeps ``"<!--"`` inside an expression string intact and
    still ignores ``@(`` in comments, which the snippets have plenty of.
    """
    out: list[str] = []
    spans: list[Span] = []
    pos = 0
    i = 0
    n = len(text)
    while i < n:
        j = _next_interesting(text, i)
        if j < 0:
            break
        i = j
        if text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            if end < 0:
                break  # the XML parser reports the unterminated comment with its own position
            out.append(text[pos:i])
            out.append(_blank(text[i : end + 3]))
            pos = i = end + 3
        elif text.startswith("<![CDATA[", i):
            end = text.find("]]>", i)
            i = n if end < 0 else end + 3
        elif text.startswith("<?", i):
            end = text.find("?>", i)
            i = n if end < 0 else end + 2
        elif text.startswith(("@(", "@{"), i) and _at_value_start(text, i):
            end = scan_expression(text, i, locate=locate)
            if len(spans) >= MAX_EXPRESSIONS:
                raise ScanError(_locate(text, i, locate), "Too many policy expressions in one document.", i)
            raw = text[i:end]
            out.append(text[pos:i])
            out.append(placeholder(len(spans), raw))
            spans.append(Span(i, end, raw))
            pos = i = end
        else:
            i += 1
    out.append(text[pos:])
    return Prepared("".join(out), tuple(spans))


def _at_value_start(text: str, i: int) -> bool:
    """Does ``text[i]`` begin an attribute value or element text (only whitespace before it)?"""
    j = i - 1
    while j >= 0 and text[j] in " \t\n":
        j -= 1
    if j < 0 or text[j] == ">":
        return True
    if text[j] in "\"'":
        k = j - 1
        while k >= 0 and text[k] in " \t\n":
            k -= 1
        return k >= 0 and text[k] == "="
    return False


_INTERESTING = re.compile(r"<[!?]|@[({]")


def _next_interesting(text: str, i: int) -> int:
    m = _INTERESTING.search(text, i)
    return m.start() if m else -1


def has_placeholder(text: str) -> bool:
    return _PLACEHOLDER_MARK in text


def restore(text: str, spans: tuple[Span, ...] | list[Span], *, unescape: bool = True) -> tuple[str, list[int]]:
    """Put the expressions back into a string the parser returned; also which span numbers it contained."""
    if _PLACEHOLDER_MARK not in text:
        return text, []
    out: list[str] = []
    used: list[int] = []
    pos = 0
    while True:
        i = text.find(_PLACEHOLDER_MARK, pos)
        if i < 0 or i + 1 >= len(text):
            break
        index = ord(text[i + 1]) - _PLACEHOLDER_INDEX_BASE
        if not 0 <= index < len(spans):
            out.append(text[pos : i + 1])
            pos = i + 1
            continue
        span = spans[index]
        out.append(text[pos:i])
        out.append(span.source if unescape else span.raw)
        used.append(index)
        pos = min(len(text), i + len(span.raw))
    out.append(text[pos:])
    return "".join(out), used


def placeholder_index(text: str) -> int | None:
    """The span number when the trimmed ``text`` is exactly one placeholder (i.e. the value is an expression)."""
    t = text.strip()
    if len(t) < 3 or t[0] != _PLACEHOLDER_MARK:
        return None
    index = ord(t[1]) - _PLACEHOLDER_INDEX_BASE
    if index < 0 or _PLACEHOLDER_MARK in t[2:] or any(c not in f"{_PLACEHOLDER_PAD} \n\t" for c in t[2:]):
        return None
    return index


# ------------------------------------------------------------------------------------------------- tag positions


@dataclass(frozen=True)
class RawAttribute:
    name: str
    name_offset: int
    value_start: int  # after the opening quote
    value_end: int  # at the closing quote


@dataclass
class RawTag:
    """A start tag found in well-formed text: ``offset`` is the '<', ``content`` the offset after its '>'."""

    name: str
    offset: int
    content: int
    attributes: list[RawAttribute]
    self_closing: bool
    close: int = -1  # offset of the matching '</', or ``content`` when self-closing


_NAME_RE = re.compile(r"[^\s/>=\"']+")


def tokenize_tags(text: str) -> list[RawTag]:
    """Start tags in document order (the order lxml's ``iter()`` yields elements) with attribute value spans.

    Only valid on text an XML parser has accepted: then a '<' outside comments, CDATA, PIs and DOCTYPE is markup, and
    attribute values hold no '<' and no bare quote of their own kind.
    """
    tags: list[RawTag] = []
    stack: list[RawTag] = []
    n = len(text)
    i = text.find("<")
    while 0 <= i < n:
        if text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            i = n if end < 0 else end + 3
        elif text.startswith("<![CDATA[", i):
            end = text.find("]]>", i)
            i = n if end < 0 else end + 3
        elif text.startswith("<?", i):
            end = text.find("?>", i)
            i = n if end < 0 else end + 2
        elif text.startswith("<!", i):
            i = _skip_doctype(text, i)
        elif text.startswith("</", i):
            if stack:
                stack.pop().close = i
            end = text.find(">", i)
            i = n if end < 0 else end + 1
        else:
            tag, i = _start_tag(text, i)
            tags.append(tag)
            if tag.self_closing:
                tag.close = tag.content
            else:
                stack.append(tag)
        i = text.find("<", i)
    return tags


def _start_tag(text: str, i: int) -> tuple[RawTag, int]:
    n = len(text)
    m = _NAME_RE.match(text, i + 1)
    name = m.group(0) if m else ""
    j = m.end() if m else i + 1
    attrs: list[RawAttribute] = []
    while j < n:
        while j < n and text[j].isspace():
            j += 1
        if j >= n:
            break
        if text[j] == ">":
            return RawTag(name, i, j + 1, attrs, False), j + 1
        if text.startswith("/>", j):
            return RawTag(name, i, j + 2, attrs, True), j + 2
        am = _NAME_RE.match(text, j)
        if not am:
            j += 1
            continue
        aname, name_offset = am.group(0), j
        j = am.end()
        while j < n and text[j] in " \t\n=":
            j += 1
        if j < n and text[j] in "\"'":
            q = text[j]
            end = text.find(q, j + 1)
            end = n if end < 0 else end
            attrs.append(RawAttribute(aname, name_offset, j + 1, end))
            j = end + 1
    return RawTag(name, i, n, attrs, False), n


def _skip_doctype(text: str, i: int) -> int:
    depth = 0
    n = len(text)
    j = i + 2
    while j < n:
        c = text[j]
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == ">" and depth <= 0:
            return j + 1
        j += 1
    return n


def skip_space_and_comments(text: str, i: int, stop: int | None = None) -> int:
    """The first offset at or after ``i`` that is neither whitespace nor inside a ``<!-- -->`` comment."""
    n = len(text) if stop is None else stop
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            if end < 0:
                return i
            i = end + 3
        else:
            return i
    return i


# ------------------------------------------------------------------------------------- best-effort element finding


def _comment_ranges(text: str) -> list[tuple[int, int]]:
    ranges = []
    i = text.find("<!--")
    while i >= 0:
        end = text.find("-->", i + 4)
        end = len(text) if end < 0 else end + 3
        ranges.append((i, end))
        i = text.find("<!--", end)
    return ranges


def _inside(ranges: list[tuple[int, int]], offset: int) -> bool:
    return any(a <= offset < b for a, b in ranges)


_TAG_RE = re.compile(r"<(/?)([A-Za-z_][\w.:\-]*)")


def enclosing_element(text: str, offset: int) -> tuple[str, int] | None:
    """Best effort, for error messages before the XML parse: the innermost element open at ``offset``.

    Returns the element name and the offset of its name. Comments and complete expression spans before ``offset``
    are masked first, so ``GetValueOrDefault<string>`` does not read as a tag.
    """
    masked = _mask_for_tags(text[:offset])
    stack: list[tuple[str, int]] = []
    for m in _TAG_RE.finditer(masked):
        if m.group(1):
            if stack:
                stack.pop()
            continue
        close = masked.find(">", m.end())
        if close < 0:
            return m.group(2), m.start(2)  # ``offset`` is inside this start tag
        if masked[close - 1] != "/":
            stack.append((m.group(2), m.start(2)))
    return stack[-1] if stack else None


def _mask_for_tags(text: str) -> str:
    out: list[str] = []
    pos = 0
    i = 0
    n = len(text)
    while i < n:
        j = _next_interesting(text, i)
        if j < 0:
            break
        i = j
        if text.startswith("<!--", i) or text.startswith("<![CDATA[", i) or text.startswith("<?", i):
            closer = "-->" if text.startswith("<!--", i) else ("]]>" if text[i + 1] == "!" else "?>")
            end = text.find(closer, i + 2)
            end = n if end < 0 else end + len(closer)
        elif text.startswith(("@(", "@{"), i):
            try:
                end = scan_expression(text, i)
            except ScanError:
                end = n
        else:
            i += 1
            continue
        out.append(text[pos:i])
        out.append(" " * (end - i))
        pos = i = end
    out.append(text[pos:])
    return "".join(out)
