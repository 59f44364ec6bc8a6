"""v2 ``scope:`` in YAML and XML rules: the resource it stands for, located errors, validate's audience warnings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from apim_mi.cli import audience_warnings
from apim_mi.errors import LoadError
from apim_mi.rules import load_rules, load_rules_text
from apim_mi.scopes import resource_from_scope, scope_of


def load(text: str):
    return load_rules_text(textwrap.dedent(text), Path("rules.yaml"))


def mi_resource(rule) -> str:
    return next(s for s in rule.policy.statements() if s.name == "authentication-managed-identity").attrs[
        "resource"
    ].text


@pytest.mark.parametrize(
    ("scope", "resource"),
    [
        ("api://00000000-0000-0000-0000-00000000a11c/.default", "api://00000000-0000-0000-0000-00000000a11c"),
        ("https://management.core.windows.net//.default", "https://management.core.windows.net/"),
        ("00000003-0000-0000-c000-000000000000/.default", "00000003-0000-0000-c000-000000000000"),
        (["https://vault.azure.net/.default"], "https://vault.azure.net"),
    ],
)
def test_resource_from_scope_is_azure_identitys_conversion(scope: str | list[str], resource: str) -> None:
    assert resource_from_scope(scope) == resource
    assert scope_of(resource) == (scope if isinstance(scope, str) else scope[0])


def test_yaml_scope_becomes_the_rules_resource() -> None:
    cfg = load("""
        named_values: {orders: "api://00000000-0000-0000-0000-00000000a11c"}
        rules:
          - match: {host: orders.contoso.com}
            scope: "{{orders}}/.default"
          - match: {host: management.azure.com}
            scope: [https://management.core.windows.net//.default]
            client_id: 11111111-1111-1111-1111-111111111111
    """)
    assert [mi_resource(r) for r in cfg.rules] == ["api://00000000-0000-0000-0000-00000000a11c",
                                                   "https://management.core.windows.net/"]  # fmt: skip
    assert cfg.rules[0].scope == "{{orders}}/.default"


YAML_ERRORS = [
    ("    scope: [api://a/.default, api://b/.default]\n", "rules.yaml:3:12: a managed identity can only use one "
     "'.default' scope per token, got 2 (api://a/.default, api://b/.default)"),
    ("    scope: api://a/.default https://graph.microsoft.com/.default\n", "rules.yaml:3:12: a managed identity can "
     "only use one '.default' scope"),
    ("    scope: https://graph.microsoft.com/User.Read\n", "rules.yaml:3:12: scope "
     "'https://graph.microsoft.com/User.Read' is not a '.default' scope: a managed identity gets app-only tokens "
     "with the roles granted to it, never delegated permissions; use 'https://graph.microsoft.com/.default'"),
    ("    scope: api://a\n", "use 'api://a/.default'"),
    ("    scope: []\n", "rules.yaml:3:12: rules[0].scope:"),
    ("    scope: api://a/.default\n    resource: api://a\n", "rules.yaml:2:5: rules[0]: 'resource' (v1) and 'scope' "
     "(v2) name the same audience: give one of them"),
    ("    scope: api://a/.default\n    policy: p.xml\n", "'policy' cannot be combined with the shorthand field(s) "
     "scope"),
]  # fmt: skip


@pytest.mark.parametrize(("tail", "expected"), YAML_ERRORS)
def test_yaml_scope_errors_are_located(tail: str, expected: str) -> None:
    with pytest.raises(LoadError) as info:
        load_rules_text("rules:\n  - match: {host: a}\n" + tail, Path("rules.yaml"))
    assert expected in str(info.value)


def test_xml_scope(tmp_path: Path) -> None:
    path = tmp_path / "rules.xml"
    path.write_text(textwrap.dedent("""\
        <apim-mi>
          <rule name="graph" host="graph.microsoft.com" scope="https://graph.microsoft.com/.default"/>
          <rule name="bad" host="x.test"
                scope="api://x/read"/>
        </apim-mi>
    """))
    with pytest.raises(LoadError) as info:
        load_rules(path)
    assert (info.value.location.line, info.value.location.column) == (4, 9)
    assert "scope 'api://x/read' is not a '.default' scope" in str(info.value)
    path.write_text(path.read_text().replace("api://x/read", "api://x/.default"))
    cfg = load_rules(path)
    assert [mi_resource(r) for r in cfg.rules] == ["https://graph.microsoft.com", "api://x"]
    path.write_text('<apim-mi><rule host="a" scope="api://x/.default" resource="api://x"/></apim-mi>')
    with pytest.raises(LoadError, match="resource \\(v1\\) and scope \\(v2\\) name the same audience"):
        load_rules(path)


def test_validate_names_the_scope_as_written() -> None:
    cfg = load("""
        rules:
          - name: arm
            match: {host: management.azure.com}
            scope: HTTPS://management.azure.com/.default
          - name: orders by guid
            match: {host: a.test}
            scope: 00000000-0000-0000-0000-00000000a11c/.default
          - name: orders by uri
            match: {host: b.test}
            resource: api://00000000-0000-0000-0000-00000000a11c
    """)
    warnings = audience_warnings(cfg)
    assert any("rule 'arm': scope 'HTTPS://management.azure.com/.default' differs from the documented "
               "'https://management.azure.com" in w and "letter case" in w for w in warnings), warnings
    assert any("rule 'orders by uri': resource 'api://00000000-0000-0000-0000-00000000a11c' and scope "
               "'00000000-0000-0000-0000-00000000a11c/.default'" in w for w in warnings), warnings  # fmt: skip
