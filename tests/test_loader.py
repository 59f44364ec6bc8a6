"""The APIM policy loader: rawxml expressions, named values, fragments, <base/> composition and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apim_mi.errors import LoadError, Location
from apim_mi.policy import catalog, rawxml
from apim_mi.policy.loader import (
    DEFAULT_GLOBAL,
    PolicyLoadError,
    compose,
    effective_policy_xml,
    load_fragment_text,
    load_policy_file,
    load_policy_text,
)
from apim_mi.policy.model import Policy, Statement

DATA = Path(__file__).parent / "data" / "policies"
SRC = "policies/orders.xml"


@dataclass
class FakeExpression:
    source: str
    location: Location

    def evaluate(self, context: Any) -> Any:
        return self.source


class Recorder:
    """A stand-in for ``apim_mi.policy.expressions.compile_expression`` that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Location]] = []

    def __call__(self, source: str, location: Location) -> FakeExpression:
        self.calls.append((source, location))
        return FakeExpression(source, location)


def load(text: str, **kw: Any) -> Policy:
    kw.setdefault("compile_expression", Recorder())
    return load_policy_text(text, source=SRC, **kw)


def load_file(name: str, **kw: Any) -> Policy:
    kw.setdefault("compile_expression", Recorder())
    return load_policy_file(DATA / name, source=name, **kw)


def error_of(text: str, **kw: Any) -> LoadError:
    with pytest.raises(LoadError) as info:
        load(text, **kw)
    return info.value


def doc(inbound: str = "", **sections: str) -> str:
    """A policy whose inbound body starts on line 3, column 9 (8 spaces)."""
    out = ["<policies>", "    <inbound>", *(f"        {line}" for line in inbound.splitlines()), "    </inbound>"]
    for name, body in sections.items():
        tag = name.replace("_", "-")
        out += [f"    <{tag}>", *(f"        {line}" for line in body.splitlines()), f"    </{tag}>"]
    return "\n".join([*out, "</policies>"])


# ------------------------------------------------------------------------------------------------- rawxml scanner


@pytest.mark.parametrize(
    "text",
    [
        '@(a("x)"))',
        "@(')')",
        "@('\\'')",
        '@(@"a "") b")',
        '@($"{(a ? ")" : "(")}")',
        '@($@"{{ {x} }}" + @$"""")',
        "@( /* ) */ x )",
        "@{ // ) }\n return 1; }",
        '@{ var s = "}"; if (a) { return "{"; } return s; }',
        "@((a)(b))",
        '@($"{x:N2} {y,5}")',
        '@($"{new { a = 1 }.a}")',
        "@()",
    ],
)
def test_scanner_finds_the_balanced_end(text: str) -> None:
    assert rawxml.scan_expression(text + " tail") == len(text)


@pytest.mark.parametrize(
    ("text", "offset", "reason"),
    [
        ('@(a("x)\n)', 4, "Unterminated string literal."),
        ("@(a(b)", 0, "The policy expression '@(' is not terminated: ')' expected."),
        ("@{ /* x", 3, "End-of-file found, '*/' expected."),
        ('@(@"abc)', 2, "Unterminated string literal."),
    ],
)
def test_scanner_errors(text: str, offset: int, reason: str) -> None:
    with pytest.raises(rawxml.ScanError) as info:
        rawxml.scan_expression(text)
    assert info.value.offset == offset
    assert info.value.reason.startswith(reason)


def test_scanner_is_lenient_with_newlines_in_strings_when_it_still_balances() -> None:
    """The toolkit only balances; a regular string over a newline is the compiler's problem, not the loader's."""
    text = '@{ var x = "a\n"; return x; }'
    assert rawxml.scan_expression(text) == len(text)


def test_placeholders_keep_length_and_newlines() -> None:
    text = '<a v="@(x("\n"))">@{\n return "<b>"; }</a>'
    prepared = rawxml.prepare(text)
    assert len(prepared.xml) == len(text)
    assert [i for i, c in enumerate(prepared.xml) if c == "\n"] == [i for i, c in enumerate(text) if c == "\n"]
    assert [s.raw for s in prepared.spans] == ['@(x("\n"))', '@{\n return "<b>"; }']
    assert rawxml.restore(prepared.xml, prepared.spans)[0] == text


def test_prepare_blanks_comments_and_skips_cdata() -> None:
    text = '<a><!-- @( "--><b><![CDATA[@(]]></b></a>'
    prepared = rawxml.prepare(text)
    assert prepared.spans == ()
    assert prepared.xml.startswith("<a>" + " " * len('<!-- @( "-->') + "<b>")


def test_xml_unescape_is_xml_only() -> None:
    assert rawxml.xml_unescape("&quot;&lt;&gt;&amp;&apos;&#65;&#x42;&lt &copy;") == "\"<>&'AB&lt &copy;"


def test_named_value_regex_ignores_liquid_and_comments() -> None:
    text = "{{a.b-c_d}} {{ body.x }} {{queue|topic}} <!-- {{in-comment}} -->"
    assert [r.name for r in rawxml.named_value_references(text)] == ["a.b-c_d"]


# ------------------------------------------------------------------------------------------------ loading files


def test_raw_quotes_and_angle_brackets_in_expressions() -> None:
    compiler = Recorder()
    policy = load_file("rawxml.xml", compile_expression=compiler)
    inbound = policy.sections["inbound"]
    size = inbound[0].attrs["value"]
    assert size.is_expression
    assert size.text == '@(int.Parse(context.Variables.GetValueOrDefault<string>("bodySize"))<256000)'
    assert size.location == Location("rawxml.xml", 4, 42)
    assert inbound[0].location == Location("rawxml.xml", 4, 10)
    header_value = inbound[1].children[0].text
    assert header_value is not None and header_value.is_expression
    assert header_value.text == '@(context.Request.Headers.GetValueOrDefault("X-Original-Host", "none"))'
    assert header_value.location == Location("rawxml.xml", 6, 20)
    # every expression is compiled exactly once, at the absolute position of its '@'
    for source, location in compiler.calls:
        line = (DATA / "rawxml.xml").read_text().splitlines()[location.line - 1]
        assert line[location.column - 1 :].startswith(source.splitlines()[0][:2])


def test_multiline_block_keeps_newlines_and_comments() -> None:
    policy = load_file("rawxml.xml")
    block = policy.sections["inbound"][2].attrs["value"]
    assert block.is_expression
    assert block.location == Location("rawxml.xml", 8, 43)
    lines = block.text.splitlines()
    assert lines[1].strip() == '// a comment with ) and } and "'
    assert lines[-1].strip() == "}"
    assert 'var i = $"{s.Length} {(s == "x" ? "}" : ")")}";' in block.text


def test_choose_structure_and_partial_expression_is_literal() -> None:
    policy = load_file("rawxml.xml")
    choose = policy.sections["inbound"][3]
    when, otherwise = choose.children
    assert when.name == "when" and otherwise.name == "otherwise"
    assert when.attrs["condition"].text.endswith('Contains("<"))')
    body = when.children[0].text
    assert body is not None and body.is_expression and body.text == '@{ return "<root>" + "</root>"; }'
    literal = otherwise.children[0].children[0].text
    assert literal is not None and not literal.is_expression
    assert literal.text == "Bearer @(not-an-expression)"


def test_well_formed_fast_path() -> None:
    compiler = Recorder()
    policy = load_file("wellformed.xml", compile_expression=compiler)
    header = policy.sections["inbound"][1]
    assert header.location == Location("wellformed.xml", 5, 10)
    first, second = header.children
    assert (
        first.text is not None and first.text.is_expression and first.text.location == Location("wellformed.xml", 6, 20)
    )
    assert second.text is not None and second.text.text == "literal & escaped" and not second.text.is_expression
    mi = policy.sections["inbound"][2]
    assert mi.attr("ignore-error") == "true" and not mi.attrs["resource"].is_expression
    assert [s.name for s in policy.sections["inbound"]] == ["base", "set-header", "authentication-managed-identity"]
    assert policy.sections["outbound"] == [] and "outbound" not in policy.absent
    assert policy.absent == frozenset({"on-error"})
    assert [c[0] for c in compiler.calls] == ["@(context.Deployment.Region)"]


def test_attribute_newlines_survive_even_on_the_fast_path() -> None:
    """XML normalises newlines in attributes to spaces, which would let a // comment swallow the rest."""
    text = doc('<set-variable name="x" value="@{\n  // note\n  return 1;\n}" />')
    value = load(text).sections["inbound"][0].attrs["value"]
    assert value.text == "@{\n          // note\n          return 1;\n        }"


def test_comment_between_text_and_expression() -> None:
    policy = load(doc("<set-body><!-- c --> @(1) </set-body>"))
    body = policy.sections["inbound"][0].text
    assert body is not None and body.is_expression and body.text == "@(1)"
    assert body.location == Location(SRC, 3, 30)


def test_liquid_body_with_markup_is_kept_as_text() -> None:
    text = doc('<set-body template="liquid"><root><a>{{ body.x }}</a></root></set-body>')
    body = load(text).sections["inbound"][0].text
    assert body is not None and body.text == "<root><a>{{ body.x }}</a></root>"


def test_crlf_and_bom() -> None:
    text = '\ufeff<policies>\r\n  <inbound>\r\n    <set-header name="a"><value>@("<")</value></set-header>\r\n'
    text += "  </inbound>\r\n</policies>\r\n"
    stmt = load(text).sections["inbound"][0]
    assert stmt.location == Location(SRC, 3, 6)
    assert stmt.children[0].text is not None and stmt.children[0].text.location == Location(SRC, 3, 33)


def test_ids_and_unknown_policies_load() -> None:
    text = doc(
        '<rate-limit-by-key calls="@(5)" renewal-period="60" counter-key="k" id="rl" />\n'
        '<my-custom x="1"><y>@(2)</y></my-custom>'
    )
    policy = load(text)
    rl, custom = policy.sections["inbound"]
    assert rl.policy_id == "rl" and rl.attrs["calls"].is_expression
    assert custom.children[0].name == "y" and custom.children[0].text is not None
    assert custom.children[0].text.is_expression


def test_statement_scope_is_recorded() -> None:
    policy = load(doc('<set-header name="a" />'), scope="operation")
    assert policy.scope == "operation" and policy.sections["inbound"][0].scope == "operation"


# --------------------------------------------------------------------------------------------------- named values


NAMED = {
    "suffix": "Tenant",
    "greeting": "hello & <welcome>",
    "host": "api.contoso.com",
    "expression-value": '@(context.Variables["x"] + "y")',
    "app": "api://orders",
    "client": "11111111-1111-1111-1111-111111111111",
}


def test_named_values_everywhere() -> None:
    compiler = Recorder()
    policy = load_file("named.xml", named_values=NAMED, compile_expression=compiler)
    header, url, computed, mi = policy.sections["inbound"]
    assert header.attr("name") == "X-Tenant"
    assert header.children[0].text is not None and header.children[0].text.text == "hello & <welcome>"
    assert url.attrs["value"].text == '@($"https://api.contoso.com/api/{(string)context.Variables["x"]}")'
    assert computed.attrs["value"].is_expression
    assert computed.attrs["value"].text == '@(context.Variables["x"] + "y")'
    assert computed.attrs["value"].location == Location("named.xml", 7, 46)  # the '{{' it came from
    assert mi.attr("resource") == "api://orders" and mi.attr("client-id") == NAMED["client"]
    # positions after a substitution on the same line are still the file's
    assert mi.attrs["client-id"].location == Location("named.xml", 8, 72)


def test_named_values_are_case_insensitive_and_do_not_nest() -> None:
    policy = load(doc('<set-header name="{{NAME}}" />'), named_values={"name": "{{other}}"})
    assert policy.sections["inbound"][0].attr("name") == "{{other}}"


def test_unknown_named_value_location() -> None:
    text = doc('<set-header name="X">\n    <value>a {{missing}}</value>\n</set-header>')
    err = error_of(text)
    assert err.location == Location(SRC, 4, 22)
    assert str(err) == (
        f"{SRC}: Error in element 'value' on line 4, column 14: Named value 'missing' is not defined "
        "(line 4, column 22)."
    )


def test_unknown_named_value_inside_expression() -> None:
    err = error_of(doc('<set-variable name="a" value="@(x.GetValueOrDefault<string>("{{nope}}"))" />'))
    assert err.location == Location(SRC, 3, 70)
    assert "Error in element 'set-variable' on line 3, column 10" in str(err)


def test_named_value_in_comment_is_ignored() -> None:
    load(doc("<!-- {{not-defined}} -->"))


# ------------------------------------------------------------------------------------------------------ fragments


def test_include_fragment_expands_with_fragment_locations() -> None:
    policy = load_file("with-fragment.xml", named_values=NAMED, fragments_dir=DATA / "fragments")
    inbound = policy.sections["inbound"]
    assert [s.name for s in inbound] == ["base", "set-variable", "set-header", "choose"]
    frag = str(DATA / "fragments" / "auth.xml")
    assert inbound[1].location == Location(frag, 2, 6)
    assert inbound[1].attrs["value"].location == Location(frag, 2, 47)
    assert inbound[2].children[0].text is not None and inbound[2].children[0].text.text == NAMED["greeting"]
    assert [s.name for s in inbound[3].children[0].children] == ["set-variable", "set-header"]
    assert [s.name for s in policy.sections["outbound"]] == ["set-variable", "set-header"]


def test_load_policy_file_finds_fragments_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "fragments").mkdir()
    (tmp_path / "fragments" / "f.xml").write_text('<fragment><set-header name="a" /></fragment>')
    (tmp_path / "p.xml").write_text('<policies><inbound><include-fragment fragment-id="f" /></inbound></policies>')
    policy = load_policy_file(tmp_path / "p.xml", compile_expression=Recorder())
    assert policy.sections["inbound"][0].name == "set-header"


@pytest.mark.parametrize(
    ("fragment", "where", "reason"),
    [
        ("nested", (2, 6), "A policy fragment can't nest another policy fragment (include-fragment)."),
        ("has-base", (2, 6), "A policy fragment can't include the base element."),
        ("has-section", (2, 6), "A policy fragment can't include a policy section identifier ('inbound')."),
        ("not-fragment", (1, 2), "The root element of a policy fragment must be 'fragment', not 'policies'."),
    ],
)
def test_fragment_rules(fragment: str, where: tuple[int, int], reason: str) -> None:
    err = error_of(doc(f'<include-fragment fragment-id="{fragment}" />'), fragments_dir=DATA / "fragments")
    path = str(DATA / "fragments" / f"{fragment}.xml")
    assert err.location == Location(path, *where)
    assert str(err).endswith(reason)
    assert str(err).startswith(f"{path}: Error in element ")


def test_fragment_content_is_checked_against_the_including_section() -> None:
    policy = load_policy_text(doc(outbound='<include-fragment fragment-id="mi" />'), source=SRC,
                              fragments_dir=DATA / "fragments", compile_expression=Recorder())  # fmt: skip
    (warning,) = policy.warnings
    assert warning.startswith(f"{DATA / 'fragments' / 'mi.xml'}:2:6: 'authentication-managed-identity' is outside")
    err = error_of(doc(outbound='<include-fragment fragment-id="fwd" />'), fragments_dir=DATA / "fragments")
    assert "The policy is not allowed in the 'outbound' section" in str(err)


def test_fragment_missing_too_big_bad_id(tmp_path: Path) -> None:
    err = error_of(doc('<include-fragment fragment-id="absent" />'), fragments_dir=tmp_path)
    assert err.location == Location(SRC, 3, 10) and "was not found" in str(err)
    (tmp_path / "big.xml").write_text("<fragment>" + " " * 33000 + "</fragment>")
    err = error_of(doc('<include-fragment fragment-id="big" />'), fragments_dir=tmp_path)
    assert "maximum size of a policy fragment is 32 KB" in str(err)
    err = error_of(doc('<include-fragment fragment-id="../etc/passwd" />'), fragments_dir=tmp_path)
    assert "not a valid policy fragment id" in str(err)
    err = error_of(doc('<include-fragment fragment-id="x" />'))
    assert "no fragments folder is configured" in str(err)
    err = error_of(doc('<include-fragment fragment-id="@(x)" />'), fragments_dir=tmp_path)
    assert "policy expressions are not allowed in this attribute" in str(err)


def test_fragment_on_its_own() -> None:
    stmts = load_fragment_text(
        (DATA / "fragments" / "mi.xml").read_text(), source="mi.xml", compile_expression=Recorder()
    )
    assert [s.name for s in stmts] == ["authentication-managed-identity"]
    with pytest.raises(LoadError, match="not allowed in the 'outbound' section"):
        load_fragment_text(
            (DATA / "fragments" / "fwd.xml").read_text(),
            source="fwd.xml",
            section="outbound",
            compile_expression=Recorder(),
        )


# ---------------------------------------------------------------------------------------------------- composition


def names(statements: list[Statement]) -> list[str]:
    return [s.attr("name") or s.name for s in statements]


def test_compose_global_api_operation() -> None:
    glob = load_file("global.xml", scope="global")
    api = load_file("api.xml", scope="api")
    op = load_file("operation.xml", scope="operation")
    effective = compose(compose(glob, api), op)
    assert names(effective.sections["inbound"]) == [
        "X-Api-Before", "X-Global", "X-Api-After", "authentication-managed-identity"
    ]  # fmt: skip
    assert names(effective.sections["backend"]) == ["forward-request"]  # api has no backend = <base/>
    assert names(effective.sections["outbound"]) == ["X-Global-Out", "X-Api-Out"]  # op has no outbound
    assert effective.sections["on-error"] == []  # api wrote an empty on-error: nothing inherited
    assert effective.sections["inbound"][1].location == Location("global.xml", 3, 10)
    assert [s.scope for s in effective.sections["inbound"]] == ["api", "global", "api", "operation"]
    assert effective.scope == "operation" and effective.absent == frozenset()
    # composition is associative, so a rule can be composed before its global is known
    assert compose(glob, compose(api, op)).sections == effective.sections


def test_compose_with_default_global_and_missing_sections() -> None:
    op = load(doc('<base />\n<set-header name="a" />'))
    effective = compose(DEFAULT_GLOBAL, op)
    assert names(effective.sections["inbound"]) == ["a"]
    assert names(effective.sections["backend"]) == ["forward-request"]
    assert DEFAULT_GLOBAL.sections["inbound"] == []  # inputs are never mutated


def test_base_in_global_scope_has_no_effect() -> None:
    policy = load(doc("<base />"), scope="global")
    assert policy.sections["inbound"] == [] and policy.absent == frozenset()


def test_effective_policy_xml_markers_and_reload() -> None:
    glob = load_file("global.xml", scope="global")
    api = load_file("api.xml", scope="api")
    op = load_file("operation.xml", scope="operation")
    text = effective_policy_xml(compose(compose(glob, api), op))
    assert "<!-- base: Begin Api scope -->" in text and "<!-- base: Begin Global scope -->" in text
    backend = text.split("<backend>")[1].split("</backend>")[0].strip().splitlines()
    assert [line.strip() for line in backend] == [
        "<!-- base: Begin Api scope -->",
        "<!-- base: Begin Global scope -->",
        '<forward-request timeout="30" />',
        "<!-- base: End Global scope -->",
        "<!-- base: End Api scope -->",
    ]
    reloaded = load_policy_text(text, source="effective.xml", compile_expression=Recorder(), scope="global")
    assert names(reloaded.sections["inbound"]) == names(compose(compose(glob, api), op).sections["inbound"])


def test_effective_xml_escapes_expressions() -> None:
    text = effective_policy_xml(load_file("rawxml.xml"))
    reloaded = load_policy_text(text, source="e.xml", compile_expression=Recorder())
    original = load_file("rawxml.xml")
    assert reloaded.sections["inbound"][0].attrs["value"].text == original.sections["inbound"][0].attrs["value"].text


# ----------------------------------------------------------------------------------------------------- validation


def expect(text: str, line: int, column: int, message: str, **kw: Any) -> None:
    err = error_of(text, **kw)
    assert isinstance(err, PolicyLoadError), err
    assert err.location == Location(SRC, line, column), str(err)
    assert str(err) == f"{SRC}: {message}"


def test_outside_documented_sections_warns_as_deployed_policies_do_it() -> None:
    """Deployed policies put authentication-managed-identity in outbound (a token for a side call); the gateway
    runs them, so a policy outside its documented sections loads with a warning naming them."""
    policy = load_policy_text(
        doc(outbound='<authentication-managed-identity resource="x" output-token-variable-name="t" />',
            on_error='<choose>\n    <when condition="true">\n        <set-backend-service base-url="http://x" />\n'
                     "    </when>\n</choose>"),
        source=SRC, compile_expression=Recorder(),
    )  # fmt: skip
    assert policy.warnings == (
        f"{SRC}:5:10: 'authentication-managed-identity' is outside its documented sections (inbound) in 'outbound'; "
        "it loads and runs, as the gateway runs deployed policies that do this.",
        f"{SRC}:10:18: 'set-backend-service' is outside its documented sections (inbound, backend) in 'on-error'; "
        "it loads and runs, as the gateway runs deployed policies that do this.",
    )
    assert [s.name for s in policy.sections["outbound"]] == ["authentication-managed-identity"]
    composed = compose(DEFAULT_GLOBAL, policy)
    assert composed.warnings == policy.warnings


def test_forward_request_stays_in_backend() -> None:
    expect(
        doc(outbound="<forward-request />"),
        5, 10,
        "Error in element 'forward-request' on line 5, column 10: The policy is not allowed in the 'outbound' "
        "section (allowed in: backend).",
    )  # fmt: skip


def test_mi_is_allowed_inside_send_request_anywhere() -> None:
    text = doc(
        outbound='<send-request mode="new" response-variable-name="r">\n    <set-url>https://x</set-url>\n'
        '    <set-method>GET</set-method>\n    <authentication-managed-identity resource="api://x" />\n'
        "</send-request>"
    )
    send = load(text).sections["outbound"][0]
    assert [c.name for c in send.children] == ["set-url", "set-method", "authentication-managed-identity"]


@pytest.mark.parametrize(
    ("body", "element", "column", "reason"),
    [
        ('<set-header exists-action="override" />', "set-header", 10, "The required attribute 'name' is missing."),
        ("<authentication-managed-identity />", "authentication-managed-identity", 10,
         "The required attribute 'resource' is missing."),
        ('<set-variable name="a" />', "set-variable", 10, "The required attribute 'value' is missing."),
        ('<set-variable value="a" />', "set-variable", 10, "The required attribute 'name' is missing."),
        ("<set-backend-service />", "set-backend-service", 10,
         "Exactly one of the attributes 'base-url', 'backend-id' must be specified."),
        ('<set-header name="a" exists-action="replace" />', "set-header", 10,
         "The 'exists-action' attribute is invalid - The value 'replace' is invalid according to its datatype - "
         "The Enumeration constraint failed. Allowed values: 'override', 'skip', 'append', 'delete'."),
        ('<send-request mode="clone" response-variable-name="r"><set-url>x</set-url></send-request>',
         "send-request", 10,
         "The 'mode' attribute is invalid - The value 'clone' is invalid according to its datatype - The "
         "Enumeration constraint failed. Allowed values: 'new', 'copy'."),
        ('<authentication-managed-identity resource="x" ignore-error="yes" />', "authentication-managed-identity",
         10, "The 'ignore-error' attribute is invalid - The value 'yes' is invalid according to its datatype "
         "'http://www.w3.org/2001/XMLSchema:boolean' - The string 'yes' is not a valid Boolean value."),
        ('<send-request response-variable-name="r" timeout="soon"><set-url>x</set-url></send-request>',
         "send-request", 10,
         "The 'timeout' attribute is invalid - The value 'soon' is invalid according to its datatype "
         "'http://www.w3.org/2001/XMLSchema:int' - The string 'soon' is not a valid Int32 value."),
        ('<authentication-managed-identity resource="x" client-id="@(context.Variables[&quot;id&quot;])" />',
         "authentication-managed-identity", 10,
         "The 'client-id' attribute is invalid - The value '@(context.Variables[\"id\"])' is invalid: policy "
         "expressions are not allowed in this attribute."),
        ('<send-request response-variable-name="r" ignore-error="@(true)"><set-url>x</set-url></send-request>',
         "send-request", 10,
         "The 'ignore-error' attribute is invalid - The value '@(true)' is invalid according to its datatype "
         "'http://www.w3.org/2001/XMLSchema:boolean' - The string '@(true)' is not a valid Boolean value."),
        ('<authentication-managed-identity resource="x" output-token-variable-name="@(&quot;t&quot;)" />',
         "authentication-managed-identity", 10,
         "The 'output-token-variable-name' attribute is invalid - The value '@(\"t\")' is invalid: policy "
         "expressions are not allowed in this attribute."),
        ('<set-header name="a" colour="red" />', "set-header", 10, "The 'colour' attribute is not declared."),
        ('<set-variable name="a" value="b">text</set-variable>', "set-variable", 10,
         "The element 'set-variable' cannot contain text."),
    ],
)  # fmt: skip
def test_attribute_checks(body: str, element: str, column: int, reason: str) -> None:
    expect(doc(body), 3, column, f"Error in element '{element}' on line 3, column {column}: {reason}")


def test_choose_structure() -> None:
    expect(
        doc("<choose>\n    <otherwise />\n    <when condition=\"true\" />\n</choose>"),
        5, 14,
        "Error in element 'when' on line 5, column 14: The element 'choose' has invalid child element 'when'.",
    )  # fmt: skip
    expect(
        doc('<choose>\n    <when condition="true" />\n    <otherwise />\n    <otherwise />\n</choose>'),
        6, 14,
        "Error in element 'otherwise' on line 6, column 14: The element 'choose' has invalid child element "
        "'otherwise'.",
    )  # fmt: skip
    expect(
        doc("<choose>\n    <otherwise />\n</choose>"),
        3, 10,
        "Error in element 'choose' on line 3, column 10: The element 'choose' has incomplete content. List of "
        "possible elements expected: 'when'.",
    )  # fmt: skip
    expect(
        doc("<choose>\n    <when />\n</choose>"),
        4, 14,
        "Error in element 'when' on line 4, column 14: The required attribute 'condition' is missing.",
    )  # fmt: skip
    expect(
        doc("<choose>\n    <when condition=\"maybe\" />\n</choose>"),
        4, 14,
        "Error in element 'when' on line 4, column 14: The 'condition' attribute is invalid - The value 'maybe' is "
        "invalid according to its datatype 'http://www.w3.org/2001/XMLSchema:boolean' - The string 'maybe' is not "
        "a valid Boolean value.",
    )  # fmt: skip


def test_send_request_children() -> None:
    expect(
        doc('<send-request response-variable-name="r">\n    <set-method>GET</set-method>\n</send-request>'),
        3, 10,
        "Error in element 'send-request' on line 3, column 10: The element 'send-request' has incomplete content. "
        "List of possible elements expected: 'set-url' (required unless mode=\"copy\").",
    )  # fmt: skip
    expect(
        doc('<send-request response-variable-name="r">\n    <set-url>x</set-url>\n    <set-status code="1" />\n'
            "</send-request>"),
        5, 14,
        "Error in element 'set-status' on line 5, column 14: The element 'send-request' has invalid child element "
        "'set-status'. List of possible elements expected: 'set-method', 'set-header', 'set-body', "
        "'authentication-certificate', 'authentication-managed-identity', 'proxy'.",
    )  # fmt: skip
    expect(
        doc('<send-request response-variable-name="r">\n    <set-method>GET</set-method>\n    <set-url>x</set-url>\n'
            "</send-request>"),
        5, 14,
        "Error in element 'set-url' on line 5, column 14: The element 'send-request' has invalid child element "
        "'set-url'. List of possible elements expected: 'set-header', 'set-body', 'authentication-certificate', "
        "'authentication-managed-identity', 'proxy'.",
    )  # fmt: skip
    load(doc('<send-request mode="copy" response-variable-name="r" />'))


def test_text_only_and_empty_content_models() -> None:
    expect(
        doc('<set-header name="a">\n    <value><b /></value>\n</set-header>'),
        4, 21,
        "Error in element 'b' on line 4, column 21: The element 'value' cannot contain child element 'b' because "
        "the parent element's content model is text only.",
    )  # fmt: skip
    expect(
        doc('<set-variable name="a" value="b"><x /></set-variable>'),
        3, 43,
        "Error in element 'x' on line 3, column 43: The element 'set-variable' cannot contain child element 'x' "
        "because the parent element's content model is empty.",
    )  # fmt: skip


def test_document_structure_errors() -> None:
    expect(
        "<policy>\n</policy>", 1, 2,
        "Error in element 'policy' on line 1, column 2: The root element must be 'policies', not 'policy'.",
    )  # fmt: skip
    expect(
        doc(inbound2=""), 4, 6,
        "Error in element 'inbound2' on line 4, column 6: 'inbound2' is not a policy section. Expected one of: "
        "inbound, backend, outbound, on-error.",
    )  # fmt: skip
    expect(
        "<policies>\n    <inbound />\n    <inbound />\n</policies>", 3, 6,
        "Error in element 'inbound' on line 3, column 6: The section 'inbound' appears more than once.",
    )  # fmt: skip
    expect(
        doc("<choose><when condition=\"true\"><base /></when></choose>"), 3, 41,
        "Error in element 'base' on line 3, column 41: The base element can only be used directly in a policy "
        "section.",
    )  # fmt: skip
    expect(
        doc("<base />\n<base />"), 4, 10,
        "Error in element 'base' on line 4, column 10: The base element can only be used once per section.",
    )  # fmt: skip
    err = error_of("<fragment />")
    assert "This is a policy fragment" in str(err)


def test_xml_errors_are_located() -> None:
    expect(
        doc('<set-header name="a">\n</set-headr>'), 4, 21,
        "Error on line 4, column 21: The document is not well-formed XML: Opening and ending tag mismatch: "
        "set-header line 3 and set-headr",
    )  # fmt: skip
    err = error_of("<policies>\n<!DOCTYPE x>\n</policies>")
    assert err.location.line >= 1
    err = error_of('<!DOCTYPE policies [<!ENTITY e "x">]>\n<policies />')
    assert "DTD is prohibited" in str(err)


def test_unterminated_expressions_are_located() -> None:
    expect(
        doc('<set-variable name="a" value="@(x.Get("a)) />\n<set-header name="b" />'),
        3, 47,
        "Error in element 'set-variable' on line 3, column 10: Unterminated string literal (line 3, column 47).  "
        "Strings that start with a quotation mark (\") must be terminated before the end of the line.  However, "
        "strings that start with @ and a quotation mark (@\") can span multiple lines.",
    )  # fmt: skip
    expect(
        doc("<set-body>@{ return 1;\n</set-body>"),
        3, 19,
        "Error in element 'set-body' on line 3, column 10: The policy expression '@{' is not terminated: '}' "
        "expected (line 3, column 19).",
    )  # fmt: skip


def test_expression_compile_errors_propagate_with_their_location() -> None:
    class Boom(LoadError):
        pass

    def compiler(source: str, location: Location) -> Any:
        raise Boom(Location(location.file, location.line, location.column + 3), "Unexpected token")

    with pytest.raises(Boom) as info:
        load(doc('<set-header name="@(1 +)" />'), compile_expression=compiler)
    assert info.value.location == Location(SRC, 3, 30)


# ------------------------------------------------------------------------------------------------------- catalog


def test_catalog_shape_and_defaults() -> None:
    assert catalog.default_of("send-request", "timeout") == "60"
    assert catalog.default_of("forward-request", "timeout") == "300"
    assert catalog.default_of("set-header", "exists-action") == "override"
    assert catalog.default_of("authentication-managed-identity", "ignore-error") == "false"
    assert catalog.default_of("validate-jwt", "failed-validation-httpcode") == "401"
    assert catalog.default_of("trace", "severity") == "verbose"
    assert catalog.default_of("send-request", "exists-action", child="set-header") == "override"
    mi = catalog.CATALOG["authentication-managed-identity"]
    assert mi.sections == frozenset({"inbound"})
    assert not mi.attributes["client-id"].expressions and mi.attributes["resource"].required
    for name in (
        "authentication-managed-identity", "set-header", "set-variable", "choose", "send-request", "return-response",
        "set-backend-service", "forward-request", "check-header", "trace", "authentication-basic",
        "set-query-parameter", "rewrite-uri", "validate-jwt", "include-fragment", "base", "set-status", "set-body",
        "set-method", "mock-response",
    ):  # fmt: skip
        assert name in catalog.CATALOG
    assert catalog.allowed_in(catalog.CATALOG["cache-lookup-value"], "on-error")
    assert catalog.allowed_in(catalog.CATALOG["set-body"], "on-error")  # the APIM team's set-body deep dive


# ------------------------------------------------------------------------------------- with the real expressions


def _real_compiler() -> Any:
    try:
        from apim_mi.policy.expressions import compile_expression
    except ImportError:
        pytest.skip("apim_mi.policy.expressions.compile_expression is not available yet")
    return compile_expression


def test_real_compiler_is_the_default() -> None:
    _real_compiler()
    policy = load_policy_file(DATA / "wellformed.xml", source="wellformed.xml")
    value = policy.sections["inbound"][1].children[0].text
    assert value is not None and value.expression is not None
    assert value.expression.source.strip().startswith("@(")


def test_real_compiler_reports_absolute_locations() -> None:
    _real_compiler()
    with pytest.raises(LoadError) as info:
        load_policy_text(doc('<set-header name="a">\n    <value>@(1 + )</value>\n</set-header>'), source=SRC)
    assert info.value.location.file == SRC
    assert info.value.location.line == 4 and info.value.location.column >= 20
