"""The YAML rules loader: shorthand → policy, schema errors with file:line:column, matching."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from apim_mi import matcher
from apim_mi.errors import LoadError
from apim_mi.matcher import Matcher, RequestLine, RequestTarget, host_matches, path_matches
from apim_mi.rules import load_rules, load_rules_text, parse_host, rules_schema

ROOT = Path(__file__).resolve().parent.parent


def load(text: str, name: str = "rules.yaml"):
    return load_rules_text(textwrap.dedent(text), Path(name))


def err(text: str) -> str:
    with pytest.raises(LoadError) as info:
        load(text)
    return str(info.value)


def test_shorthand_is_an_authentication_managed_identity_policy() -> None:
    cfg = load("""
        credential: emulator
        named_values: {app: "api://x"}
        rules:
          - name: a
            match: {host: a.example.com}
            resource: "{{app}}"
            client_id: "1111"
    """)
    rule = cfg.rules[0]
    assert cfg.credential == "emulator"
    inbound = rule.policy.sections["inbound"]
    mi = next(s for s in inbound if s.name == "authentication-managed-identity")
    assert mi.attrs["resource"].text == "api://x"
    assert mi.attrs["client-id"].text == "1111"
    assert mi.attrs["ignore-error"].text == "false"
    assert "output-token-variable-name" not in mi.attrs
    assert [s.name for s in rule.policy.sections["backend"]] == ["forward-request"]


def test_custom_header_template_uses_a_variable_and_set_header() -> None:
    cfg = load("""
        rules:
          - match: {host: "*.servicebus.windows.net"}
            resource: https://servicebus.azure.net
            template: "{token}"
            exists_action: skip
    """)
    inbound = cfg.rules[0].policy.sections["inbound"]
    names = [s.name for s in inbound]
    assert names[-2:] == ["authentication-managed-identity", "set-header"]
    sh = inbound[-1]
    assert sh.attrs["name"].text == "Authorization" and sh.attrs["exists-action"].text == "skip"
    value = sh.children[0].text
    assert value is not None and value.is_expression
    assert value.text == '@((string)context.Variables["apim-mi-token"])'


ERRORS = [
    ("rules:\n  - match: {host: a}\n    resource: r\n    hedaer: x\n", "rules.yaml:4:5: unknown field 'hedaer'"),
    ("rules:\n  - match: {host: a}\n", "rules.yaml:2:5: rules[0]: a rule needs either 'resource'"),
    ("rules:\n  - match: {host: a}\n    resource: r\n    policy: p.xml\n", "rules.yaml:2:5: rules[0]: 'policy' cannot"),
    (
        "rules:\n  - match: {host: a}\n    resource: r\n    template: Bearer\n",
        "rules.yaml:4:15: rules[0].template: the template must contain",
    ),
    (
        "rules:\n  - match: {host: a}\n    resource: r\n    exists_action: replace\n",
        "rules.yaml:4:20: rules[0].exists_action: 'replace' is not one of",
    ),
    ("rules:\n  - match: {host: 'a*b'}\n    resource: r\n", "rules.yaml:2:19: rules[0].match.host: bad wildcard"),
    ("rules:\n  - match: {host: a, path: nope}\n    resource: r\n", "rules.yaml:2:28: rules[0].match.path: must start"),
    ("rules:\n  - match: {host: a}\n    resource: '{{nope}}'\n", "rules.yaml:3:15: unknown named value '{{nope}}'"),
    ("rules:\n  - match: {host: a\n", "rules.yaml:3:1: YAML syntax error"),
    ("credential: azure\nrules: []\n", "rules.yaml:1:13: credential: 'azure' is not one of"),
    ("", "rules.yaml:1:1: the rules file is empty"),
    ("- 1\n", "rules.yaml:1:1: the rules file must be a mapping"),
    ("rules: []\nrules: []\n", "rules.yaml:2:1: duplicate key 'rules'"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_file_line_and_column(text: str, expected: str) -> None:
    assert expected in err(text)


def test_missing_file() -> None:
    with pytest.raises(LoadError, match=r"nope\.yaml: rules file not found"):
        load_rules("nope.yaml")


def test_shipped_rules_file_loads_and_has_the_schema_modeline() -> None:
    text = (ROOT / "rules.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=addon/apim_mi/schema/rules.schema.json")
    cfg = load_rules(ROOT / "rules.yaml")
    assert cfg.credential == "emulator" and cfg.rules
    assert rules_schema()["title"] == "apim-mi rules file"


@pytest.mark.parametrize(
    ("spec", "host", "port"),
    [
        ("Example.COM", "example.com", None),
        ("a.b:8443", "a.b", 8443),
        ("[::1]:80", "::1", 80),
        ("*.x.y", "*.x.y", None),
    ],
)
def test_parse_host(spec: str, host: str, port: int | None) -> None:
    assert parse_host(spec) == (host, port)


@pytest.mark.parametrize("spec", ["", "a*", "*.", "http://x", "a:0", "a:99999", "[::1"])
def test_parse_host_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_host(spec)


def test_host_and_path_matching() -> None:
    assert host_matches("*.contoso.com", "a.b.contoso.com")
    assert not host_matches("*.contoso.com", "contoso.com")
    assert not host_matches("*.contoso.com", "evilcontoso.com")
    assert path_matches("/api", "/api") and path_matches("/api", "/api/x")
    assert not path_matches("/api", "/apix")
    assert path_matches("/api/*", "/api/a/b") and not path_matches("/api/*", "/other/api/a")
    assert path_matches("/v?/x", "/v1/x")


def t(host: str, path: str = "/", method: str = "GET", scheme: str = "https", port: int = 443) -> RequestTarget:
    return RequestTarget(scheme, host, port, path, method)


SHADOWING = """
        rules:
          - name: specific
            match: {host: api.contoso.com, path: /orders, methods: [POST]}
            resource: r1
          - name: wildcard
            match: {host: "*.contoso.com"}
            resource: r2
          - name: shadowed
            match: {host: api.contoso.com, path: /orders/x}
            resource: r3
          - name: http only
            match: {host: plain.example, scheme: http}
            resource: r4
          - name: port
            match: {host: "plain.example:8443"}
            resource: r5
    """


def test_first_match_in_file_order_and_shadowing() -> None:
    cfg = load(SHADOWING)
    m = Matcher(cfg.rules)
    assert m.match(t("api.contoso.com", "/orders", "POST")).name == "specific"  # type: ignore[union-attr]
    assert m.match(t("API.contoso.com", "/orders", "GET")).name == "wildcard"  # type: ignore[union-attr]
    assert m.match(t("contoso.com")) is None
    assert m.match(t("plain.example", scheme="http", port=80)).name == "http only"  # type: ignore[union-attr]
    assert m.match(t("plain.example", port=8443)).name == "port"  # type: ignore[union-attr]
    assert m.match(t("plain.example")) is None
    assert [(a.name, b.name) for a, b in m.shadowed()] == [("shadowed", "wildcard")]


def test_request_lines_are_matched_once_and_remembered_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """``match_line`` answers what ``match`` answers for the decoded line (query dropped, %-escapes decoded, method
    upper-cased), remembers it per line, forgets everything once the memo is full, and never keeps a long path."""
    cfg = load(SHADOWING)
    m = Matcher(cfg.rules)
    line = RequestLine(b"https", "api.contoso.com", 443, b"/ord%65rs/1?x=1", b"post")
    assert line.target() == t("api.contoso.com", "/orders/1", "POST")
    calls: list[RequestTarget] = []
    match = m.match
    monkeypatch.setattr(m, "match", lambda target: calls.append(target) or match(target))
    assert m.match_line(line).name == "specific"  # type: ignore[union-attr]
    assert m.match_line(line).name == "specific"  # type: ignore[union-attr]
    assert m.match_line(line._replace(method=b"GET")).name == "wildcard"  # type: ignore[union-attr]
    assert m.match_line(line._replace(host="contoso.com")) is None
    assert m.match_line(line._replace(host="contoso.com")) is None
    assert len(calls) == 3  # a remembered line (a rule, or no rule) is not matched again
    monkeypatch.setattr(matcher, "MEMO_SIZE", 3)
    m.match_line(line._replace(path=b"/a"))  # the fourth line: the memo starts again
    assert len(m._lines) == 1
    long = line._replace(path=b"/" + b"x" * matcher.MEMO_PATH)
    assert m.match_line(long).name == "wildcard" and long not in m._lines  # type: ignore[union-attr]
    assert Matcher(cfg.rules)._lines == {}  # reloaded rules: a new matcher, nothing remembered


def test_matcher_scales_to_10000_rules() -> None:
    body = "rules:\n" + "".join(
        f"  - match: {{host: h{i}.example.com, path: /p{i % 7}}}\n    resource: r{i}\n" for i in range(10_000)
    )
    cfg = load_rules_text(body, Path("big.yaml"))
    m = Matcher(cfg.rules)
    assert m.match(t("h9999.example.com", "/p3/x")).index == 9999  # type: ignore[union-attr]
    assert m.match(t("h9999.example.com", "/p4")) is None
