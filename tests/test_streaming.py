"""streaming.py: which answers stream, and the tap that counts them as they pass (mitmproxy test flows)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from ai_helpers import entries, trace_of
from apim_mi import streaming
from mitmproxy.test import tflow
from proxy import start_mitmdump, write_rules


def _flow(content_type: str) -> object:
    f = tflow.tflow(resp=True)
    f.response.headers["content-type"] = content_type
    return f


def test_event_streams_stream_even_without_a_rule() -> None:
    sse = _flow("text/event-stream; charset=utf-8")
    streaming.stream_unmatched(sse)
    assert sse.response.stream is True
    json_flow = _flow("application/json")
    streaming.stream_unmatched(json_flow)
    assert not json_flow.response.stream
    chosen = _flow("text/event-stream")
    chosen.response.stream = len  # another addon's choice stands
    streaming.stream_unmatched(chosen)
    assert chosen.response.stream is len


def test_tap_passes_chunks_unchanged_counts_them_and_keeps_a_bounded_copy() -> None:
    tap = streaming.Tap(sse=True, keep=True)
    chunks = [b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n', b'data: {"choices": [], "usage": ',
              b'{"prompt_tokens": 3, "completion_tokens": 1}}\n\ndata: [DONE]\n\n']  # fmt: skip
    assert [tap(c) for c in chunks] == chunks
    assert tap(b"") == b""
    summary = tap.summary()
    assert summary["bytes"] == sum(map(len, chunks)) and summary["chunks"] == 3 and summary["events"] == 2
    assert tap.body == b"".join(chunks) and tap.sse is not None and tap.sse.usage.total_tokens == 4
    big = streaming.Tap(sse=False, keep=True)
    for _ in range(3):
        big(b"x" * (streaming.KEEP_LIMIT // 2))
    assert big.body is None and big.size == 3 * (streaming.KEEP_LIMIT // 2)  # too large to keep: not kept at all


def test_addon_responseheaders_needs_no_coroutine_for_unmatched_flows() -> None:
    from apim_mi.addon import ApimMi

    addon = ApimMi()
    sse, plain = _flow("text/event-stream"), _flow("text/html")
    assert addon.responseheaders(sse) is None and sse.response.stream is True
    assert addon.responseheaders(plain) is None and not plain.response.stream


class _Chunked(BaseHTTPRequestHandler):
    """GET /big: 64 KiB of JSON-ish bytes, chunked (no Content-Length); GET /events: an event stream, 3 events
    0.3 s apart. No authentication: the test is about what reaches the client, and when."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        events = self.path.startswith("/events")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if events else "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(3 if events else 64):
            if events and i:
                time.sleep(0.3)
            self._chunk(b'data: {"i": %d}\n\n' % i if events else b"x" * 1024)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def chunked() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chunked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_late_streaming_and_unmatched_event_streams_through_mitmdump(
    tmp_path_factory: pytest.TempPathFactory, emulator: Any, chunked: str
) -> None:
    """With stream_large_bodies=1k a chunked answer starts streaming once it outgrows 1 KiB, after responseheaders:
    outbound can no longer act, and the trace and comment say so (no claim that it ran); an event stream that no
    rule matches still arrives event by event."""
    tmp = tmp_path_factory.mktemp("late")
    rules = write_rules(tmp, """
        rules:
          - name: big
            match: {host: 127.0.0.1, path: /big}
            policy: '<policies><inbound><authentication-managed-identity resource="https://management.azure.com/" />
              </inbound><backend><forward-request /></backend><outbound>
              <set-header name="x-late" exists-action="override"><value>set</value></set-header>
              </outbound><on-error /></policies>'
    """)
    md = start_mitmdump(["--mode", f"reverse:{chunked}", "--set", f"mi_rules={rules}", "--set",
                         "mi_credential=managed-identity", "--set", "stream_large_bodies=1k"],
                        env=emulator.env("imds"), confdir=tmp / "confdir")  # fmt: skip
    try:
        resp = httpx.get(f"{md.url}/big", headers={"Ocp-Apim-Trace": "true"}, timeout=20, trust_env=False)
        assert resp.status_code == 200 and len(resp.content) == 64 * 1024 and "x-late" not in resp.headers
        trace = trace_of(md, resp)
        warnings = [d["message"] for d in entries(trace, "apim-mi")]
        assert any("outgrew stream_large_bodies" in w for w in warnings), warnings
        assert entries(trace, "transfer-response")[-1]["note"].startswith("streamed by mitmproxy")
        arrivals = []
        with httpx.stream("GET", f"{md.url}/events", timeout=20, trust_env=False) as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic())
        assert len(arrivals) == 3 and arrivals[2] - arrivals[0] >= 0.5  # as sent, not all at the end
    finally:
        md.stop()
