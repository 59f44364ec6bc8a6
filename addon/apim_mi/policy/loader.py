"""Real APIM policy XML ("rawxml") → ``Policy``: named values, expressions, fragments, ``<base/>``, validation.

Pipeline for one document (research/apim.md §1.2, §1.5, §1.6):

1. newlines normalised, ``{{named values}}`` substituted (unknown name = error at its ``{{``);
2. an ordinary XML parse; if the text is not well-formed, ``rawxml.prepare`` hides every ``@(…)``/``@{…}`` span behind
   a same-length placeholder and the parse is retried;
3. our own tag tokenizer supplies exact line/column for every element and attribute value (lxml has no columns);
4. the element tree becomes ``Statement``s, checked against ``catalog.CATALOG``; ``include-fragment`` is expanded
   in place; every expression is compiled with its absolute location.

Validation errors read like APIM's save-time errors, prefixed with the file:
``policies/orders.xml: Error in element 'set-header' on line 12, column 10: The required attribute 'name' is missing.``
Columns follow .NET's ``XmlReader``: the column of the element *name* (one after the ``<``), 1-based.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lxml import etree

from ..errors import LoadError, Location, PolicyError
from . import rawxml
from .catalog import CATALOG, SECTIONS_ENFORCED, Body, ChildSpec, ElementSpec, allowed_in
from .model import SECTIONS, CompiledExpression, ExpressionCompiler, Policy, Statement, Value
from .rawxml import PolicyLoadError

SCOPES: tuple[str, ...] = ("global", "workspace", "product", "api", "operation")
FRAGMENT_MAX_BYTES = 32 * 1024
_FRAGMENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
_NO_NAMED_VALUES: Mapping[str, str] = MappingProxyType({})

__all__ = [
    "DEFAULT_GLOBAL",
    "SCOPES",
    "PolicyLoadError",
    "compose",
    "default_global",
    "effective_policy_xml",
    "load_fragment_text",
    "load_policy_file",
    "load_policy_text",
]


def _element_error(element: str, loc: Location, reason: str, at: Location | None = None) -> PolicyLoadError:
    return PolicyLoadError(at or loc, f"Error in element '{element}' on line {loc.line}, column {loc.column}: {reason}")


# ------------------------------------------------------------------------------------------------- parsed nodes


@dataclass
class _Attr:
    name: str
    location: Location  # of the value's first non-blank character (the '@' of an expression)
    text: str  # decoded value (expressions: the trimmed "@(...)" source)
    is_expression: bool


@dataclass
class _Node:
    """An element as parsed, with positions already turned into file locations."""

    name: str
    location: Location
    attrs: list[_Attr] = field(default_factory=list)
    text: str | None = None
    text_location: Location | None = None
    text_is_expression: bool = False
    inner_markup: str | None = None  # raw inner XML, for set-body with element content
    children: list[_Node] = field(default_factory=list)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=False,
        encoding="utf-8",
    )  # fmt: skip


def _parse_xml(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode("utf-8"), _parser())


def _describe(text: str, locate: rawxml.Locator) -> Callable[[int], str]:
    """``Error in element 'x' on line L, column C: `` for an offset, best effort, before the XML parse."""

    def describe(offset: int) -> str:
        found = rawxml.enclosing_element(text, offset)
        if found is None:
            return ""
        name, name_offset = found
        loc = locate(name_offset)
        return f"Error in element '{name}' on line {loc.line}, column {loc.column}: "

    return describe


@dataclass(frozen=True)
class Origin:
    """Where a policy text embedded in another file starts: its first character is at ``line``:``column`` of that
    file, and every following line is indented by ``indent`` more columns (a YAML block scalar's indentation)."""

    line: int
    column: int
    indent: int = 0

    def shift(self, locator: rawxml.Locator) -> rawxml.Locator:
        def locate(offset: int) -> Location:
            loc = locator(offset)
            if loc.line <= 1:
                return Location(loc.file, self.line, self.column + max(loc.column, 1) - 1)
            return Location(loc.file, self.line + loc.line - 1, loc.column + self.indent)

        return locate


def _parse_document(
    text: str, source: str, named_values: Mapping[str, str], origin: Origin | None = None
) -> _Node:
    """Text of one file → the root ``_Node``; every failure is a ``LoadError`` located in that file."""
    original = rawxml.normalize_newlines(text)
    plain = rawxml.make_locator(source, original)
    if origin is not None:
        plain = origin.shift(plain)
    substituted, offsets = rawxml.substitute_named_values(
        original, named_values, locate=plain, describe=_describe(original, plain)
    )
    locate = rawxml.make_locator(source, original, offsets)
    if origin is not None:
        locate = origin.shift(locate)
    index = rawxml.LineIndex.of(substituted)

    spans: tuple[rawxml.Span, ...] = ()
    xml = substituted
    root: Any = None
    try:
        root = _parse_xml(substituted)
        if _needs_slow_path(root):
            root = None
    except etree.XMLSyntaxError:
        root = None
    except ValueError as e:  # lxml refuses e.g. some control characters outright
        raise PolicyLoadError(locate(0), f"The policy document is not well-formed XML: {e}") from None
    if root is None:
        try:
            prepared = rawxml.prepare(substituted, locate=locate)
        except rawxml.ScanError as e:
            raise PolicyLoadError(
                e.location, f"{_describe(substituted, locate)(e.offset)}{_with_position(e.reason, e.location)}"
            ) from None
        spans, xml = prepared.spans, prepared.xml
        try:
            root = _parse_xml(xml)
        except etree.XMLSyntaxError as e:
            line, column = e.position if e.position else (1, 1)
            loc = locate(index.offset(line, column))
            reason = re.sub(r", line \d+, column \d+$", "", str(e.msg or e))
            raise PolicyLoadError(
                loc, f"Error on line {loc.line}, column {loc.column}: The document is not well-formed XML: {reason}"
            ) from None
        except ValueError as e:
            raise PolicyLoadError(locate(0), f"The policy document is not well-formed XML: {e}") from None
    if root.getroottree().docinfo.doctype:
        loc = locate(0)
        raise PolicyLoadError(
            loc,
            f"Error on line {loc.line}, column {loc.column}: For security reasons DTD is prohibited in this XML "
            "document (remove the <!DOCTYPE>).",
        )
    return _Builder(substituted, xml, spans, locate).build(root)


def _with_position(reason: str, loc: Location) -> str:
    if reason.endswith("."):
        reason = reason[:-1]
    first, dot, rest = reason.partition(".")
    return f"{first} (line {loc.line}, column {loc.column}){dot}{rest}."


def _needs_slow_path(root: Any) -> bool:
    """A well-formed parse can still have split an expression (``@("a <b/> c")``, ``@("<!-- -->")``)."""
    for el in root.iter():
        text = (el.text or "").lstrip()
        if text[:2] in ("@(", "@{") and len(el) and not rawxml.whole_expression(el.text or ""):
            return True
    return False


@dataclass
class _Builder:
    """Walks the parsed tree next to our own tag positions and produces ``_Node``s."""

    substituted: str  # the text after named-value substitution (raw expression text lives here)
    xml: str  # what lxml parsed: ``substituted``, or it with comments blanked and placeholders in
    spans: tuple[rawxml.Span, ...]
    locate: rawxml.Locator

    def build(self, root: Any) -> _Node:
        elements = [el for el in root.iter() if isinstance(el.tag, str)]
        tags = rawxml.tokenize_tags(self.xml)
        positions = dict(zip(map(id, elements), tags, strict=False)) if len(tags) == len(elements) else {}
        return self._node(root, positions)

    def _node(self, el: Any, positions: dict[int, rawxml.RawTag]) -> _Node:
        tag = positions.get(id(el))
        name = etree.QName(el).localname if "}" in el.tag else el.tag
        loc = self.locate(tag.offset + 1) if tag else Location(self.locate(0).file, el.sourceline or 0, 1)
        node = _Node(name, loc)
        raw_attrs = {a.name: a for a in tag.attributes} if tag else {}
        for key, value in el.attrib.items():
            aname = etree.QName(key).localname if "}" in key else key
            node.attrs.append(self._attribute(aname, value, raw_attrs.get(aname), node))
        element_children = [c for c in el if isinstance(c.tag, str)]
        node.children = [self._node(c, positions) for c in element_children]
        self._text(el, node, tag, bool(element_children))
        return node

    def _attribute(self, name: str, parsed: str, raw: rawxml.RawAttribute | None, owner: _Node) -> _Attr:
        if raw is None:
            text, _ = rawxml.restore(parsed, self.spans)
            return _Attr(name, owner.location, text, _is_expression([text], owner.location, owner))
        raw_text = self.substituted[raw.value_start : raw.value_end]
        lead = len(raw_text) - len(raw_text.lstrip())
        vloc = self.locate(raw.value_start + lead)
        stripped = raw_text.strip()
        if _is_expression([stripped, rawxml.xml_unescape(stripped)], vloc, owner):
            # the raw text keeps the newlines XML attribute normalisation would turn into spaces
            return _Attr(name, vloc, rawxml.xml_unescape(stripped), True)
        text, _ = rawxml.restore(parsed, self.spans)
        return _Attr(name, vloc, text, False)

    def _text(self, el: Any, node: _Node, tag: rawxml.RawTag | None, has_elements: bool) -> None:
        pieces = [el.text or ""]
        pieces += [c.tail or "" for c in el if not isinstance(c.tag, str)]
        if has_elements:
            if tag is not None and tag.close > tag.content:
                node.inner_markup = self.substituted[tag.content : tag.close]
            pieces = [el.text or ""] + [c.tail or "" for c in el]
            if not "".join(pieces).strip():
                return
        joined = "".join(pieces)
        if not joined:
            return
        start = tag.content if tag else 0
        first = rawxml.skip_space_and_comments(self.xml, start, tag.close if tag and tag.close >= start else None)
        node.text_location = self.locate(first) if tag else node.location
        index = rawxml.placeholder_index(joined) if self.spans else None
        if index is not None and index < len(self.spans):
            node.text = self.spans[index].source.strip()
            node.text_is_expression = True
            node.text_location = self.locate(self.spans[index].start)
            return
        text, _ = rawxml.restore(joined, self.spans)
        node.text = text
        if _is_expression([text.strip()], node.text_location, node):
            node.text = text.strip()
            node.text_is_expression = True


def _is_expression(candidates: list[str], loc: Location, owner: _Node) -> bool:
    """Is the value (raw, or XML-decoded) exactly one ``@(…)``/``@{…}`` span?

    A value that starts like an expression but never closes is an error rather than a literal: APIM would try to
    compile it, and a silent literal would hide the typo until run time. ``@(a) + @(b)`` stays a literal (§1.2).
    """
    first: rawxml.ScanError | None = None
    balanced = False
    for value in candidates:
        v = value.strip()
        if v[:2] not in ("@(", "@{"):
            return False
        try:
            if rawxml.scan_expression(v) == len(v):
                return True
            balanced = True
        except rawxml.ScanError as e:
            first = first or e
    if first is None or balanced:
        return False
    at = _advance(loc, candidates[0].strip(), first.offset)
    raise _element_error(owner.name, owner.location, _with_position(first.reason, at), at)


def _advance(loc: Location, text: str, offset: int) -> Location:
    """``loc`` moved forward over ``text[:offset]``."""
    before = text[:offset]
    newlines = before.count("\n")
    if newlines:
        return Location(loc.file, loc.line + newlines, len(before) - before.rfind("\n"))
    return Location(loc.file, loc.line, loc.column + offset)


# ------------------------------------------------------------------------------------------ statements + checks


class _Deferred:
    """Stands in when ``apim_mi.policy.expressions`` is not importable: fails loudly only if evaluated."""

    closure = None  # ``evaluate`` runs (and fails)

    def __init__(self, source: str) -> None:
        self.source = source

    def evaluate(self, context: Any) -> Any:
        raise PolicyError("expression", "Policy expressions are not available in this installation.")


def _default_compiler() -> ExpressionCompiler:
    try:
        from .expressions import compile_expression
    except ImportError:
        return lambda source, location: _Deferred(source)
    return compile_expression


@dataclass
class _Loader:
    """One load: compiler, named values and fragment folder, shared by the document and its fragments."""

    compile: ExpressionCompiler
    named_values: Mapping[str, str]
    fragments_dir: Path | None
    scope: str
    fragments: dict[str, tuple[str, _Node]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # -- values --------------------------------------------------------------------------------------------------

    def _expression(self, text: str, loc: Location) -> CompiledExpression:
        return self.compile(text, loc)

    def attr_value(self, owner: _Node, attr: _Attr, spec: ElementSpec | None) -> Value:
        aspec = spec.attribute(attr.name) if spec else None
        if attr.is_expression:
            if aspec is not None and not aspec.expressions:
                if aspec.datatype.value != "string":
                    reason = aspec.check_literal(attr.text) or ""
                else:
                    reason = (
                        f"The '{attr.name}' attribute is invalid - The value '{attr.text}' is invalid: policy "
                        f"expressions are not allowed in this attribute."
                    )
                raise _element_error(owner.name, owner.location, reason)
            return Value(attr.text, attr.location, self._expression(attr.text, attr.location))
        if aspec is not None:
            problem = aspec.check_literal(attr.text)
            if problem:
                raise _element_error(owner.name, owner.location, problem)
        return Value(attr.text, attr.location)

    def text_value(self, node: _Node, spec: ElementSpec | None) -> Value | None:
        if node.text is None:
            return None
        loc = node.text_location or node.location
        if node.text_is_expression:
            if spec is not None and not spec.text_expressions:
                raise _element_error(
                    node.name, node.location, f"Policy expressions are not allowed in the text of '{node.name}'."
                )
            return Value(node.text, loc, self._expression(node.text, loc))
        return Value(node.text, loc)

    # -- elements ------------------------------------------------------------------------------------------------

    def statements(self, nodes: list[_Node], section: str, *, top: bool, fragment: str | None) -> list[Statement]:
        """A list of policy statements in ``section`` (a section's body, a when/otherwise branch, a fragment)."""
        out: list[Statement] = []
        seen_base = False
        for node in nodes:
            if node.name == "include-fragment":
                out.extend(self.include(node, section, top=top, fragment=fragment))
            elif node.name == "base":
                if fragment is not None:
                    raise _element_error("base", node.location, "A policy fragment can't include the base element.")
                if not top:
                    raise _element_error(
                        "base", node.location, "The base element can only be used directly in a policy section."
                    )
                if seen_base:
                    raise _element_error("base", node.location, "The base element can only be used once per section.")
                seen_base = True
                self.element(node, CATALOG["base"])
                if self.scope != "global":  # "using the base element in it has no effect"
                    out.append(Statement("base", node.location, scope=self.scope))
            elif node.name in SECTIONS:
                what = "A policy fragment can't include" if fragment is not None else "Unexpected"
                raise _element_error(node.name, node.location, f"{what} a policy section identifier ('{node.name}').")
            else:
                spec = CATALOG.get(node.name)
                if spec is not None and not allowed_in(spec, section):
                    self.outside_sections(node, spec, section)
                out.append(self.element(node, spec, section=section))
        return out

    def outside_sections(self, node: _Node, spec: ElementSpec, section: str) -> None:
        """A policy outside the sections its reference page lists. Deployed policies do this and the gateway runs
        them (authentication-managed-identity in outbound, set-body in on-error; research/apim.md §9), so it is a
        warning, unless there is evidence the gateway refuses it (``catalog.SECTIONS_ENFORCED``)."""
        allowed = ", ".join(s for s in SECTIONS if allowed_in(spec, s)) or "none"
        if spec.name in SECTIONS_ENFORCED:
            reason = f"The policy is not allowed in the '{section}' section (allowed in: {allowed})."
            raise _element_error(node.name, node.location, reason)
        self.warnings.append(
            f"{node.location}: '{node.name}' is outside its documented sections ({allowed}) in '{section}'; it "
            "loads and runs, as the gateway runs deployed policies that do this."
        )

    def element(self, node: _Node, spec: ElementSpec | None, *, section: str = "") -> Statement:
        """One element → ``Statement``, checking attributes and content against ``spec`` (None = not described)."""
        attrs: dict[str, Value] = {}
        for attr in node.attrs:
            if spec is not None and spec.closed and attr.name != "id" and spec.attribute(attr.name) is None:
                raise _element_error(node.name, node.location, f"The '{attr.name}' attribute is not declared.")
            attrs[attr.name] = self.attr_value(node, attr, spec)
        if spec is not None:
            for aspec in spec.attributes.values():
                if aspec.required and aspec.name not in attrs:
                    raise _element_error(node.name, node.location, f"The required attribute '{aspec.name}' is missing.")
            for group in spec.one_of:
                present = [a for a in group if a in attrs]
                if len(present) != 1:
                    names = ", ".join(f"'{a}'" for a in group)
                    raise _element_error(
                        node.name, node.location, f"Exactly one of the attributes {names} must be specified."
                    )
        stmt = Statement(node.name, node.location, attrs, scope=self.scope)
        body = spec.body if spec is not None else Body.ANY
        if body is Body.STATEMENTS:
            stmt.children = self.statements(node.children, section, top=False, fragment=None)
            self._no_text(node)
        elif body is Body.ELEMENTS and spec is not None and spec.legacy_text and not node.children:
            stmt.text = self.text_value(node, spec)
        elif body is Body.ELEMENTS:
            assert spec is not None
            stmt.children = self.structured(node, spec, section)
            self._no_text(node)
        elif body is Body.TEXT:
            if node.children:
                if not (spec is not None and spec.markup_text):
                    raise _element_error(
                        node.children[0].name,
                        node.children[0].location,
                        f"The element '{node.name}' cannot contain child element '{node.children[0].name}' "
                        f"because the parent element's content model is text only.",
                    )
                loc = node.text_location or node.location
                stmt.text = Value(node.inner_markup or "", loc)
            else:
                stmt.text = self.text_value(node, spec)
        elif body is Body.EMPTY:
            if node.children:
                child = node.children[0]
                raise _element_error(
                    child.name,
                    child.location,
                    f"The element '{node.name}' cannot contain child element '{child.name}' because the parent "
                    f"element's content model is empty.",
                )
            self._no_text(node)
        else:  # ANY: load whatever is there; an unknown policy fails when executed, not here
            stmt.text = self.text_value(node, None) if not node.children else None
            stmt.children = [self.element(c, None, section=section) for c in node.children]
        return stmt

    def _no_text(self, node: _Node) -> None:
        if node.children and not node.text:
            return
        if node.text is not None and node.text.strip():
            raise _element_error(node.name, node.location, f"The element '{node.name}' cannot contain text.")

    def structured(self, node: _Node, spec: ElementSpec, section: str) -> list[Statement]:
        """Children with a fixed vocabulary (send-request's set-url…, choose's when/otherwise, set-header's value)."""
        out: list[Statement] = []
        counts: dict[str, int] = {}
        last = -1
        for child in node.children:
            position = next((i for i, c in enumerate(spec.children) if c.name == child.name), -1)
            cspec: ChildSpec | None = spec.children[position] if position >= 0 else None
            count = counts.get(child.name, 0) + 1
            too_many = cspec is not None and cspec.max is not None and count > cspec.max
            if cspec is None or too_many or (spec.ordered and position < last):
                possible = ", ".join(
                    f"'{c.name}'"
                    for i, c in enumerate(spec.children)
                    if (i >= last or not spec.ordered) and (c.max is None or counts.get(c.name, 0) < c.max)
                )
                raise _element_error(
                    child.name,
                    child.location,
                    f"The element '{node.name}' has invalid child element '{child.name}'."
                    + (f" List of possible elements expected: {possible}." if possible else ""),
                )
            counts[child.name] = count
            last = max(last, position)
            if child.name == "include-fragment":
                out.extend(self.include(child, section, top=False, fragment=None))
                continue
            out.append(self.element(child, cspec.spec, section=section))
        for c in spec.children:
            if counts.get(c.name, 0) < c.min:
                raise _element_error(
                    node.name,
                    node.location,
                    f"The element '{node.name}' has incomplete content. List of possible elements expected: "
                    f"'{c.name}'.",
                )
        if node.name == "send-request":
            self._check_send_request(node, out)
        return out

    def _check_send_request(self, node: _Node, children: list[Statement]) -> None:
        mode = next((a for a in node.attrs if a.name == "mode"), None)
        if mode is not None and (mode.is_expression or mode.text.strip().lower() == "copy"):
            return
        names = {c.name for c in children}
        for required in ("set-url",):
            if required not in names:
                raise _element_error(
                    node.name,
                    node.location,
                    f"The element 'send-request' has incomplete content. List of possible elements expected: "
                    f"'{required}' (required unless mode=\"copy\").",
                )

    # -- fragments -----------------------------------------------------------------------------------------------

    def include(self, node: _Node, section: str, *, top: bool, fragment: str | None) -> list[Statement]:
        """``<include-fragment>`` → the fragment's statements, each keeping the fragment file's location."""
        if fragment is not None:
            raise _element_error(
                node.name, node.location, "A policy fragment can't nest another policy fragment (include-fragment)."
            )
        self.element(node, CATALOG["include-fragment"])
        fid = next(a.text for a in node.attrs if a.name == "fragment-id").strip()
        if not _FRAGMENT_ID_RE.match(fid):
            raise _element_error(node.name, node.location, f"'{fid}' is not a valid policy fragment id.")
        if fid not in self.fragments:
            self.fragments[fid] = self._read_fragment(node, fid)
        source, root = self.fragments[fid]
        return self.statements(root.children, section, top=top, fragment=source)

    def _read_fragment(self, node: _Node, fid: str) -> tuple[str, _Node]:
        if self.fragments_dir is None:
            raise _element_error(
                node.name,
                node.location,
                f"Policy fragment '{fid}' cannot be included: no fragments folder is configured.",
            )
        path = self.fragments_dir / f"{fid}.xml"
        if not path.is_file() and (self.fragments_dir / fid / "policy.xml").is_file():
            path = self.fragments_dir / fid / "policy.xml"  # APIOps: policy fragments/<id>/policy.xml
        try:
            data = path.read_bytes()
        except OSError:
            raise _element_error(
                node.name, node.location, f"Policy fragment '{fid}' was not found (looked for {path})."
            ) from None
        if len(data) > FRAGMENT_MAX_BYTES:
            raise _element_error(
                node.name,
                node.location,
                f"Policy fragment '{fid}' is {len(data)} bytes; the maximum size of a policy fragment is 32 KB.",
            )
        source = str(path)
        text = _decode(data, source)
        root = _parse_document(text, source, self.named_values)
        if root.name != "fragment":
            raise _element_error(
                root.name,
                root.location,
                f"The root element of a policy fragment must be 'fragment', not '{root.name}'.",
            )
        return source, root


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LoadError(Location(source), f"the file is not UTF-8 text ({e.reason} at byte {e.start})") from None


# ------------------------------------------------------------------------------------------------------ public API


def load_policy_text(
    text: str,
    *,
    source: str,
    named_values: Mapping[str, str] = _NO_NAMED_VALUES,
    fragments_dir: Path | None = None,
    compile_expression: ExpressionCompiler | None = None,
    scope: str = "api",
    origin: Origin | None = None,
) -> Policy:
    """Parse and validate one ``<policies>`` document written at ``scope`` (global … operation).

    ``origin``: the text is embedded in ``source`` (inline ``policy:`` in YAML, a rule in an XML rules file), and
    locations are given in that file.

    ``source`` names the file in every location. Sections the document leaves out are recorded in
    ``Policy.absent`` and behave as ``<base/>`` in ``compose`` (at global scope they are simply empty).
    """
    if scope not in SCOPES:
        raise LoadError(Location(source), f"unknown policy scope '{scope}' (expected one of: {', '.join(SCOPES)})")
    loader = _Loader(compile_expression or _default_compiler(), named_values, fragments_dir, scope)
    root = _parse_document(text, source, named_values, origin)
    if root.name != "policies":
        hint = (
            ' This is a policy fragment; include it with <include-fragment fragment-id="…"/>.'
            if root.name == "fragment"
            else ""
        )
        raise _element_error(root.name, root.location, f"The root element must be 'policies', not '{root.name}'.{hint}")
    policy = Policy(source=source, scope=scope)
    present: set[str] = set()
    for node in root.children:
        if node.name not in SECTIONS:
            raise _element_error(
                node.name,
                node.location,
                f"'{node.name}' is not a policy section. Expected one of: {', '.join(SECTIONS)}.",
            )
        if node.name in present:
            raise _element_error(node.name, node.location, f"The section '{node.name}' appears more than once.")
        present.add(node.name)
        if node.attrs:
            raise _element_error(node.name, node.location, f"The '{node.attrs[0].name}' attribute is not declared.")
        loader._no_text(node)
        policy.sections[node.name] = loader.statements(node.children, node.name, top=True, fragment=None)
    if root.text is not None and root.text.strip():
        raise _element_error(root.name, root.location, "The element 'policies' cannot contain text.")
    if scope != "global":
        policy.absent = frozenset(s for s in SECTIONS if s not in present)
    policy.warnings = tuple(loader.warnings)
    return policy


def load_policy_file(
    path: Path,
    *,
    source: str | None = None,
    named_values: Mapping[str, str] = _NO_NAMED_VALUES,
    fragments_dir: Path | None = None,
    compile_expression: ExpressionCompiler | None = None,
    scope: str = "api",
) -> Policy:
    """``load_policy_text`` on a file. Without ``fragments_dir``: ``<dir>/fragments`` if present, else ``<dir>``."""
    path = Path(path)
    display = source or str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LoadError(Location(display), f"cannot read policy file: {e.strerror or e}") from None
    if fragments_dir is None:
        fragments_dir = path.parent / "fragments" if (path.parent / "fragments").is_dir() else path.parent
    return load_policy_text(
        _decode(data, display),
        source=display,
        named_values=named_values,
        fragments_dir=fragments_dir,
        compile_expression=compile_expression,
        scope=scope,
    )


def load_fragment_text(
    text: str,
    *,
    source: str,
    named_values: Mapping[str, str] = _NO_NAMED_VALUES,
    compile_expression: ExpressionCompiler | None = None,
    section: str | None = None,
    scope: str = "api",
) -> list[Statement]:
    """A ``<fragment>`` document on its own (``apim-mi validate``, the corpus). Without ``section`` each statement
    is checked against the union of the sections it could be included in."""
    loader = _Loader(compile_expression or _default_compiler(), named_values, None, scope)
    root = _parse_document(text, source, named_values)
    if root.name != "fragment":
        raise _element_error(root.name, root.location, f"The root element must be 'fragment', not '{root.name}'.")
    if section is not None:
        return loader.statements(root.children, section, top=True, fragment=source)
    out: list[Statement] = []
    for node in root.children:
        errors: list[LoadError] = []
        for sec in SECTIONS:
            try:
                out.extend(loader.statements([node], sec, top=True, fragment=source))
                break
            except LoadError as e:
                errors.append(e)
        else:
            raise errors[0]
    return out


def compose(outer: Policy, inner: Policy) -> Policy:
    """APIM's scope composition: ``inner``'s ``<base/>`` in each section becomes ``outer``'s statements.

    A section absent from ``inner`` is ``<base/>``. A section absent from ``outer`` is itself ``<base/>`` (its
    parent was not given yet), so ``compose(compose(g, a), o) == compose(g, compose(a, o))``. Statements keep their
    own ``Location`` and ``scope``; nothing is copied or mutated.
    """
    result = Policy(source=inner.source, scope=inner.scope or outer.scope)
    absent: set[str] = set()
    for section in SECTIONS:
        parent = _section(outer, section)
        if section in inner.absent:
            result.sections[section] = list(parent)
            if section in outer.absent:
                absent.add(section)
            continue
        out: list[Statement] = []
        for stmt in inner.sections.get(section, []):
            out.extend(parent if stmt.name == "base" else [stmt])
        result.sections[section] = out
    result.absent = frozenset(absent)
    result.warnings = tuple(dict.fromkeys((*outer.warnings, *inner.warnings)))
    return result


def _section(policy: Policy, section: str) -> list[Statement]:
    if section in policy.absent:
        return [Statement("base", Location(policy.source), scope=policy.scope)]
    return policy.sections.get(section, [])


def default_global() -> Policy:
    """APIM's service-level default: ``<backend><forward-request/></backend>``, every other section empty."""
    loc = Location("<default global policy>", 1, 1)
    policy = Policy(source=loc.file, scope="global")
    policy.sections["backend"] = [Statement("forward-request", loc, scope="global")]
    return policy


#: The global default policy. Treat as read-only (``compose`` never mutates its inputs); ``default_global()`` makes
#: a fresh copy.
DEFAULT_GLOBAL: Policy = default_global()


# --------------------------------------------------------------------------------------------- effective policy XML

_SCOPE_LABEL = {s: s.capitalize() for s in SCOPES}


def effective_policy_xml(policy: Policy, *, indent: str = "    ") -> str:
    """The composed policy as one XML document, with the portal's ``<!-- base: Begin Api scope -->`` markers.

    Expressions are written back XML-escaped, so the output is well-formed and re-loadable.
    """
    rank = {s: i for i, s in enumerate(SCOPES)}
    own = policy.scope or "api"
    # only scopes that contributed statements get markers (an intermediate scope without a document has none)
    chain = {s.scope for sec in SECTIONS for s in policy.sections.get(sec, [])} | {own}
    lines = ["<policies>"]
    for section in SECTIONS:
        statements = policy.sections.get(section, [])
        if not statements:
            lines.append(f"{indent}<{section} />")
            continue
        lines.append(f"{indent}<{section}>")
        open_scopes: list[str] = []  # broader scopes currently open, outermost first
        for stmt in statements:
            scope = stmt.scope or own
            wanted = [s for s in SCOPES if s in chain and rank[scope] <= rank[s] < rank[own]][::-1]
            wanted = wanted if scope in rank else []
            while open_scopes and open_scopes != wanted[: len(open_scopes)]:
                closing = open_scopes.pop()
                lines.append(f"{indent * (2 + len(open_scopes))}<!-- base: End {_SCOPE_LABEL[closing]} scope -->")
            for s in wanted[len(open_scopes) :]:
                lines.append(f"{indent * (2 + len(open_scopes))}<!-- base: Begin {_SCOPE_LABEL[s]} scope -->")
                open_scopes.append(s)
            lines.extend(_statement_xml(stmt, 2 + len(open_scopes), indent))
        while open_scopes:
            closing = open_scopes.pop()
            lines.append(f"{indent * (2 + len(open_scopes))}<!-- base: End {_SCOPE_LABEL[closing]} scope -->")
        lines.append(f"{indent}</{section}>")
    lines.append("</policies>")
    return "\n".join(lines) + "\n"


def _statement_xml(stmt: Statement, depth: int, indent: str) -> list[str]:
    pad = indent * depth
    attrs = "".join(f' {k}="{rawxml.xml_escape(v.text)}"' for k, v in stmt.attrs.items())
    if not stmt.children and stmt.text is None:
        return [f"{pad}<{stmt.name}{attrs} />"]
    if not stmt.children:
        assert stmt.text is not None
        body = rawxml.xml_escape(stmt.text.text, quote=False)  # a Liquid body's markup is text too
        return [f"{pad}<{stmt.name}{attrs}>{body}</{stmt.name}>"]
    out = [f"{pad}<{stmt.name}{attrs}>"]
    for child in stmt.children:
        out.extend(_statement_xml(child, depth + 1, indent))
    out.append(f"{pad}</{stmt.name}>")
    return out


def with_scope(policy: Policy, scope: str) -> Policy:
    """The same policy relabelled to ``scope`` (statements copied shallowly), e.g. to reuse a file at two scopes."""
    result = Policy(source=policy.source, scope=scope, absent=policy.absent)
    for section in SECTIONS:
        result.sections[section] = [replace(s, scope=scope) for s in policy.sections.get(section, [])]
    return result
