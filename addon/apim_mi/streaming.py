"""Streamed responses: which answers go to the client chunk by chunk, and the tap that watches them pass.

mitmproxy buffers every body unless an addon sets ``flow.response.stream`` in ``responseheaders``. apim-mi streams
what a client is waiting for piece by piece: ``text/event-stream`` answers (an LLM's tokens, for matched and
unmatched flows alike) and, for matched flows, any answer whose policy says ``forward-request
buffer-response="false"``. Answers mitmproxy itself decides to stream (``stream_large_bodies``) stay streamed.

The tap passes every chunk through unchanged and only counts: bytes, chunks, when the first and last arrived. For
policies that act on the complete answer (token counts, metrics, the semantic cache) it also reads SSE events as they
pass and keeps a bounded copy of the body, so nothing ever holds a large body in memory.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .policy.ai.usage import SseUsage

if TYPE_CHECKING:
    from mitmproxy import http

    from .policy.engine import PolicyRun

EVENT_STREAM = "text/event-stream"
#: The most of a streamed body kept for the policies that store it (the semantic cache); larger ones are not kept.
KEEP_LIMIT = 1 << 20


def is_event_stream(response: http.Response) -> bool:
    """Content-Type ``text/event-stream``, as ``headers.get`` gives it (several values joined), read from the raw
    fields: asked for every matched answer."""
    joined = None
    for name, value in response.data.headers.fields:
        if len(name) == 12 and name.lower() == b"content-type":
            joined = value if joined is None else joined + b", " + value
    return joined is not None and joined.split(b";", 1)[0].strip().lower() == _EVENT_STREAM


_EVENT_STREAM = EVENT_STREAM.encode()


def should_stream(response: http.Response, run: PolicyRun | None) -> bool:
    """SSE always; anything else when the matched policy asked for an unbuffered answer."""
    return is_event_stream(response) or (run is not None and not run.buffer_response)


def stream_unmatched(flow: http.HTTPFlow) -> None:
    """A flow no rule matched still gets its event stream delivered as it comes (another addon's choice stands)."""
    if flow.response is not None and not flow.response.stream and is_event_stream(flow.response):
        flow.response.stream = True


class Tap:
    """``flow.response.stream``'s callable: every chunk unchanged, counted; SSE read when ``sse`` (for usage)."""

    def __init__(self, *, sse: bool, keep: bool) -> None:
        self.started = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.size = 0
        self.chunks = 0
        self.sse = SseUsage() if sse else None
        self._kept: list[bytes] | None = [] if keep else None

    def __call__(self, data: bytes) -> bytes:
        if data:
            now = time.monotonic()
            if self.first is None:
                self.first = now
            self.last = now
            self.size += len(data)
            self.chunks += 1
            if self.sse is not None:
                self.sse.feed(data)
            if self._kept is not None:
                if self.size <= KEEP_LIMIT:
                    self._kept.append(data)
                else:
                    self._kept = None
        elif self.sse is not None:
            self.sse.close()
        return data

    @property
    def body(self) -> bytes | None:
        """The streamed body, if it was kept and fit ``KEEP_LIMIT``."""
        return b"".join(self._kept) if self._kept is not None else None

    def summary(self) -> dict[str, Any]:
        """What the trace says about the transfer (never the content)."""
        end = self.last if self.last is not None else time.monotonic()
        out: dict[str, Any] = {"bytes": self.size, "chunks": self.chunks,
                               "durationMs": round((end - self.started) * 1000, 3)}  # fmt: skip
        if self.first is not None:
            out["firstChunkMs"] = round((self.first - self.started) * 1000, 3)
        if self.sse is not None:
            out["events"] = self.sse.events
        return out
