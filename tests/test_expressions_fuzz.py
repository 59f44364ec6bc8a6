"""Property tests: whatever the text, compiling raises only ExpressionSyntaxError and evaluating only
ExpressionRuntimeError, and hostile inputs end quickly.

Default run: ~300 examples per property. ``APIM_MI_LONG=1`` selects the ``long`` profile (100k examples).
"""

from __future__ import annotations

import os

from apim_mi.policy.expressions import (
    ExpressionRuntimeError,
    ExpressionSyntaxError,
    compile_expression,
    to_policy_string,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_expressions_support import LOC, make_context, same_as_interpreted

settings.register_profile(
    "apim-mi-expressions",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "apim-mi-expressions-long",
    max_examples=100_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("apim-mi-expressions-long" if os.environ.get("APIM_MI_LONG") else "apim-mi-expressions")


def check(source: str) -> None:
    """The whole contract: only the two typed errors, and a result that converts to a policy string; compiled to
    closures or not, the same outcome."""
    try:
        expr = compile_expression(source, LOC)
    except ExpressionSyntaxError as e:
        assert e.location.file == LOC.file and e.location.line >= LOC.line
        assert "Internal parser error" not in e.message, e.message
        return
    same_as_interpreted(expr)
    try:
        value = expr.evaluate(make_context())
    except ExpressionRuntimeError as e:
        assert e.reason == "ExpressionValueEvaluationFailure"
        assert not e.message.startswith("Expression evaluation failed. Internal error"), e.message
        return
    to_policy_string(value)


# ------------------------------------------------------------------------------------------------ arbitrary text


@settings(PROFILE)
@given(st.text(max_size=80))
def test_arbitrary_text(text: str) -> None:
    for source in (text, f"@({text})", f"@{{{text}}}", f"@{{ return {text}; }}"):
        check(source)


# ----------------------------------------------------------------------------------------------- token soup

TOKENS = [
    "context",
    ".",
    "Request",
    "Headers",
    "Variables",
    "GetValueOrDefault",
    "<",
    ">",
    "string",
    "int",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    '"x"',
    "'c'",
    "1",
    "2.5",
    "0",
    "null",
    "true",
    "?",
    ":",
    "??",
    "?.",
    "=>",
    "x",
    ",",
    ";",
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "!=",
    "&&",
    "||",
    "!",
    "new",
    "var",
    "return",
    "if",
    "else",
    "foreach",
    "in",
    "Split",
    "Select",
    "Where",
    "First",
    "As",
    "JObject",
    "Body",
    '$"a{1}"',
    '@"v"',
    "is",
    "as",
    "out",
    "Length",
    "Count",
    "ToString",
    "=",
    "+=",
    "++",
    "for",
    "while",
    "break",
    "Url",
    "Query",
    "Convert",
    "FromBase64String",
    "Parse",
    "typeof",
    "default",
    "Jwt",
    "AsJwt",
    "Claims",
    "IResponse",
    "Encoding",
    "UTF8",
]


@settings(PROFILE)
@given(st.lists(st.sampled_from(TOKENS), max_size=25))
def test_token_soup(tokens: list[str]) -> None:
    text = " ".join(tokens)
    check(f"@({text})")
    check(f"@{{ {text} }}")


# ---------------------------------------------------------------------------------------- grammar-shaped programs

ATOMS = st.sampled_from([
    "1", "0", "-3", "2.5", "7L", "1.5m", '"abc"', '"a,b"', "'c'", "true", "false", "null", '""',
    "context.Request.Method", "context.Request.Url.Path", 'context.Request.Headers.GetValueOrDefault("Host", "")',
    'context.Variables.GetValueOrDefault<int>("count")', '(string)context.Variables["token"]',
    'context.Variables["missing"]', "context.Response.StatusCode", "context.Request.Body.As<JObject>(true)",
    'JObject.Parse("{\\"a\\": [1, 2]}")', "new[] {1, 2, 3}", 'new[] {"x", "y"}', "DateTime.UtcNow",
    "Guid.NewGuid()", "context.RequestId", "context.Deployment.Region", "new JArray()", "x", "y",
])  # fmt: skip
UNARY = st.sampled_from(
    ["!", "-", "+", "~", "(int)", "(string)", "(bool)", "(long)", "(double)", "(JObject)", "(object)"]
)
BINARY = st.sampled_from(
    ["+", "-", "*", "/", "%", "==", "!=", "<", ">", "<=", ">=", "&&", "||", "??", "&", "|", "^", "<<", ">>"]
)
POSTFIX = st.sampled_from([
    ".ToString()", ".Length", ".Count()", ".First()", ".Split(',')", "[0]", '["a"]', "?.Length", ".ToUpper()",
    ".Select(v => v)", ".Where(v => v != null)", ".Any()", ".GetHashCode()", '.Contains("a")', ".Trim()",
    ".AddMinutes(5)", ".Substring(1)", ".ToArray()", ".Sum()", ".Value<string>()", '.SelectToken("a")',
])  # fmt: skip


def exprs() -> st.SearchStrategy[str]:
    return st.recursive(
        ATOMS,
        lambda inner: st.one_of(
            st.tuples(UNARY, inner).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(inner, BINARY, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, POSTFIX).map(lambda t: f"({t[0]}){t[1]}"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
            st.tuples(inner, inner).map(lambda t: f'$"{{{t[0]}}}-{{{t[1]}}}"'),
            st.tuples(inner, inner).map(lambda t: f'string.Format("{{0}}/{{1}}", {t[0]}, {t[1]})'),
            st.tuples(inner, inner).map(lambda t: f"new[] {{{t[0]}, {t[1]}}}"),
        ),
        max_leaves=12,
    )


def statements(e: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    simple = st.one_of(
        e.map(lambda x: f"var x = {x};"),
        e.map(lambda x: f"y = {x};"),
        e.map(lambda x: f"if ({x}) {{ y = 1; }} else {{ y = 2; }}"),
        e.map(lambda x: f"foreach (var it in {x}) {{ y = it; }}"),
        e.map(lambda x: f"for (var i = 0; i < 3; i++) {{ y = {x}; }}"),
        e.map(lambda x: f"try {{ y = {x}; }} catch (Exception ex) {{ y = ex.Message; }}"),
        e.map(lambda x: f"return {x};"),
    )
    return st.lists(simple, max_size=5).map(lambda ss: "object y = null; " + " ".join(ss) + " return y;")


@settings(PROFILE)
@given(exprs())
def test_grammar_expressions(source: str) -> None:
    check(f"@({source})")
    check(f'@{{ var x = 1; var y = "s"; return {source}; }}')


@settings(PROFILE)
@given(statements(exprs()))
def test_grammar_blocks(block: str) -> None:
    check(f"@{{ {block} }}")


def test_hostile_inputs_end_quickly() -> None:
    for source in [
        "@{ while (true) { } }",
        "@{ var l = new List<int> { 1 }; while (true) { l.AddRange(l); } }",
        "@{ var d = new Dictionary<int, int>(); for (var i = 0; ; i++) { d[i] = i; } }",
        "@{ Func<int, int> f = null; return 0; }",
        "@(" + "(1 + " * 150 + "1" + ")" * 150 + ")",
        "@(" + '"a" + ' * 2000 + '"b")',
        '@{ var s = "x"; for (var i = 0; i < 64; i++) { s = s.Replace("x", "xxxxxxxx"); } return s; }',
        "@{ var s = new string('a', 8000000); return string.Join(s, new[] {s, s, s}); }",
        '@(string.Format("{0,-1000000000}", 1))',
    ]:
        check(source)
