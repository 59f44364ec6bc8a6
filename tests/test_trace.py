"""The trace recorder, its canonical order (flow-file round trip), the portal rendering, the content view and the
trace protocol's endpoint/store (unit level; tests/test_trace_e2e.py runs the same through a real mitmdump)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from apim_mi.contentview import ApimTraceContentview, register_contentview
from apim_mi.inspector import HIDDEN, Inspector, TraceStore, request_data
from apim_mi.trace import (
    METADATA_KEY,
    REDACTED,
    Trace,
    canonical,
    format_elapsed,
    format_timestamp,
    outline,
    render,
)
from mitmproxy import contentviews, io
from mitmproxy.io import tnetstring
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow


def _sample(clock_step: float = 0.000273) -> Trace:
    now = [0.0]

    def clock() -> float:
        now[0] += clock_step
        return now[0]

    trace = Trace(trace_id="0123456789abcdef0123456789abcdef", started=1_700_000_000.0, clock=clock)
    trace.secrets.add("eyJ.secret.sig")
    trace.add("inbound", "api-inspector", {"request": {"method": "GET", "url": "http://h/api",
                                                       "headers": [{"name": "Host", "value": "h"}]}})
    trace.add("inbound", "authentication-managed-identity", {
        "message": "Obtaining managed identity token using clientId:X AAD Authority:https://login.windows.net/t for "
                   "api://a audience succeeded.",
        "errorResponse": None, "cached": False, "claims": {"exp": 1, "tid": "t", "oid": "o", "appid": "X", "aud": "a"},
    })  # fmt: skip
    trace.add("inbound", "authentication-managed-identity", {"message": "Managed identity token is added to "
                                                                        "Authorization header."})
    trace.add("backend", "forward-request", {"request": {"headers": [{"value": "Bearer eyJ.secret.sig",
                                                                      "name": "Authorization"}]}})
    trace.add("outbound", "transfer-response", {"message": "Response has been sent to the caller in full"})
    return trace


def test_formats_are_apims() -> None:
    assert format_timestamp(1683115384.6899436) == "2023-05-03T12:03:04.6899436Z"
    assert format_elapsed(0.2983315) == "00:00:00.2983315"
    assert format_elapsed(3723.5) == "01:02:03.5000000"


def test_trace_since_counts_from_receipt() -> None:
    received = time.time() - 0.25
    trace = Trace.since("id", received)
    trace.add("inbound", "api-inspector", {})
    assert trace.started == received
    assert 0.25 <= trace.elapsed() < 5
    assert trace.entries["inbound"][0]["elapsed"] >= "00:00:00.2500000"
    assert Trace.since("id", None).elapsed() < 1  # no receipt time: starts now


def test_secrets_never_reach_entries_and_shape() -> None:
    doc = _sample().to_json()
    text = json.dumps(doc)
    assert "eyJ.secret.sig" not in text and REDACTED in text
    assert list(doc) == ["traceId", "traceEntries"]
    assert list(doc["traceEntries"]) == ["inbound", "backend", "outbound"]  # empty on-error left out
    assert list(doc["traceEntries"]["inbound"][1]) == ["source", "timestamp", "elapsed", "data"]
    claims = doc["traceEntries"]["inbound"][1]["data"]["claims"]
    assert list(claims) == ["aud", "appid", "oid", "tid", "exp"]


def _reversed(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _reversed(data[k]) for k in reversed(list(data))}
    if isinstance(data, list):
        return [_reversed(v) for v in data]
    return data


def test_render_is_portal_style_and_order_independent() -> None:
    doc = _sample().to_json()
    text = render(doc)
    assert text.startswith("traceId: 0123456789abcdef0123456789abcdef\n\nInbound\n    api-inspector (0.273 ms)\n")
    assert "    authentication-managed-identity (0.273 ms)\n    {\n        \"message\": \"Managed identity" in text
    assert re.search(r"^Backend\n    forward-request \(0\.273 ms\)$", text, re.M)
    assert render(_reversed(doc)) == text
    assert canonical(_reversed(doc)) == doc
    assert list(canonical(_reversed(doc))["traceEntries"]["inbound"][0]) == ["source", "timestamp", "elapsed", "data"]


def test_render_on_error_section_and_bare_string_data() -> None:
    doc = {"traceId": "x", "traceEntries": {
        "on-error": [{"source": "authentication-managed-identity", "elapsed": "00:00:00.0010000", "data": {
            "message": "failed", "reason": "AADSTS500011"}}],
        "inbound": [{"source": "cors", "elapsed": "bogus", "data": "Origin header was missing."}],
    }}  # fmt: skip
    text = render(doc)
    assert text.index("Inbound") < text.index("On error")
    assert "    cors (0.000 ms)\n    Origin header was missing.\n" in text


def test_round_trip_through_a_flow_file(tmp_path: Path) -> None:
    """tnetstring (mitmproxy's flow file format) reads dicts back in reverse order; rendering does not care."""
    doc = _sample().to_json()
    back = tnetstring.loads(tnetstring.dumps(doc))
    assert list(back) == list(reversed(list(doc)))  # the problem this guards against is real
    flow = tflow.tflow(resp=True)
    flow.metadata[METADATA_KEY] = {"summary": {"rule": "r", "outcome": "token added to Authorization"}, "trace": doc}
    path = tmp_path / "flows.mitm"
    with path.open("wb") as f:
        io.FlowWriter(f).add(flow)
    with path.open("rb") as f:
        (read,) = list(io.FlowReader(f).stream())
    assert render(read.metadata[METADATA_KEY]["trace"]) == render(doc)
    view = ApimTraceContentview()
    meta = contentviews.Metadata(flow=read, http_message=read.response)
    assert view.prettify(b"", meta) == view.prettify(b"", contentviews.Metadata(flow=flow, http_message=flow.response))


def test_content_view_is_the_auto_view_for_traced_responses_only() -> None:
    register_contentview()
    with taddons.context():
        _check_content_view()


def _check_content_view() -> None:
    flow = tflow.tflow(resp=True)
    flow.metadata[METADATA_KEY] = {"summary": {"rule": "orders", "outcome": "token added to Authorization",
                                               "warnings": ["Audience near miss: …"]}, "trace": _sample().to_json()}
    result = contentviews.prettify_message(flow.response, flow)
    assert result.view_name == "APIM trace"
    head = "apim-mi rule: orders\noutcome: token added to Authorization; answered 200 OK\nwarning: Audience"
    assert result.text.startswith(head)
    assert "Managed identity token is added to Authorization header." in result.text
    assert contentviews.prettify_message(flow.request, flow).view_name != "APIM trace"
    explicit = contentviews.prettify_message(flow.request, flow, view_name="apim trace")
    assert explicit.view_name == "APIM trace"  # selectable by (case-insensitive) name, as mitmweb's dropdown does
    plain = tflow.tflow(resp=True)
    assert contentviews.prettify_message(plain.response, plain).view_name != "APIM trace"


# -- the trace protocol's endpoint and store ----------------------------------------------------------------------


def _endpoint_flow(url: str, method: str = "GET", peer: str = "127.0.0.1", body: bytes = b"") -> Any:
    flow = tflow.tflow()
    flow.request.method = method
    flow.request.url = url
    flow.request.content = body
    flow.client_conn.peername = (peer, 50000)
    return flow


def test_store_is_bounded() -> None:
    store = TraceStore(keep=3)
    for i in range(5):
        store.put(str(i), {"traceId": str(i)})
    assert store.ids() == ["2", "3", "4"] and store.get("0") is None and len(store) == 3


def test_endpoint_serves_loopback_clients_only() -> None:
    insp = Inspector()
    insp.store.put("abc", {"traceId": "abc", "traceEntries": {}})
    ok = _endpoint_flow("http://apim-mi.trace/traces/abc")
    assert insp.answer(ok) and ok.response.status_code == 200 and ok.response.json()["traceId"] == "abc"
    for peer in ("10.1.2.3", "192.168.0.7", "::ffff:10.0.0.1", "2001:db8::1"):
        far = _endpoint_flow("http://apim-mi.trace/traces/abc", peer=peer)
        assert insp.answer(far) and far.response.status_code == 403
        assert b"abc" not in far.response.content
    listed = _endpoint_flow("http://apim-mi.trace/listTrace", "POST", body=b'{"traceId": "abc"}')
    assert insp.answer(listed) and list(listed.response.json()) == ["serviceName", "traceId", "traceEntries"]
    for url, method in (("http://apim-mi.trace/traces/zzz", "GET"), ("http://apim-mi.trace/other", "DELETE")):
        missing = _endpoint_flow(url, method)
        assert insp.answer(missing) and missing.response.status_code == 404
    bad = _endpoint_flow("http://apim-mi.trace/listTrace", "POST", body=b"not json")
    assert insp.answer(bad) and bad.response.status_code == 404
    assert not insp.answer(_endpoint_flow("http://orders.contoso.test/apim-mi.trace/traces/abc"))  # not in regular mode


@pytest.mark.parametrize(("host", "endpoint"), [
    ("apim-mi.trace", True), ("APIM-MI.Trace", True), ("apim-mi.trace.", True), ("Apim-Mi.Trace..", True),
    ("apim-mi.tracer", False), ("xapim-mi.trace", False), ("api.contoso.test", False), ("127.0.0.1", False),
])  # fmt: skip
def test_the_endpoint_host_is_matched_as_dns_matches_it(host: str, endpoint: bool) -> None:
    """Any case, trailing dots ignored (the cheap first-letter test in front of it changes no answer)."""
    flow = _endpoint_flow("http://apim-mi.trace/traces/abc")
    flow.request.host = host
    assert Inspector.is_endpoint(flow) is endpoint


def test_reverse_mode_endpoint_and_location() -> None:
    insp = Inspector()
    insp.store.put("abc", {"traceId": "abc", "traceEntries": {}})
    flow = _endpoint_flow("http://backend.internal:8080/apim-mi.trace/traces/abc")
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://backend.internal:8080")
    flow.client_conn.sockname = ("127.0.0.1", 8443)
    assert insp.answer(flow) and flow.response.status_code == 200
    assert insp.location(flow, "abc") == "https://127.0.0.1:8443/apim-mi.trace/traces/abc"  # the client used TLS
    flow.client_conn.timestamp_tls_setup = None
    assert insp.location(flow, "abc") == "http://127.0.0.1:8443/apim-mi.trace/traces/abc"
    assert insp.location(tflow.tflow(), "abc") == "http://apim-mi.trace/traces/abc"


@pytest.mark.parametrize(
    ("headers", "expect"),
    [
        ({"Ocp-Apim-Trace": "true"}, {"Ocp-Apim-Trace-Location": "http://apim-mi.trace/traces/t1"}),
        ({"Ocp-Apim-Trace": "false"}, {}),
        ({"Apim-Debug-Authorization": "p=tracing&aid=a&ex=29990101000000&sn=x"}, {"Apim-Trace-Id": "t1"}),
        ({"Apim-Debug-Authorization": "opaque"}, {"Apim-Trace-Id": "t1"}),
        ({"Apim-Debug-Authorization": "p=tracing&ex=20200101000000"},
         {"Apim-Debug-Authorization-Expired": "Debug credentials expired at 2020-01-01T00:00:00Z (apim-mi: the "
                                              "token's ex= field)"}),
        ({}, {}),
    ],
)
def test_trace_request_headers_are_consumed_and_answered(headers: dict[str, str], expect: dict[str, str]) -> None:
    insp = Inspector()
    flow = tflow.tflow(resp=True)
    for k, v in headers.items():
        flow.request.headers[k] = v
    insp.begin(flow)
    assert "Ocp-Apim-Trace" not in flow.request.headers and "Apim-Debug-Authorization" not in flow.request.headers
    insp.finish(flow, {"traceId": "t1", "traceEntries": {}})
    got = {k: v for k, v in flow.response.headers.items() if k.startswith(("Ocp-Apim", "Apim"))}
    assert got == expect
    assert (insp.store.get("t1") is not None) == ("Apim-Trace-Id" in expect or "Ocp-Apim-Trace-Location" in expect)


def test_request_entry_hides_client_credentials() -> None:
    flow = tflow.tflow()
    flow.request.headers["Authorization"] = "Bearer client-secret"
    flow.request.headers["Ocp-Apim-Subscription-Key"] = "key"
    flow.request.headers["X-Other"] = "shown"
    headers = {h["name"]: h["value"] for h in request_data(flow)["request"]["headers"]}
    assert headers["Authorization"] == HIDDEN and headers["Ocp-Apim-Subscription-Key"] == HIDDEN
    assert headers["X-Other"] == "shown"


def test_outline_one_line_per_step() -> None:
    lines = outline(_reversed(_sample().to_json())).splitlines()
    assert len(lines) == 5
    assert re.fullmatch(r"inbound   api-inspector\s+0\.273 ms  GET http://h/api", lines[0])
    assert lines[2].endswith("0.273 ms  Managed identity token is added to Authorization header.")
    assert lines[4].startswith("outbound  transfer-response") and lines[4].endswith("sent to the caller in full")
    assert outline({"traceId": "x", "traceEntries": {}}) == ""


@pytest.mark.parametrize(
    ("host", "port", "host_header", "expected"),
    [
        ("::1", 8443, "[::1]:8443", "https://[::1]:8443/path"),
        ("::1", 443, None, "https://[::1]/path"),
        ("api.test", 443, "api.test", "https://api.test/path"),
        ("10.0.0.1", 8443, "api.test:8443", "https://api.test:8443/path"),
    ],
)
def test_urls_in_traces_bracket_ipv6_hosts(host: str, port: int, host_header: str | None, expected: str) -> None:
    """mitmproxy's ``pretty_url``/``url`` write ``https://::1:8443/path``, which no URL parser reads back; names and
    IPv4 addresses come out exactly as mitmproxy's ``pretty_url``."""
    from apim_mi import flowcontext

    flow = tflow.tflow()
    flow.request.scheme, flow.request.host, flow.request.port = "https", host, port
    if host_header is None:
        flow.request.headers.pop("host", None)
    else:
        flow.request.headers["host"] = host_header
    assert flowcontext.pretty_url(flow.request) == expected
    assert request_data(flow)["request"]["url"] == expected
    if ":" not in host:
        assert flow.request.pretty_url == expected
