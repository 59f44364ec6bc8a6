"""Validation policies against a rule's OpenAPI document (tests/data/openapi/orders.yaml): validate-parameters,
validate-headers, validate-content, validate-status-code with ignore/detect/prevent, APIM's error objects and
bodies; mock-response with the document's examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from apim_mi.openapi import load_definition
from apim_mi.policy import engine
from apim_mi.policy.context import Body, Headers, Response
from test_statements import policies
from test_transform import make_run

ORDERS = load_definition(Path(__file__).resolve().parent / "data" / "openapi" / "orders.yaml")
REASON = ('<set-header name="X-Reason" exists-action="override"><value>@(context.LastError.Reason + "|" + '
          "context.LastError.Message)</value></set-header>")  # fmt: skip


def run_with(xml: str, url: str, *, method: str = "GET", headers: list[tuple[str, str]] | None = None,
             body: bytes = b"") -> engine.PolicyRun:  # fmt: skip
    run = make_run(xml, url=url, method=method, headers=headers or [], body=body)
    run.policy.api_definition = ORDERS
    return run


async def inbound(xml: str, url: str, **kw: Any) -> engine.PolicyRun:
    run = run_with(policies(inbound=xml, on_error=REASON), url, **kw)
    await engine.run_inbound(run)
    return run


async def outbound(xml: str, url: str, status: int, response_headers: list[tuple[str, str]], body: bytes,
                   **kw: Any) -> engine.PolicyRun:  # fmt: skip
    run = run_with(policies(outbound=xml, on_error=REASON), url, **kw)
    await engine.run_inbound(run)
    assert run.response is None
    run.context.response = Response(status, "x", Headers(response_headers), Body(body))
    await engine.run_outbound(run)
    return run


def errors(run: engine.PolicyRun) -> list[dict[str, str]]:
    return run.context.variables["errs"]


def answered(run: engine.PolicyRun) -> tuple[int, Any, str]:
    assert run.response is not None and run.response.body is not None
    return run.response.status_code, json.loads(run.response.body.content), run.response.headers.get("X-Reason") or ""


PARAMS = ('<validate-parameters specified-parameter-action="{s}" unspecified-parameter-action="{u}" '
          'errors-variable-name="errs">{inner}</validate-parameters>')  # fmt: skip
BASE = "https://api.contoso.test/v1"


async def test_validate_parameters_accepts_a_conforming_request() -> None:
    run = await inbound(PARAMS.format(s="prevent", u="prevent", inner=""), f"{BASE}/orders/42?verbose=true",
                        headers=[("X-Tenant", "contoso"), ("Accept", "application/json"), ("Host", "api")])
    assert run.response is None and run.forward and errors(run) == []


@pytest.mark.parametrize(("url", "headers", "name", "type_", "details"), [
    ("/orders/0", [("X-Tenant", "c")], "id", "PathParameter",
     "Value of the path parameter id does not conform to the definition. 0 is less than the minimum of 1"),
    ("/orders/abc", [("X-Tenant", "c")], "id", "PathParameter",
     "Value of the path parameter id cannot be parsed according to the definition. invalid literal for int() with "
     "base 10: 'abc'"),
    ("/orders/4?verbose=maybe", [("X-Tenant", "c")], "verbose", "QueryParameter",
     "Value of the query parameter verbose cannot be parsed according to the definition. 'maybe' is not a boolean"),
    ("/orders/4?verbose=true&verbose=false", [("X-Tenant", "c")], "verbose", "QueryParameter",
     "Request cannot contain multiple values for the query parameter verbose."),
    ("/orders/4", [("X-Tenant", "Big")], "X-Tenant", "RequestHeader",
     "Value of the header X-Tenant does not conform to the definition. 'Big' does not match '^[a-z]+$'"),
    ("/orders/4", [], "X-Tenant", "RequestHeader",
     "Value of the header X-Tenant does not conform to the definition. Required header is missing."),
    ("/orders/4?debug=1", [("X-Tenant", "c")], "debug", "QueryParameter",
     "Unspecified query parameter debug is not allowed."),
    ("/orders/4", [("X-Tenant", "c"), ("X-Debug", "1")], "X-Debug", "RequestHeader",
     "Unspecified header X-Debug is not allowed."),
])  # fmt: skip
async def test_validate_parameters_prevent(url: str, headers: list[tuple[str, str]], name: str, type_: str,
                                           details: str) -> None:  # fmt: skip
    run = await inbound(PARAMS.format(s="prevent", u="prevent", inner=""), BASE + url, headers=headers)
    status, body, reason = answered(run)
    rule = "Unspecified" if details.startswith("Unspecified") else "IncorrectMessage"
    assert errors(run) == [{"Name": name, "Type": type_, "ValidationRule": rule, "Details": details,
                            "Action": "prevent"}]  # fmt: skip
    public = details.replace("Value of the path parameter id does not", "The value of the path parameter id does not")
    public = public.replace("Value of the header X-Tenant does not conform to the definition. 'Big'",
                            "The value of the header X-Tenant does not conform to the definition. 'Big'")
    public = public.replace("cannot be parsed", "couldn't be parsed")
    assert (status, body) == (400, {"statusCode": 400, "message": public})
    assert reason == f"Bad request|{details}"


async def test_validate_parameters_detect_and_overrides() -> None:
    inner = ('<query unspecified-parameter-action="detect"><parameter name="trace" action="ignore" /></query>'
             '<headers specified-parameter-action="ignore" />')  # fmt: skip
    run = await inbound(PARAMS.format(s="prevent", u="prevent", inner=inner), f"{BASE}/orders/4?debug=1&trace=1",
                        headers=[("X-Tenant", "NOT-LOWER")])
    assert run.response is None and run.forward  # detect records, ignore skips
    assert [(e["Name"], e["Action"]) for e in errors(run)] == [("debug", "detect")]


async def test_validate_parameters_without_a_matching_operation() -> None:
    run = await inbound(PARAMS.format(s="prevent", u="ignore", inner=""), f"{BASE}/customers/1")
    status, body, _ = answered(run)
    assert (status, body["message"]) == (400, "The request could not be processed due to an internal error. "
                                              "Contact the API owner.")  # fmt: skip
    assert errors(run)[0]["Type"] == "ApiSchema"


async def test_literal_path_wins_over_template() -> None:
    run = await inbound('<mock-response status-code="200" />', f"{BASE}/orders/mine")
    assert run.response is not None and json.loads(run.response.body.content)[1]["sku"] == "ink"  # type: ignore[union-attr]


HEADERS = ('<validate-headers specified-header-action="{s}" unspecified-header-action="{u}" '
           'errors-variable-name="errs"><header name="X-Debug-Trace" action="detect" />'
           "</validate-headers>")  # fmt: skip


@pytest.mark.parametrize(("headers", "expected", "prevented"), [
    ([("X-Rate", "10"), ("Content-Type", "application/json"), ("Date", "today")], [], False),
    ([("X-Rate", "many")], [("X-Rate", "IncorrectMessage", "Value of the header X-Rate cannot be parsed according "
                             "to the definition. invalid literal for int() with base 10: 'many'")], True),
    ([("X-Rate", "1"), ("X-Rate", "2")], [("X-Rate", "IncorrectMessage", "Response cannot contain multiple values "
                                           "for the header X-Rate.")], True),
    ([("X-Powered-By", "php")], [("X-Powered-By", "Unspecified", "Unspecified header X-Powered-By is not allowed.")],
     True),
    ([("X-Debug-Trace", "1")], [("X-Debug-Trace", "Unspecified", "Unspecified header X-Debug-Trace is not allowed.")],
     False),
])  # fmt: skip
async def test_validate_headers(headers: list[tuple[str, str]], expected: list[tuple[str, str, str]],
                                prevented: bool) -> None:  # fmt: skip
    run = await outbound(HEADERS.format(s="prevent", u="prevent"), f"{BASE}/orders/4", 200, headers, b"{}",
                         headers=[("X-Tenant", "c")])  # fmt: skip
    assert [(e["Name"], e["ValidationRule"], e["Details"]) for e in errors(run)] == expected
    if prevented:
        status, body, reason = answered(run)
        assert (status, body["message"]) == (502, "The request could not be processed due to an internal error. "
                                                  "Contact the API owner.")  # fmt: skip
        assert reason.startswith("Response not allowed|")
    else:
        assert run.response is None


STATUS = ('<validate-status-code unspecified-status-code-action="prevent" errors-variable-name="errs">'
          '<status-code code="418" action="detect" /></validate-status-code>')  # fmt: skip


@pytest.mark.parametrize(("status", "prevented", "detected"), [
    (200, False, False), (404, False, False), (503, False, False), (500, False, False), (400, True, True),
    (418, False, True),
])  # fmt: skip
async def test_validate_status_code(status: int, prevented: bool, detected: bool) -> None:
    run = await outbound(STATUS, f"{BASE}/orders/4", status, [], b"", headers=[("X-Tenant", "c")])
    assert (run.response is not None) is prevented
    assert [e["Details"] for e in errors(run)] == ([f"Response status code {status} is not allowed."] if detected
                                                   else [])  # fmt: skip
    if prevented:
        assert answered(run)[:2] == (502, {"statusCode": 502, "message": "The request could not be processed due to "
                                           "an internal error. Contact the API owner."})  # fmt: skip


CONTENT = ('<validate-content unspecified-content-type-action="prevent" max-size="{max}" size-exceeded-action="prevent"'
           ' errors-variable-name="errs"><content type="application/json" validate-as="json" action="prevent" {extra}/>'
           "</validate-content>")  # fmt: skip


@pytest.mark.parametrize(("body", "ctype", "extra", "rule", "details"), [
    (b'{"sku": "pen", "qty": 2}', "application/json", "", None, None),
    (b'{"sku": "pen", "qty": 0}', "application/json", "", "IncorrectMessage",
     "Body of the request does not conform to the definition NewOrder, which is associated with the content type "
     "application/json. 0 is less than the minimum of 1 Path: qty"),
    (b'{"sku": "pen"}', "application/json", "", "IncorrectMessage",
     "Body of the request does not conform to the definition NewOrder, which is associated with the content type "
     "application/json. 'qty' is a required property"),
    (b'{"sku": "pen", "qty": 1, "gift": true}', "application/json", 'allow-additional-properties="false"',
     "IncorrectMessage", "Body of the request does not conform to the definition NewOrder, which is associated with "
     "the content type application/json. Additional properties are not allowed ('gift' was unexpected)"),
    (b'{"sku": "pen", "qty": 1}', "application/json", 'schema-id="Order"', "IncorrectMessage",
     "Body of the request does not conform to the definition Order, which is associated with the content type "
     "application/json. 'id' is a required property"),
    (b"sku=pen", "application/x-www-form-urlencoded", "", "Unspecified",
     "Unspecified content type application/x-www-form-urlencoded is not allowed."),
    (b'{"sku": "a-very-long-sku-indeed", "qty": 1}', "application/json", "", "SizeLimit",
     "Request's body is 43 bytes long and it exceeds the configured limit of 40 bytes."),
])  # fmt: skip
async def test_validate_content_request(body: bytes, ctype: str, extra: str, rule: str | None,
                                        details: str | None) -> None:  # fmt: skip
    run = await inbound(CONTENT.format(max=40, extra=extra), f"{BASE}/orders", method="POST", body=body,
                        headers=[("Content-Type", ctype)])
    if rule is None:
        assert run.response is None and errors(run) == []
        return
    assert [(e["ValidationRule"], e["Details"]) for e in errors(run)] == [(rule, details)]
    status, answer, reason = answered(run)
    public = (details or "").replace("exceeds the configured limit", "exceeds the limit")
    assert (status, answer) == (400, {"statusCode": 400, "message": public})
    assert reason == f"Bad request|{details}"


async def test_validate_content_response_and_content_type_map() -> None:
    xml = ('<validate-content unspecified-content-type-action="detect" max-size="1000" size-exceeded-action="detect" '
           'errors-variable-name="errs"><content-type-map missing-content-type-value="application/json" />'
           '<content type="application/json" validate-as="json" action="prevent" /></validate-content>')
    run = await outbound(xml, f"{BASE}/orders", 201, [], b'{"sku": "pen", "qty": 1}', method="POST")
    status, body, reason = answered(run)
    assert status == 502 and body["message"].startswith("The request could not be processed")
    assert errors(run)[0]["Details"].startswith("Body of the response does not conform to the definition Order")
    assert reason.startswith("Response not allowed|Body of the response")


@pytest.mark.parametrize(("attrs", "status", "ctype", "body"), [
    ("", 200, "application/json", {"id": 42, "sku": "pen", "qty": 2}),
    ('status-code="404"', 404, None, None),
])  # fmt: skip
async def test_mock_response_uses_the_documents_examples(attrs: str, status: int, ctype: str | None,
                                                         body: Any) -> None:  # fmt: skip
    run = await inbound(f"<mock-response {attrs} />", f"{BASE}/orders/4")
    assert run.response is not None and run.response.status_code == status and not run.forward
    assert run.response.headers.get("Content-Type") == ctype
    content = run.response.body.content  # type: ignore[union-attr]
    assert (json.loads(content) if body is not None else content) == (body if body is not None else b"")


async def test_mock_response_named_example_and_content_type() -> None:
    run = await inbound('<mock-response status-code="201" content-type="application/xml" />', f"{BASE}/orders",
                        method="POST")  # fmt: skip
    assert run.response is not None and run.response.body is not None
    assert (run.response.status_code, run.response.body.content) == (201, b"<order><id>7</id></order>")
    run = await inbound('<mock-response status-code="201" />', f"{BASE}/orders", method="POST")
    assert json.loads(run.response.body.content) == {"id": 7, "sku": "pen", "qty": 1}  # type: ignore[union-attr]


async def test_mock_response_without_definition_is_empty() -> None:
    run = make_run(policies(inbound='<mock-response status-code="202" content-type="text/plain" />'))
    await engine.run_inbound(run)
    assert run.response is not None and (run.response.status_code, run.response.body.content) == (202, b"")  # type: ignore[union-attr]
