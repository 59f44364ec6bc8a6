"""The APIM trace through a real mitmdump: complete entries, --flow-detail 3, flow files, APIM's trace protocol,
backend diagnostics, and no token anywhere (the emulator's issued tokens are scanned for)."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apim_mi.trace import METADATA_KEY, canonical, render
from conftest import DEMO_AUDIENCE
from proxy import Mitmdump, run_mitmdump_expecting_exit, start_mitmdump

GUID = DEMO_AUDIENCE.removeprefix("api://")
MI_ADDED = "Managed identity token is added to Authorization header."


def _rules(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Any]:
    started: list[Mitmdump] = []

    def make(emu: Any, rules: Path, *extra: str) -> Mitmdump:
        md = start_mitmdump(
            ["--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity", *extra],
            env=emu.env("imds"), confdir=tmp_path / "confdir",
        )  # fmt: skip
        started.append(md)
        return md

    yield make
    for md in started:
        md.stop()


def _client(md: Mitmdump) -> httpx.Client:
    return httpx.Client(proxy=md.url, trust_env=False, timeout=20)


def _read_flows(path: Path) -> list[Any]:
    from mitmproxy import io

    with path.open("rb") as f:
        return list(io.FlowReader(f).stream())


def leak_hits(emu: Any, *blobs: bytes) -> int:
    """How many (token or token signature, blob) pairs match: every token the emulator issued is looked for."""
    tokens = emu.stats()["issued_tokens"]
    assert tokens, "the emulator issued no token: the scan would prove nothing"
    needles = [t.encode() for t in tokens] + [t.rsplit(".", 1)[-1].encode() for t in tokens]
    return sum(blob.count(n) for n in needles for blob in blobs)


def test_trace_view_flow_file_round_trip_and_no_token(tmp_path: Path, emu: Any, backend: Any, proxy: Any) -> None:
    """One traced request: the full APIM-shaped trace, shown by mitmdump --flow-detail 3, served from memory through
    APIM's Ocp-Apim-Trace protocol, and saved with -w: both render identically, and no token is anywhere."""
    rules = _rules(tmp_path, f"""
        rules:
          - name: demo api
            match: {{host: "127.0.0.1:{backend.port}", path: /api}}
            resource: "{DEMO_AUDIENCE}"
    """)
    flows = tmp_path / "flows.mitm"
    md = proxy(emu, rules, "-w", str(flows), "--flow-detail", "3")
    with _client(md) as client:
        r = client.get(f"{backend.url}/api/orders", headers={"Ocp-Apim-Trace": "true"})
        assert r.status_code == 200, r.text
        location = r.headers["Ocp-Apim-Trace-Location"]
        trace_id = location.rsplit("/", 1)[-1]
        assert location == f"http://apim-mi.trace/traces/{trace_id}"
        # APIM consumes the header: the backend never saw it.
        assert "ocp-apim-trace" not in [h.lower() for h in backend.stats()["requests"][-1]["headers"]]
        served = client.get(location)
        assert served.status_code == 200
        memory = served.json()
        listed = client.post("http://apim-mi.trace/listTrace", json={"traceId": trace_id}).json()
        assert listed["serviceName"] == "apim-mi" and listed["traceEntries"] == memory["traceEntries"]
        assert trace_id in client.get("http://apim-mi.trace/traces").json()["traces"]
        assert client.get("http://apim-mi.trace/traces/nope").status_code == 404
    md.wait_for(r"apim-mi: GET http://127\.0\.0\.1:\d+/api/orders \[demo api\] .*token added to Authorization")
    md.wait_for(re.escape(MI_ADDED))  # the content view, rendered by mitmdump --flow-detail 3
    md.stop()
    # One log line for the injection (the trace-endpoint requests match no rule and log nothing).
    assert len([line for line in md.output if re.search(r"\] apim-mi: (GET|POST) ", line)]) == 1

    # The trace is APIM's shape, timed for real.
    assert memory["traceId"] == trace_id
    entries = memory["traceEntries"]
    assert list(entries) == ["inbound", "backend", "outbound"]
    sources = [(s, e["source"]) for s in entries for e in entries[s]]
    assert sources == [
        ("inbound", "api-inspector"), ("inbound", "api-inspector"),
        ("inbound", "authentication-managed-identity"), ("inbound", "authentication-managed-identity"),
        ("backend", "forward-request"), ("backend", "forward-request"), ("outbound", "transfer-response"),
    ]  # fmt: skip
    inbound = entries["inbound"]
    assert inbound[0]["data"]["request"]["url"] == f"{backend.url}/api/orders"
    assert inbound[1]["data"]["configuration"]["api"]["to"]["port"] == backend.port
    assert inbound[3]["data"] == {"message": MI_ADDED}
    assert inbound[2]["data"]["claims"]["aud"] == DEMO_AUDIENCE
    forwarded = {h["name"]: h["value"] for h in entries["backend"][0]["data"]["request"]["headers"]}
    assert forwarded["Authorization"] == "Bearer [token redacted]"
    assert entries["backend"][1]["data"]["response"]["status"] == {"code": 200, "reason": "OK"}
    assert entries["outbound"][0]["data"] == {"message": "Response has been sent to the caller in full"}
    all_entries = [e for s in entries.values() for e in s]
    stamps = [e["timestamp"] for e in all_entries]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", t) for t in stamps)
    elapsed = [e["elapsed"] for e in all_entries]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{7}", t) for t in elapsed)
    assert elapsed == sorted(elapsed) and elapsed[0] != elapsed[-1]

    # Round trip: the flow file's trace (tnetstring reverses dict order) renders exactly like the one from memory.
    saved = [f for f in _read_flows(flows) if METADATA_KEY in f.metadata]
    assert len(saved) == 1
    flow = saved[0]
    from_file = flow.metadata[METADATA_KEY]["trace"]
    assert list(from_file) != list(memory) or list(from_file["traceEntries"]) != list(memory["traceEntries"]), (
        "the flow file kept the dict order; the round trip test would not test the canonical order"
    )
    assert canonical(from_file) == memory
    assert render(from_file) == render(memory)
    assert flow.request.headers["Authorization"] == "Bearer [token redacted]"
    summary = f"apim-mi [demo api] system-assigned aud={DEMO_AUDIENCE}: token added to Authorization"
    assert flow.comment.startswith(summary)
    assert ", answered 200 (" in flow.comment

    # Secrets: zero hits in the saved flows and in everything mitmdump printed at --flow-detail 3.
    assert leak_hits(emu, md.text().encode(), flows.read_bytes()) == 0


def test_redaction_opt_out_keeps_the_token_in_the_flow_only(
    tmp_path: Path, emu: Any, backend: Any, proxy: Any
) -> None:
    """mi_redact=false is an explicit opt-in: the flow keeps the token, the trace still never shows it."""
    rules = _rules(tmp_path, f"""
        rules:
          - match: {{host: "127.0.0.1:{backend.port}"}}
            resource: "{DEMO_AUDIENCE}"
    """)
    flows = tmp_path / "flows.mitm"
    md = proxy(emu, rules, "-w", str(flows), "--set", "mi_redact=false")
    with _client(md) as client:
        assert client.get(f"{backend.url}/api/x").status_code == 200
    md.stop()
    (flow,) = [f for f in _read_flows(flows) if METADATA_KEY in f.metadata]
    token = flow.request.headers["Authorization"].removeprefix("Bearer ")
    assert token in emu.stats()["issued_tokens"]
    assert token not in json.dumps(flow.metadata[METADATA_KEY]) and token not in flow.comment
    assert token.rsplit(".", 1)[-1] not in md.text()


def test_debug_authorization_and_failed_flow_trace(tmp_path: Path, emu: Any, backend: Any, proxy: Any) -> None:
    """Apim-Debug-Authorization → Apim-Trace-Id, also when the policy fails closed (that is when a trace matters);
    an expired debug token gets Apim-Debug-Authorization-Expired and no trace."""
    emu.configure(resources=[DEMO_AUDIENCE])
    rules = _rules(tmp_path, f"""
        rules:
          - name: typo
            match: {{host: "127.0.0.1:{backend.port}", path: /typo}}
            resource: "api://does-not-exist"
          - name: good
            match: {{host: "127.0.0.1:{backend.port}"}}
            resource: "{DEMO_AUDIENCE}"
    """)
    flows = tmp_path / "flows.mitm"
    md = proxy(emu, rules, "-w", str(flows))
    debug = "p=tracing&aid=orders&ex=29991231235959&sn=c2lnbmF0dXJl"
    with _client(md) as client:
        r = client.get(f"{backend.url}/typo", headers={"Apim-Debug-Authorization": debug})
        assert r.status_code == 500 and r.json()["message"] == "Internal server error"
        trace = client.get(f"http://apim-mi.trace/traces/{r.headers['Apim-Trace-Id']}").json()
        failure = trace["traceEntries"]["on-error"][0]
        assert failure["source"] == "authentication-managed-identity"
        assert "AADSTS500011" in json.dumps(trace)
        expired = client.get(f"{backend.url}/ok", headers={"Apim-Debug-Authorization": "p=tracing&ex=20200101000000"})
        assert expired.status_code == 200 and "Apim-Trace-Id" not in expired.headers
        assert "2020-01-01T00:00:00Z" in expired.headers["Apim-Debug-Authorization-Expired"]
    md.wait_for(r"\[typo\] failed closed: .*AADSTS500011")
    md.stop()
    failed = next(f for f in _read_flows(flows) if f.comment.startswith("apim-mi [typo]"))
    assert failed.marked == ":x:" and "failed" in failed.comment
    assert debug not in flows.read_bytes().decode("latin-1")  # the debug credential was consumed, never saved
    assert leak_hits(emu, md.text().encode(), flows.read_bytes()) == 0


@pytest.mark.parametrize(
    ("resource", "difference"),
    [
        (GUID, "the 'api://' prefix"),
        ("https://orders.contoso.test/", "a trailing slash"),
        ("https://Orders.Contoso.test", "letter case"),
    ],
)
def test_audience_near_miss_named_from_the_backends_401(
    tmp_path: Path, emu: Any, backend: Any, proxy: Any, resource: str, difference: str
) -> None:
    rules = _rules(tmp_path, f"""
        rules:
          - name: near
            match: {{host: "127.0.0.1:{backend.port}"}}
            resource: "{resource}"
    """)
    flows = tmp_path / "flows.mitm"
    md = proxy(emu, rules, "-w", str(flows))
    with _client(md) as client:
        assert client.get(f"{backend.url}/api/x").status_code == 401
    md.wait_for(r"backend answered 401: Audience near miss")
    md.stop()
    (flow,) = [f for f in _read_flows(flows) if METADATA_KEY in f.metadata]
    warnings = flow.metadata[METADATA_KEY]["summary"]["warnings"]
    assert any(difference in w and f"'{resource}'" in w for w in warnings), warnings
    assert flow.marked == ":warning:"
    assert "warning: Audience near miss" in flow.comment
    assert "Audience near miss" in render(flow.metadata[METADATA_KEY]["trace"])


def test_client_authorization_overwritten_or_forwarded_with_ignore_error(
    tmp_path: Path, emu: Any, backend: Any, proxy: Any
) -> None:
    emu.configure(resources=[DEMO_AUDIENCE])
    rules = _rules(tmp_path, f"""
        rules:
          - name: strict
            match: {{host: "127.0.0.1:{backend.port}", path: /strict}}
            resource: "{DEMO_AUDIENCE}"
          - name: lenient
            match: {{host: "127.0.0.1:{backend.port}", path: /lenient}}
            resource: "api://not-known"
            ignore_error: true
    """)
    flows = tmp_path / "flows.mitm"
    md = proxy(emu, rules, "-w", str(flows))
    own = "Bearer the-clients-own-credential"
    with _client(md) as client:
        assert client.get(f"{backend.url}/strict", headers={"Authorization": own}).status_code == 200
        assert client.get(f"{backend.url}/lenient", headers={"Authorization": own}).status_code == 401
    md.stop()
    by_rule = {f.metadata[METADATA_KEY]["summary"]["rule"]: f for f in _read_flows(flows) if METADATA_KEY in f.metadata}
    strict = by_rule["strict"].metadata[METADATA_KEY]
    assert any("client's Authorization header was replaced" in w for w in strict["summary"]["warnings"])
    lenient = by_rule["lenient"].metadata[METADATA_KEY]
    assert any("client's own Authorization header reaches the backend" in w for w in lenient["summary"]["warnings"])
    # The client's credential never appears in a trace either.
    assert "the-clients-own-credential" not in json.dumps(strict) + json.dumps(lenient)


def test_client_id_expression_is_diagnosed(tmp_path: Path) -> None:
    """APIM takes client-id literally (it is not an expression attribute); apim-mi says so when it loads the policy,
    with the location, instead of failing every request with "Managed service identity is not enabled"."""
    policy = tmp_path / "policy.xml"
    policy.write_text(textwrap.dedent("""\
        <policies>
            <inbound>
                <authentication-managed-identity resource="https://orders.contoso.test"
                    client-id="@(context.Variables.GetValueOrDefault&lt;string&gt;(&quot;id&quot;))" />
            </inbound>
            <backend><forward-request /></backend>
            <outbound />
            <on-error />
        </policies>
    """))
    rules = _rules(tmp_path, f"""
        rules:
          - name: expr
            match: {{host: "127.0.0.1"}}
            policy: {policy.name}
    """)
    rc, out = run_mitmdump_expecting_exit(["--set", f"mi_rules={rules}"], confdir=tmp_path / "c")
    assert rc != 0
    assert f"{policy}: Error in element 'authentication-managed-identity' on line 3" in out
    assert "'client-id' attribute is invalid" in out and "expressions are not allowed" in out
    assert "Traceback" not in out


@pytest.fixture
def echo_backend() -> Iterator[str]:
    """A careless backend that echoes the request headers in its body (the research's §6 caveat)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"headers": dict(self.headers.items())}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_backend_echoing_the_token_is_flagged(tmp_path: Path, emu: Any, echo_backend: str, proxy: Any) -> None:
    """Redaction cannot reach a response body the client must receive: apim-mi says so instead of staying silent."""
    rules = _rules(tmp_path, f"""
        rules:
          - name: echo
            match: {{host: "{echo_backend.removeprefix('http://')}"}}
            resource: "{DEMO_AUDIENCE}"
    """)
    flows = tmp_path / "flows.mitm"
    md = proxy(emu, rules, "-w", str(flows))
    with _client(md) as client:
        r = client.get(f"{echo_backend}/echo")
    assert r.json()["headers"]["Authorization"].removeprefix("Bearer ") in emu.stats()["issued_tokens"]
    md.wait_for(r"\[echo\] backend answered 200: The backend's response body contains the managed identity token")
    md.stop()
    (flow,) = [f for f in _read_flows(flows) if METADATA_KEY in f.metadata]
    assert flow.marked == ":warning:" and "response body contains the managed identity token" in flow.comment
    assert flow.request.headers["Authorization"] == "Bearer [token redacted]"
    assert leak_hits(emu, md.text().encode(), json.dumps(flow.metadata[METADATA_KEY]).encode()) == 0
