"""Transformation policies through the engine: json-to-xml, xml-to-json, find-and-replace, xsl-transform,
set-body template="liquid", set-body in on-error. Expected outputs follow the reference pages' examples and real
gateway output quoted in public write-ups (see docs/policies.md for what is inferred)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from apim_mi.policy import engine
from apim_mi.policy.context import Body, Context, Headers, Request, Response, Url
from apim_mi.policy.loader import DEFAULT_GLOBAL, compose, load_policy_text
from apim_mi.policy.statements.transform import json_to_xml_bytes, xml_to_json_value
from apim_mi.trace import Trace
from test_statements import FakeSender, FakeTokens, entries, policies

FAKE = object()


def make_run(xml: str, *, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
             method: str = "POST", url: str = "https://api.test/orders/42?x=1",
             settings: dict[str, Any] | None = None, send: Any = FAKE) -> engine.PolicyRun:  # fmt: skip
    """A run of ``xml`` on one request; ``send=None`` makes side requests for real (aiohttp)."""
    send = FakeSender() if send is FAKE else send
    policy = compose(DEFAULT_GLOBAL, load_policy_text(xml, source="t.xml"))
    request = Request(method, Url.parse(url), Headers(headers or [("Host", "api.test")]), Body(body))
    services = engine.Services(FakeTokens(), "emulator", send=send, settings=settings or {})  # type: ignore[arg-type]
    return engine.PolicyRun(policy, Context(request=request), Trace("t"), services)


async def outbound(xml: str, response_body: bytes, content_type: str, **kw: Any) -> engine.PolicyRun:
    """Runs inbound, then outbound on a backend response with ``response_body``."""
    run = make_run(xml, **kw)
    await engine.run_inbound(run)
    assert run.response is None and run.forward
    run.context.response = Response(200, "OK", Headers([("Content-Type", content_type)]), Body(response_body))
    await engine.run_outbound(run)
    return run


def text(msg: Request | Response | None) -> str:
    assert msg is not None and msg.body is not None
    return msg.body.content.decode()


PERSON = {
    "firstName": "John", "lastName": "Smith", "isAlive": True, "age": 25,
    "address": {"streetAddress": "21 2nd Street", "city": "New York"},
    "phoneNumbers": [{"type": "home", "number": "212 555-1234"}, {"type": "mobile", "number": "123 456-7890"}],
    "children": [], "spouse": None,
}  # fmt: skip


def test_json_to_xml_gateway_shape() -> None:
    """The gateway output quoted for this document: <Document> root, True, repeated elements, xsi:nil for null."""
    xml = json_to_xml_bytes(json.dumps(PERSON)).decode()
    assert xml == (
        "<Document><firstName>John</firstName><lastName>Smith</lastName><isAlive>True</isAlive><age>25</age>"
        "<address><streetAddress>21 2nd Street</streetAddress><city>New York</city></address>"
        "<phoneNumbers><type>home</type><number>212 555-1234</number></phoneNumbers>"
        "<phoneNumbers><type>mobile</type><number>123 456-7890</number></phoneNumbers><children/>"
        '<spouse xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/></Document>'
    )


def test_json_to_xml_reference_soap_example() -> None:
    """The reference page's example: one root property, namespace-separator=":" and attribute-block-name="#attrs"."""
    doc = {"soapenv:Envelope": {
        "xmlns:soapenv": "http://schemas.xmlsoap.org/soap/envelope/", "xmlns:v1": "http://localdomain.com/core/v1",
        "soapenv:Header": {},
        "soapenv:Body": {"v1:QueryList": {"#attrs": {"queryName": "test"}, "v1:QueryItem": {"name": "dummy text"}}},
    }}  # fmt: skip
    xml = json_to_xml_bytes(json.dumps(doc), separator=":", attr_block="#attrs", parse_date=False).decode()
    assert xml == (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:v1="http://localdomain.com/core/v1"><soapenv:Header/><soapenv:Body>'
        '<v1:QueryList queryName="test"><v1:QueryItem><name>dummy text</name></v1:QueryItem></v1:QueryList>'
        "</soapenv:Body></soapenv:Envelope>"
    )


def test_json_to_xml_names_dates_and_top_level_array() -> None:
    xml = json_to_xml_bytes('{"first name": "a", "at": "2024-05-01T10:00:00.500000Z", "n": 1.50}')
    assert xml.decode() == ("<Document><first_x0020_name>a</first_x0020_name><at>2024-05-01T10:00:00.5Z</at>"
                            "<n>1.50</n></Document>")  # fmt: skip
    kept = json_to_xml_bytes(json.dumps({"at": "2024-05-01T10:00:00.500000Z"}), parse_date=False).decode()
    assert "<at>2024-05-01T10:00:00.500000Z</at>" in kept
    assert json_to_xml_bytes("[1, 2]").decode() == "<Document><Array>1</Array><Array>2</Array></Document>"


async def test_json_to_xml_policy_sets_body_and_content_type() -> None:
    xml = policies(outbound='<json-to-xml apply="always" consider-accept-header="false" />')
    run = await outbound(xml, b'{"a": {"b": [1, 2]}}', "application/json")
    response = run.context.response
    assert text(response) == "<a><b>1</b><b>2</b></a>"
    assert response is not None and response.headers.get("Content-Type") == "application/xml"
    assert entries(run, "json-to-xml")[-1]["message"] == "Body was converted from JSON to XML (23 bytes)."


@pytest.mark.parametrize(("apply", "accept", "content_type", "converted"), [
    ("content-type-json", "application/xml", "application/json", True),
    ("content-type-json", "application/xml", "text/plain", False),
    ("always", "application/xml;q=0.9, */*", "text/plain", True),
    ("always", "application/json", "application/json", False),  # consider-accept-header defaults to true
    ("always", "application/xml;q=0", "application/json", False),
])  # fmt: skip
async def test_json_to_xml_apply_and_accept(apply: str, accept: str, content_type: str, converted: bool) -> None:
    xml = policies(outbound=f'<json-to-xml apply="{apply}" />')
    run = await outbound(xml, b'{"a": 1}', content_type, headers=[("Accept", accept)])
    assert (text(run.context.response) == "<Document><a>1</a></Document>") is converted
    if not converted:
        assert entries(run, "json-to-xml")[-1]["message"].startswith("Conversion skipped: ")


async def test_json_to_xml_invalid_json_goes_to_on_error() -> None:
    xml = policies(inbound='<json-to-xml apply="always" consider-accept-header="false" />',
                   on_error="<set-variable name=\"why\" value=\"@(context.LastError.Reason)\" />")
    run = make_run(xml, body=b"{nope")
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 500
    assert run.context.variables["why"] == "JsonToXmlConversionFailure"


SOAP = b"""<?xml version="1.0"?>
<soap:Envelope xmlns="http://fyicenter.com/" xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body><GetOrders><Customer>1234567</Customer></GetOrders></soap:Body>
</soap:Envelope>"""


def test_xml_to_json_direct_gateway_shape() -> None:
    """The gateway output quoted for this document: declaration as properties, ':' as '$', '@' attributes."""
    assert xml_to_json_value(SOAP.decode(), friendly=False) == {
        "version": "1.0",
        "soap$Envelope": {
            "@xmlns": "http://fyicenter.com/",
            "@xmlns$soap": "http://schemas.xmlsoap.org/soap/envelope/",
            "soap$Body": {"GetOrders": {"Customer": "1234567"}},
        },
    }


def test_xml_to_json_friendly_arrays_attributes_and_mixed_text() -> None:
    doc = '<r id="7"><i>1</i><i>2</i><one>x</one><empty/><m>a<b>c</b></m></r>'
    assert xml_to_json_value(doc, friendly=True) == {
        "r": {"@id": "7", "i": ["1", "2"], "one": "x", "empty": None, "m": {"b": "c", "#text": "a"}}
    }
    assert xml_to_json_value("<r><one>x</one></r>", friendly=True, always_array=True) == {"r": {"one": ["x"]}}


async def test_xml_to_json_policy_in_inbound_converts_the_request() -> None:
    xml = policies(inbound='<xml-to-json kind="direct" apply="content-type-xml" consider-accept-header="false" />')
    run = make_run(xml, body=b"<a><b>1</b></a>", headers=[("Content-Type", "text/xml"), ("Content-Length", "15")])
    await engine.run_inbound(run)
    request = run.context.request
    assert text(request) == '{"a":{"b":"1"}}'
    assert request.headers.get("Content-Type") == "application/json"
    assert request.headers.get("Content-Length") == "15"


async def test_xml_to_json_kind_must_be_valid() -> None:
    xml = policies(outbound='<xml-to-json kind="@(&quot;weird&quot;)" apply="always" />')
    run = await outbound(xml, b"<a/>", "application/xml", headers=[("Accept", "application/json")])
    assert run.response is not None and run.response.status_code == 500
    assert run.error is not None and "direct" in run.error.message


async def test_find_and_replace_in_request_and_response() -> None:
    xml = policies(inbound='<find-and-replace from="secret" to="[redacted]" />',
                   outbound='<find-and-replace from="@(&quot;internal.contoso&quot;)" to="api.contoso.com" />')
    run = await outbound(xml, b"see https://internal.contoso/x and internal.contoso", "text/plain",
                         body=b"a secret and another secret")  # fmt: skip
    assert text(run.context.request) == "a [redacted] and another [redacted]"
    assert text(run.context.response) == "see https://api.contoso.com/x and api.contoso.com"
    assert entries(run, "find-and-replace")[0]["message"] == "Replaced 2 occurrence(s) of 'secret' in the body."


XSLT = """<xsl-transform>
    <parameter parameter-name="User-Agent">@(context.Request.Headers.GetValueOrDefault("User-Agent",
        "non-specified"))</parameter>
    <xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
        <xsl:output omit-xml-declaration="yes" method="xml" indent="no" />
        <xsl:param name="User-Agent" />
        <xsl:template match="* | @* | node()">
            <xsl:copy>
                <xsl:if test="self::* and not(parent::*)">
                    <xsl:attribute name="User-Agent"><xsl:value-of select="$User-Agent" /></xsl:attribute>
                </xsl:if>
                <xsl:apply-templates select="* | @* | node()" />
            </xsl:copy>
        </xsl:template>
    </xsl:stylesheet>
</xsl-transform>"""


async def test_xsl_transform_reference_example_with_parameter() -> None:
    """The reference page's example: the User-Agent parameter becomes an attribute of the root element."""
    run = await outbound(policies(outbound=XSLT), b"<Document><a>1</a></Document>", "application/xml",
                         headers=[("User-Agent", "curl/8")])  # fmt: skip
    assert text(run.context.response) == '<Document User-Agent="curl/8"><a>1</a></Document>'
    run = await outbound(policies(outbound=XSLT), b"<r/>", "application/xml")
    assert text(run.context.response) == '<r User-Agent="non-specified"/>'


async def test_xsl_transform_non_xml_body_fails() -> None:
    run = await outbound(policies(outbound=XSLT), b"{not xml", "application/json")
    assert run.response is not None and run.response.status_code == 500
    assert run.error is not None and run.error.reason == "XslTransformFailure"


LIST_HEADERS = """<return-response><set-body template="liquid">{% for header in context.Request.Headers %}
{{- header.Key }}: {{ header.Value }};{% endfor %}</set-body></return-response>"""


async def test_liquid_snippet_lists_headers_as_key_value_pairs() -> None:
    """Azure/api-management-policy-snippets "List all inbound headers": DotLiquid's KeyValuePair members."""
    run = make_run(policies(inbound=LIST_HEADERS), headers=[("Host", "api.test"), ("X-A", "1"), ("X-A", "2")])
    await engine.run_inbound(run)
    assert text(run.response) == "Host: api.test;X-A: 1,2;"


async def test_liquid_body_context_filters_and_json_array_for() -> None:
    template = """{"name": "{{ body.name | Upcase }}", "id": "{{ context.Request.MatchedParameters["id"] }}",
"ua": "{{ context.Request.Headers["user-agent"] }}", "path": "{{ context.Request.Url.Path }}",
"v": "{{ context.Variables["v"] }}",
"items": {% JSONArrayFor item in body.items %}{"sku": "{{ item.sku }}"}{% endJSONArrayFor %}}"""
    xml = policies(inbound=f'<set-variable name="v" value="seven" /><set-body template="liquid">{template}</set-body>')
    run = make_run(xml, body=b'{"name": "ann", "items": [{"sku": "a"}, {"sku": "b"}]}',
                   headers=[("User-Agent", "curl/8"), ("Content-Type", "application/json")])  # fmt: skip
    run.context.request.matched_parameters["id"] = "42"
    await engine.run_inbound(run)
    assert json.loads(text(run.context.request)) == {
        "name": "ANN", "id": "42", "ua": "curl/8", "path": "/orders/42", "v": "seven",
        "items": [{"sku": "a"}, {"sku": "b"}],
    }  # fmt: skip


async def test_liquid_xml_body_and_response_status() -> None:
    xml = policies(outbound='<set-body template="liquid">{{ body.order.id }}/{{ body.order.note }}/'
                            '{{ context.Response.StatusCode }}</set-body>')  # fmt: skip
    doc = b'<order xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><id>9</id><note xsi:nil="true"/></order>'
    run = await outbound(xml, doc, "application/xml")
    assert text(run.context.response) == "9//200"


async def test_liquid_syntax_error_goes_to_on_error() -> None:
    xml = policies(inbound='<set-body template="liquid">{% if %}</set-body>',
                   on_error='<set-variable name="why" value="@(context.LastError.Reason)" />')
    run = make_run(xml)
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 500
    assert run.context.variables["why"] == "LiquidTemplateError"


async def test_set_body_in_on_error_replaces_the_error_body() -> None:
    """Deployed policies write set-body directly in on-error (the APIM team's set-body deep dive)."""
    xml = policies(inbound='<check-header name="X-Key" failed-check-httpcode="401" '
                           'failed-check-error-message="no key" ignore-case="true" />',
                   on_error='<set-body>@("{\\"error\\": \\"" + context.LastError.Reason + "\\"}")</set-body>')
    run = make_run(xml)
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 401
    assert json.loads(text(run.response)) == {"error": "HeaderNotFound"}
