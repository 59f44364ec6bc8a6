"""The APIM context model's Python API (what the engine uses) and how expressions see it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from apim_mi.policy.context import Body, Context, Deployment, Headers, LastError, Query, Request, Response, Url
from hypothesis import given, settings
from hypothesis import strategies as st
from test_expressions_support import ev


def test_headers_multimap() -> None:
    h = Headers([("Accept", "a"), ("X-One", "1"), ("accept", "b")])
    assert h.get_all("ACCEPT") == ["a", "b"] and h.get("accept") == "a,b" and h.get("nope", "d") == "d"
    assert "x-one" in h and "x-two" not in h and len(h) == 2 and h.names() == ["Accept", "X-One"]
    h.set("accept", ["c"])
    assert h.pairs() == [("accept", "c"), ("X-One", "1")]
    h.append("X-One", "2")
    assert h.get("x-one") == "1,2"
    h.remove("X-ONE")
    assert h.pairs() == [("accept", "c")]
    h.set("New", ["v1", "v2"])
    assert h.pairs()[-2:] == [("New", "v1"), ("New", "v2")]
    assert h.copy() == h and h.copy() is not h


def test_url_parse_and_format() -> None:
    u = Url.parse("https://Example.com/a/b?x=1&y=a%20b&x=2#frag")
    assert (u.scheme, u.host, u.port, u.path) == ("https", "example.com", 443, "/a/b")
    assert u.query.get_all("x") == ["1", "2"] and u.query.get("y") == "a b"
    assert u.query_string == "?x=1&y=a%20b&x=2"  # untouched: original encoding kept
    assert str(u) == "https://example.com/a/b?x=1&y=a%20b&x=2#frag"
    u.query.set("y", ["c&d"])
    assert u.query_string == "?x=1&y=c%26d&x=2"
    u.port, u.scheme = 8443, "https"
    u.path = "/z"
    assert str(u) == "https://example.com:8443/z?x=1&y=c%26d&x=2#frag"
    assert str(Url.parse("http://h")) == "http://h/" and Url.parse("http://h:80/").port == 80
    assert Query.parse("a=1&b").pairs() == [("a", "1"), ("b", "")]
    c = u.copy()
    c.query.append("n", "1")
    assert "n" not in u.query


def test_body_consumption() -> None:
    b = Body(b"abc")
    assert b.read(preserve=True) == b"abc" and not b.consumed
    assert b.read() == b"abc" and b.consumed and b.read() == b""


def test_request_defaults_and_context() -> None:
    r = Request("GET", Url.parse("http://backend/p"), Headers())
    assert r.original_url == r.url and r.original_url is not r.url and r.ip_address == "127.0.0.1"
    ctx = Context(request=r)
    assert isinstance(ctx.request_id, uuid.UUID) and ctx.timestamp.tzinfo is UTC
    assert ctx.deployment.gateway_id == "managed" and ctx.service_name == ctx.deployment.service_name
    assert ctx.elapsed.total_seconds() >= 0
    ctx.trace("m")
    assert ctx.traces == ["m"]


def test_expressions_see_engine_mutations() -> None:
    r = Request("GET", Url.parse("http://backend/p?q=1"), Headers([("A", "1")]))
    ctx = Context(request=r, deployment=Deployment(region="West Europe"))
    assert ev('context.Request.Headers.GetValueOrDefault("a")', ctx) == "1"
    r.headers.set("a", ["2", "3"])
    r.url.path = "/new"
    ctx.variables["v"] = "x"
    ctx.response = Response(201, "Created", Headers([("Location", "/x")]), None)
    ctx.last_error = LastError("set-header", "R", "M", "api", "inbound", "choose[1]/when[1]", "p1")
    assert ev('context.Request.Headers["A"].Length + context.Request.Url.Path', ctx) == "2/new"
    assert ev('(string)context.Variables["v"] + context.Response.StatusCode', ctx) == "x201"
    assert ev("context.Response.Body == null", ctx) is True
    assert ev("context.LastError.Path + context.LastError.PolicyId + context.LastError.Scope", ctx) == (
        "choose[1]/when[1]p1api"
    )
    assert ev('context.Deployment.Region.ToLower() == "west europe"', ctx) is True
    assert ev("context.Product == null && context.User == null", ctx) is True
    ctx.timestamp = datetime(2020, 1, 1, tzinfo=UTC)
    assert ev('context.Timestamp.ToString("yyyy")', ctx) == "2020"


def test_expression_results_round_trip_through_variables() -> None:
    r = Request("POST", Url.parse("http://b/"), Headers(), Body(b'{"k": [1, {"n": "v"}]}'))
    ctx = Context(request=r)
    for name, src in [
        ("obj", "context.Request.Body.As<JObject>(true)"),
        ("n", "41 + 1"),
        ("s", '"t"'),
        ("b", "true"),
        ("l", 'long.Parse("5")'),
        ("g", "Guid.NewGuid()"),
        ("d", "DateTime.UtcNow"),
    ]:
        ctx.variables[name] = ev(src, ctx)
    assert ev('((JObject)context.Variables["obj"])["k"][1]["n"].ToString()', ctx) == "v"
    assert ev('(int)context.Variables["n"] + context.Variables.GetValueOrDefault<long>("l")', ctx) == 47
    assert ev('context.Variables.GetValueOrDefault<bool>("b") && (string)context.Variables["s"] == "t"', ctx)
    assert ev('((Guid)context.Variables["g"]).ToString().Length + ((DateTime)context.Variables["d"]).Year', ctx) > 2000


def test_url_host_and_port_read_as_urlsplit_reads_them() -> None:
    """Url.parse reads a plain authority itself (once, not once per property): the same host and port as
    ``urlsplit``'s ``hostname``/``port`` (an invalid port: None), for plain and unusual authorities alike."""
    from urllib.parse import urlsplit

    for netloc in ["h", "H:80", "h:", ":80", "h:65535", "h:65536", "h:0", "h:+1", "h:١٢", "h:8a", "u:p@H:1",
                   "[::1]:8", "[FE80::1%Zone]:9", "H%Z:1", "h:1:2", "h:00080", "ÄB:1", "h: 1"]:  # fmt: skip
        parts = urlsplit(f"http://{netloc}/x?a=1")
        try:
            port = parts.port
        except ValueError:
            port = None
        url = Url.parse(f"http://{netloc}/x?a=1")
        assert (url.host, url.port) == (parts.hostname or "", 80 if port is None else port), netloc


def test_query_parse_unquotes_only_what_needs_it() -> None:
    for raw, pairs in [("a=1&b=&c&&d=x=y", [("a", "1"), ("b", ""), ("c", ""), ("d", "x=y")]),
                       ("a+b=c+d&e%20f=%2B%26", [("a b", "c d"), ("e f", "+&")]), ("", [])]:  # fmt: skip
        assert Query.parse(raw).pairs() == pairs


class _ReferenceMultiMap:
    """The multimap's documented behaviour, written the plain way (lists rebuilt on every change)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = list(pairs)

    def get(self, name: str, default: str | None) -> str | None:
        values = [v for n, v in self.pairs if n.lower() == name.lower()]
        return ",".join(values) if values else default

    def set(self, name: str, values: list[str]) -> bool:
        at = [i for i, (n, _) in enumerate(self.pairs) if n.lower() == name.lower()]
        if not at:
            self.pairs = self.pairs + [(name, v) for v in values]
            return False
        rest = [p for p in self.pairs[at[0] + 1 :] if p[0].lower() != name.lower()]
        self.pairs = self.pairs[: at[0]] + [(name, v) for v in values] + rest
        return True

    def remove(self, name: str) -> bool:
        kept = [p for p in self.pairs if p[0].lower() != name.lower()]
        found, self.pairs = len(kept) != len(self.pairs), kept
        return found


_NAMES = st.sampled_from(["Host", "host", "X-Tenant", "x-tenant", "X-TENANT", "Accept", "X-Tenans", "A", "é-Ä",
                          "\u0130", "i\u0307", "x\u0130", "xi\u0307"])  # fmt: skip
_OPS = st.lists(st.tuples(st.sampled_from(["set", "remove", "get", "append"]), _NAMES,
                          st.lists(st.sampled_from(["1", "", "a,b", "x"]), max_size=3)), max_size=12)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, st.sampled_from(["v", "w", ""])), max_size=8), _OPS)
def test_the_multimap_behaves_as_its_plain_definition(start: list[tuple[str, str]], ops: list[Any]) -> None:
    """get/set/remove/append (with their by-length shortcuts and in-place updates) against the plain definition,
    on names that differ only in case, in length by one, or not at all."""
    fast, plain = Headers(start), _ReferenceMultiMap(start)
    for op, name, values in ops:
        if op == "set":
            assert fast.set(name, values) == plain.set(name, values)
        elif op == "remove":
            assert fast.remove(name) == plain.remove(name)
        elif op == "append":
            fast.append(name, "z")
            plain.pairs.append((name, "z"))
        assert fast.get(name, "d") == plain.get(name, "d") and (name in fast) == (plain.get(name, None) is not None)
        assert fast.pairs() == plain.pairs
