"""Property tests: whatever text arrives, the loader answers with a Policy or a LoadError, never another exception.

~300 examples per property by default; ``APIM_MI_LONG=1`` runs 100k (a few minutes).
"""

from __future__ import annotations

import os
from typing import Any

from apim_mi.errors import LoadError, Location
from apim_mi.policy import rawxml
from apim_mi.policy.loader import compose, effective_policy_xml, load_policy_text
from apim_mi.policy.model import Policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LONG = os.environ.get("APIM_MI_LONG") == "1"
FUZZ = settings(
    max_examples=100_000 if LONG else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class _Expr:
    def __init__(self, source: str) -> None:
        self.source = source

    def evaluate(self, context: Any) -> Any:
        return None


def _compile(source: str, location: Location) -> _Expr:
    assert source.strip()[:2] in ("@(", "@{"), source
    assert location.line >= 1 and location.column >= 1
    return _Expr(source)


NAMED = {"a": "x", "b": '@(context.Variables["v"] + "<")', "c": "&<>\"'"}

# --- XML-ish documents --------------------------------------------------------------------------------------------

NAMES = st.sampled_from(
    [
        "policies", "inbound", "backend", "outbound", "on-error", "base", "set-header", "value", "set-variable",
        "choose", "when", "otherwise", "send-request", "set-url", "set-method", "set-body", "include-fragment",
        "authentication-managed-identity", "return-response", "set-status", "trace", "message", "x-unknown",
        "fragment",
    ]
)  # fmt: skip
ATTR_NAMES = st.sampled_from(
    ["name", "value", "condition", "resource", "client-id", "exists-action", "mode", "timeout", "ignore-error", "id"]
)
SNIPPETS = st.sampled_from(
    [
        "@(", "@{", ")", "}", '"', "'", "<", ">", "&", "&quot;", "&lt;", "&amp;", "{{a}}", "{{b}}", "{{c}}",
        "{{nope}}", "<!--", "-->", "//", "/*", "*/", '@"', '$"', "$@\"", "\n", " ", "x", "true", "override",
        "context.Request.Headers", "<![CDATA[", "]]>", "{", "(", "\\",
    ]
)  # fmt: skip
TEXTS = st.lists(SNIPPETS, max_size=8).map("".join)


@st.composite
def expressions(draw: st.DrawFn) -> str:
    body = draw(st.lists(st.sampled_from(['"s"', '"a)"', "'}'", "(x)", "{y}", '$"{z}"', "// c\n", "a<b", "&quot;"]),
                         max_size=4))  # fmt: skip
    return ("@(" if draw(st.booleans()) else "@{") + " ".join(body) + draw(st.sampled_from([")", "}", "", "))"]))


VALUES = st.one_of(TEXTS, expressions())


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(NAMES)
    attrs = draw(st.lists(st.tuples(ATTR_NAMES, VALUES), max_size=3))
    quote = draw(st.sampled_from(['"', "'"]))
    head = f"<{name}" + "".join(f" {k}={quote}{v}{quote}" for k, v in attrs)
    if depth >= 3 or draw(st.booleans()):
        return head + " />"
    inner = draw(st.lists(st.one_of(VALUES, elements(depth + 1)), max_size=3))
    return head + ">" + "".join(inner) + f"</{name}>"


@st.composite
def documents(draw: st.DrawFn) -> str:
    sections = draw(st.lists(st.sampled_from(["inbound", "backend", "outbound", "on-error", "bogus"]), max_size=4))
    out = ["<policies>"]
    for sec in sections:
        body = draw(st.lists(elements(1), max_size=3))
        out.append(f"<{sec}>" + "\n".join(body) + f"</{sec}>")
    out.append("</policies>")
    return draw(st.sampled_from(["\n", " ", ""])).join(out)


GOOD_EXPR = st.sampled_from(
    [
        '@(context.Request.Headers.GetValueOrDefault("a", "<b>"))', "@{ var s = \"}\"; return s; }",
        "@(x < 1 && y > 2)", '@($"{(a ? ")" : "(")}")', "@(&quot;q&quot;)", "@{\n // ) }\n return '}';\n}",
    ]
)  # fmt: skip
GOOD_TEXT = st.text(st.sampled_from("abc XYZ-_./:&<>\"'{}()@"), max_size=12).map(
    lambda t: "t" + rawxml.xml_escape(t).replace("{{", "{ {")  # a literal never starts like an expression
)
GOOD_VALUE = st.one_of(GOOD_EXPR, GOOD_TEXT, st.sampled_from(["{{a}}", "{{b}}", "pre{{c}}post"]))


@st.composite
def statements(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["header", "variable", "choose", "send", "unknown"] if depth < 2 else ["header"]))
    v = draw(GOOD_VALUE)
    if kind == "header":
        values = "".join(f"<value>{draw(GOOD_VALUE)}</value>" for _ in range(draw(st.integers(0, 2))))
        return f'<set-header name="{draw(GOOD_VALUE)}" exists-action="append">{values}</set-header>'
    if kind == "variable":
        return f'<set-variable name="n" value="{v}" />'
    if kind == "choose":
        inner = "\n".join(draw(st.lists(statements(depth + 1), max_size=2)))
        return f'<choose><when condition="{draw(GOOD_EXPR)}">{inner}</when><otherwise>{inner}</otherwise></choose>'
    if kind == "send":
        return (
            f'<send-request mode="new" response-variable-name="r"><set-url>{v}</set-url>'
            f"<set-body>{draw(GOOD_VALUE)}</set-body></send-request>"
        )
    return f'<x-custom a="{v}"><!-- @( --><y>{draw(GOOD_VALUE)}</y></x-custom>'


@st.composite
def valid_documents(draw: st.DrawFn) -> str:
    out = ["<policies>"]
    for sec in draw(st.lists(st.sampled_from(["inbound", "backend", "outbound", "on-error"]), unique=True)):
        body = draw(st.lists(statements(), max_size=3))
        out.append(f"  <{sec}>\n    <base />\n    " + "\n    ".join(body) + f"\n  </{sec}>")
    out.append("</policies>")
    return "\n".join(out)


def _load(text: str) -> Policy | None:
    try:
        return load_policy_text(text, source="fuzz.xml", named_values=NAMED, compile_expression=_compile)
    except LoadError as e:
        assert e.location.file.endswith("fuzz.xml") or e.location.file.endswith(".xml")
        return None


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _load(text)


@FUZZ
@given(valid_documents())
def test_valid_documents_load_and_locate(text: str) -> None:
    policy = load_policy_text(text, source="fuzz.xml", named_values=NAMED, compile_expression=_compile)
    lines = text.split("\n")
    for stmt in policy.statements():
        line = lines[stmt.location.line - 1]
        assert line[stmt.location.column - 2 :].startswith("<" + stmt.name), (stmt.name, line)
        for value in [*stmt.attrs.values(), stmt.text]:
            if value is not None and value.is_expression:
                at = lines[value.location.line - 1][value.location.column - 1 :]
                assert at.startswith(("@(", "@{", "{{")), at
    test_xmlish_documents.hypothesis.inner_test(text)  # type: ignore[attr-defined]


@FUZZ
@given(st.one_of(documents(), valid_documents()))
def test_xmlish_documents(text: str) -> None:
    policy = _load(text)
    if policy is not None:
        # whatever loads can be dumped, and the dump loads again to the same statement names
        dumped = effective_policy_xml(compose(Policy("g", scope="global"), policy))
        again = load_policy_text(dumped, source="fuzz.xml", compile_expression=_compile, scope="global")
        assert [s.name for s in again.statements()] == [
            s.name for s in compose(Policy("g", scope="global"), policy).statements()
        ]


@FUZZ
@given(TEXTS, st.sampled_from(["@(", "@{"]))
def test_scanner_only_raises_scan_errors(tail: str, head: str) -> None:
    text = head + tail
    try:
        end = rawxml.scan_expression(text)
    except rawxml.ScanError as e:
        assert 0 <= e.offset <= len(text)
    else:
        assert 2 < end <= len(text) and text[end - 1] in ")}"


@FUZZ
@given(st.text(max_size=200))
def test_prepare_preserves_length_or_raises_scan_error(text: str) -> None:
    try:
        prepared = rawxml.prepare(text)
    except rawxml.ScanError:
        return
    assert len(prepared.xml) == len(text)
    assert prepared.xml.count("\n") == text.count("\n")
