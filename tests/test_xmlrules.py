"""XML rules files (SPEC §3.3): the rule list in XML, a bare <policies> document for every request, and errors with
the real file:line:column — also for inline policy XML in rules.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from apim_mi.errors import LoadError
from apim_mi.rules import load_rules

DATA = Path(__file__).resolve().parent / "data" / "xmlrules"


def test_rule_list_in_xml() -> None:
    config = load_rules(DATA / "rules.xml")
    assert config.credential == "emulator" and not config.applies_to_all
    assert config.named_values == {"orders-app": "api://00000000-0000-0000-0000-00000000a11c"}
    assert {k: b.url for k, b in config.backends.items()} == {"orders": "https://orders.contoso.test/api"}
    orders, bus, inline = config.rules
    assert (orders.name, orders.match.host, orders.match.path, orders.match.methods) == (
        "orders API", "orders.contoso.test", "/api/*", frozenset({"GET", "POST"}))  # fmt: skip
    mi = orders.policy.sections["inbound"][1]
    assert mi.name == "authentication-managed-identity" and mi.attr("resource") == config.named_values["orders-app"]
    assert mi.attr("client-id") == "11111111-1111-1111-1111-111111111111"
    assert [s.name for s in bus.policy.sections["inbound"]] == ["set-header", "authentication-managed-identity",
                                                                "set-header"]  # fmt: skip
    assert [s.name for s in inline.policy.sections["inbound"]] == ["set-header", "choose"]  # global <base/> first
    assert not inline.shorthand and orders.shorthand


def test_bare_policies_document_applies_to_every_request() -> None:
    config = load_rules(DATA / "policies.xml")
    assert config.applies_to_all and len(config.rules) == 1
    assert config.rules[0].match.host == "*" and config.rules[0].match.path == "/"
    assert config.rules[0].policy.sections["inbound"][0].name == "authentication-managed-identity"


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip("\n"))
    return path


@pytest.mark.parametrize("body,where,needle", [
    ("""
     <apim-mi>
       <rule host="a.test"/>
     </apim-mi>
     """, (2, 4), "needs either resource"),
    ("""
     <apim-mi>
       <rule host="a.test" resource="r" bogus="1"/>
     </apim-mi>
     """, (2, 4), "unknown attribute 'bogus'"),
    ("""
     <apim-mi>
       <rule host="a.test">
         <policies>
           <inbound>
             <set-header exists-action="override"><value>@("x" + "y")</value></set-header>
           </inbound>
         </policies>
       </rule>
     </apim-mi>
     """, (5, 10), "Error in element 'set-header' on line 5, column 10: The required attribute 'name' is missing"),
    ("""
     <apim-mi>
       <rule host="a.test" resource="{{missing}}"/>
     </apim-mi>
     """, (2, 4), "unknown named value"),
    ("""
     <apim-mi>
       <rule host="a.test" resource="r">
     </apim-mi>
     """, (3, 11), "not well-formed"),
    ("""
     <orders/>
     """, (1, 1), "root element"),
])  # fmt: skip
def test_errors_carry_file_line_column(tmp_path: Path, body: str, where: tuple[int, int], needle: str) -> None:
    path = _write(tmp_path, "rules.xml", body)
    with pytest.raises(LoadError) as e:
        load_rules(path)
    assert (e.value.location.file, e.value.location.line, e.value.location.column) == (str(path), *where)
    assert needle in str(e.value)


def test_inline_yaml_policy_errors_name_the_yaml_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "rules.yaml", """
        credential: emulator
        rules:
          - name: x
            match: {host: a.test}
            policy: |
              <policies>
                <inbound>
                  <set-header name="X" exists-action="bogus"><value>1</value></set-header>
                </inbound>
              </policies>
        """)
    with pytest.raises(LoadError) as e:
        load_rules(path)
    assert (e.value.location.line, e.value.location.column) == (8, 12)
    assert str(e.value).startswith(f"{path}: Error in element 'set-header' on line 8, column 12:")
    path = _write(tmp_path, "rules2.yaml", """
        rules:
          - match: {host: b.test}
            policy: "<policies><inbound><set-header/></inbound></policies>"
        """)
    with pytest.raises(LoadError) as e:
        load_rules(path)
    assert (e.value.location.line, e.value.location.column) == (3, 34)


def test_yaml_backends_map(tmp_path: Path) -> None:
    path = _write(tmp_path, "rules.yaml", """
        named_values: {host: orders.test}
        backends: {orders: "https://{{host}}/api"}
        rules:
          - match: {host: a.test}
            resource: r
        """)
    assert {k: b.url for k, b in load_rules(path).backends.items()} == {"orders": "https://orders.test/api"}


def test_bare_policies_file_through_mitmdump(tmp_path: Path, emu: object, backend: object, md_factory: object) -> None:
    """A policy exported from Azure as the whole rules file: every request through the proxy gets it."""
    from proxy import curl

    rules = tmp_path / "policies.xml"
    rules.write_text((DATA / "policies.xml").read_text())
    md = md_factory(emu, rules)  # type: ignore[operator]
    status, body = curl("-x", md.url, f"{backend.url}/anything")  # type: ignore[attr-defined]
    assert status == 200, body
    assert body["claims"]["aud"] == "api://00000000-0000-0000-0000-00000000a11c"  # type: ignore[index]
