"""Expressions compiled to closures (``expressions/compiler.py``) behave exactly as the interpreter: the same value,
the same error (message and .NET type), the same effects on the context, for the snippet corpus and the corners of
the compiler (the property tests of test_expressions_fuzz.py compare both on generated programs); and what the
compiler leaves to the interpreter really runs there."""

from __future__ import annotations

from typing import Any

import pytest
from apim_mi.policy.expressions import ExpressionSyntaxError, compile_expression
from test_expressions_support import LOC, same_as_interpreted


def same(source: str) -> bool:
    """Compiled and interpreted agree on ``source``; whether it was compiled at all (a syntax error: False)."""
    try:
        expr = compile_expression(source, LOC)
    except ExpressionSyntaxError:
        return False
    return same_as_interpreted(expr)


CORNERS = [
    # members, statics, namespaces, HasValue, null-conditional chains
    '@(context.Request.Headers.GetValueOrDefault("X-Multi", "none"))',
    '@(context.Request.Method == "POST" && context.Request.Url.Path.StartsWith("/echo"))',
    "@(context.Response.StatusCode.HasValue)",
    "@(context.Variables.HasValue)",
    "@(String.HasValue)",
    "@(System.Text.HasValue)",
    "@(String.Empty + Int32.MaxValue)",
    '@(String.IsNullOrEmpty(context.Request.Headers.GetValueOrDefault("nope", "")))',
    "@(String.Nope)",
    "@(String.Nope())",
    "@(String.Join)",
    '@(String.Join(",", new[] {"a", "b"}))',
    '@(System.Text.Encoding.UTF8.GetBytes("x").Length)',
    "@(System.Nope.X)",
    '@(context.Variables["count"])',
    '@(context.Variables["nope"])',
    "@(context.Variables[null])",
    '@(context.Variables["count", "x"])',
    '@(((JObject)context.Variables["accessToken"])["access_token"])',
    '@((string)context.Variables["token"] + "x" + 1 + null + \'c\')',
    "@(new string('a', 6000000) + new string('b', 6000000))",
    "@(Convert.ToString(String, 2))",
    "@(System.String.ToString())",
    "@(context.Variables.ToString())",
    '@(context.Request.Headers.GetValueOrDefault("Host"))',
    "@(context.Request.Headers.Nope())",
    "@(System.Text)",
    "@(System.Text.Foo())",
    "@(context.Nope)",
    "@(context.Nope())",
    "@(nope)",
    "@(nope())",
    "@(String())",
    "@(context())",
    '@(context.Variables["accessToken"]?["access_token"]?.ToString())',
    '@(context.Variables.GetValueOrDefault<string>("missing")?.Length)',
    "@(((string)null).Length)",
    '@(context.Request.Headers["nope"].First())',
    '@(context.Request.Body.As<JObject>(preserveContent: true)["id"])',
    "@(context.Request.Body.As<string>())",
    '@(string.Format("{1}-{0}", arg0: 1, 2))',
    '@($"{context.Request.Method,-8}|{3.5:F2}|{context.RequestId}")',
    "@(typeof(string))",
    "@(default(int))",
    '@(new { a = 1, b = "x" }.b)',
    '@(new JObject(new JProperty("a", 1)) { ["b"] = 2 }.ToString())',
    "@(new List<int> { 1, 2 }.Count)",
    "@(new byte[3].Length)",
    "@(new int[-1])",
    "@(new Nope())",
    '@((int)"x")',
    "@((Nope)1)",
    '@("x" as string)',
    "@(1 is int)",
    "@(null is null)",
    "@(1 is 1)",
    "@(1 as Nope)",
    "@(!1)",
    "@(-(long)3 + ~2)",
    "@(1 / 0)",
    '@(true ? 1 : "x")',
    "@(1 ? 2 : 3)",
    '@(null ?? "d")',
    "@(1 && true)",
    "@(true || 1)",
    "@(false || 1)",
    '@(context.Trace("hello") ?? "x")',
    # blocks: locals, shadowing, assignments, pattern variables, throw, missing returns
    "@{ var context = 1; return context; }",
    '@{ var String = "s"; return String.Length; }',
    "@{ var x = 1; var x = 2; return x; }",
    "@{ var x = 1; { var x = 2; } return x; }",
    "@{ if (true) { var y = 1; } var y = 2; return y; }",
    "@{ int i = 'a'; i += 2; i++; ++i; return i; }",
    "@{ char c = 'a'; c++; c += 1; return c; }",
    '@{ string s = null; s ??= "d"; s ??= "e"; return s; }',
    "@{ nope = 1; return 1; }",
    "@{ context = 1; return 1; }",
    '@{ if (context.Request.Body.As<JObject>() is JObject o) { return o["id"]; } return 0; }',
    '@{ object o = "s"; if (o is string s) { return s + s; } return s; }',
    "@{ if (1) { return 1; } return 2; }",
    "@{ if (false) { return 1; } }",
    "@{ }",
    "@{ ; return 1; }",
    '@{ throw new Exception("boom"); }',
    "@{ throw; }",
    "@{ throw null; }",
    "@{ throw 1; }",
    "@{ Nope x = 1; return x; }",
    "@{ long l = 1; double d = 2; decimal m = 3; return l + d + (double)m; }",
    "@{ int[] a = null; return a; }",
    "@{ var x; return 1; }",
    "@{ return; }",
    '@{ context.Trace("t"); return context.Variables.Count; }',
    # left to the interpreter
    "@(new[] {1, 2}.Select(x => x + 1).Sum())",
    "@{ var n = 0; foreach (var i in new[] {1, 2}) { n += i; } return n; }",
    "@{ int f(int x) => x * 2; return f(2); }",
    "@{ try { return 1 / 0; } catch (Exception e) { return e.Message; } }",
    "@{ break; }",
    "@(x = 1)",
    "@(1 is int i)",
    '@(int.TryParse("5", out var n) ? n : 0)',
    '@(context.Variables["count"] = 5)',
    "@(" + "(1 + " * 60 + "1" + ")" * 60 + ")",
]


@pytest.mark.parametrize("source", CORNERS)
def test_corners(source: str) -> None:
    same(source)


def test_what_is_left_to_the_interpreter() -> None:
    compiled = {s: same(s) for s in CORNERS}
    left = [s for s, c in compiled.items() if not c]
    assert left == [s for s in CORNERS if CORNERS.index(s) >= CORNERS.index("@(new[] {1, 2}.Select(x => x + 1).Sum())")]


def test_the_corpus(corpus_sources: list[str]) -> None:
    """Every snippet corpus expression: the same outcome against the synthesized context; nine in ten compiled
    (416 of 438 when written)."""
    compiled = [same(s) for s in corpus_sources]
    assert len(compiled) >= 400 and sum(compiled) / len(compiled) >= 0.9


@pytest.fixture(scope="module")
def corpus_sources() -> list[str]:
    from test_loader_corpus import CORPUS, _corpus_script

    if not CORPUS.is_dir():
        pytest.skip("policy snippet corpus not present (scripts/corpus.py)")
    script = _corpus_script()
    sources: list[str] = []
    real = script._real_compiler

    def recording() -> Any:
        compile_real = real()

        def compile_and_record(source: str, location: Any) -> Any:
            sources.append(source)
            return compile_real(source, location)

        return compile_and_record

    script._real_compiler = recording
    try:
        script.run(CORPUS, evaluate=False)
    finally:
        script._real_compiler = real
    return sources


def test_a_closure_that_met_one_type_answers_for_the_next() -> None:
    """Member chains and method calls remember what they resolved for the type they last met: the same compiled
    expression, fed values of other types in turn (and back), answers each as the interpreter does."""
    import dataclasses
    import uuid

    from apim_mi.policy.context import Response
    from apim_mi.policy.expressions.runtime_types import net_type_name
    from test_expressions_support import make_context

    values: list[Any] = ["text", 42, [1, 2], {"a": 1}, uuid.UUID(int=9), None, "again", Response(201, "Created")]
    sources = ['@(context.Variables["v"].ToString())', '@(context.Variables["v"].Length)',
               '@(context.Variables["v"].Count)', '@(context.Variables["v"].StatusCode)',
               '@(context.Variables["v"]?.GetType().Name)', "@(context.Response.StatusCode)"]  # fmt: skip
    for source in sources:
        expr = compile_expression(source, LOC)
        assert expr.closure is not None, source
        interpreted = dataclasses.replace(expr, closure=None)
        for value in values + values[::-1]:
            shown = []
            for e in (expr, interpreted):
                context = make_context()
                context.variables["v"] = value
                context.response = value if isinstance(value, Response) else None
                try:
                    result = e.evaluate(context)
                    shown.append(("value", net_type_name(result), repr(result)))
                except Exception as error:  # the error itself is what is compared
                    shown.append(("error", type(error).__name__, str(error)))
            assert shown[0] == shown[1], (source, value)
