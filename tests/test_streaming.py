"""streaming.py: which answers stream, and the tap that counts them as they pass (mitmproxy test flows)."""

from __future__ import annotations

from apim_mi import streaming
from mitmproxy.test import tflow


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
