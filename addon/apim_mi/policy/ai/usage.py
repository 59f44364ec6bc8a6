"""Token counts: what a response's ``usage`` says, what a streamed (SSE) response adds up to, and the offline
estimate of a prompt.

The estimate uses ``bpe-openai``, whose cl100k/o200k tables ship inside the wheel: nothing is ever downloaded
(tests check it with the network blocked). Loading a table takes ~0.5 s, so it happens once, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

#: Per OpenAI's counting guide: every message costs 3 tokens of framing, a name 1 more, the reply primer 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3
#: Streamed text kept for counting completion tokens; beyond it, 4 bytes count as one token.
TEXT_LIMIT = 1 << 20
LINE_LIMIT = 1 << 20

_O200K = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
_lock = threading.Lock()


def encoding_name(model: str | None) -> str:
    """o200k_base for the gpt-4o generation and later (and unknown models), cl100k_base for gpt-4/3.5/embeddings."""
    m = (model or "").lower()
    if any(m.startswith(p) for p in _O200K):
        return "o200k_base"
    if m.startswith(("gpt-4", "gpt-3.5", "gpt-35", "text-embedding")):
        return "cl100k_base"
    return "o200k_base"


_ENCODINGS: dict[str, Any] = {}


def encoding(name: str) -> Any:
    """The named encoding, built once per process (two threads never build the same table twice)."""
    enc = _ENCODINGS.get(name)
    if enc is None:
        with _lock:
            enc = _ENCODINGS.get(name)
            if enc is None:
                import bpe_openai

                enc = _ENCODINGS[name] = bpe_openai.get_encoding(name)
    return enc


async def load_encoding(model: str | None) -> Any:
    """The model's encoding; built in a worker thread the first time (~0.5 s), so the event loop never waits."""
    name = encoding_name(model)
    enc = _ENCODINGS.get(name)
    return enc if enc is not None else await asyncio.to_thread(encoding, name)


@dataclass(frozen=True)
class Usage:
    """Tokens of one exchange; ``source`` is ``response`` (the backend's usage) or ``estimated`` (counted here)."""

    prompt_tokens: int
    completion_tokens: int
    source: str = "response"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {"promptTokens": self.prompt_tokens, "completionTokens": self.completion_tokens,
                "totalTokens": self.total_tokens, "source": self.source}  # fmt: skip


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(data: Any) -> Usage | None:
    """The ``usage`` object of an OpenAI chat/completions/embeddings answer, a Responses API answer
    (``input_tokens``/``output_tokens``) or an Anthropic message."""
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict) and isinstance(data.get("response"), dict):  # Responses API stream event
        usage = data["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    if prompt is None:
        prompt = _int(usage.get("input_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if completion is None:
        completion = _int(usage.get("output_tokens"))
    total = _int(usage.get("total_tokens"))
    if prompt is None:
        return None
    if completion is None:
        completion = max(0, (total or prompt) - prompt)
    return Usage(prompt, completion)


def usage_from_body(body: bytes) -> Usage | None:
    try:
        return usage_of(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return None


def request_json(body: bytes | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_stream_request(data: dict[str, Any] | None) -> bool:
    return bool(data) and data.get("stream") is True  # type: ignore[union-attr]


def _content_text(content: Any) -> str:
    """Message content: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_text(data: dict[str, Any] | None, *, ignore_system: bool = False) -> list[tuple[str, str]]:
    """(role, text) of every prompt message: chat ``messages``, Responses ``input``, completions/embeddings
    ``prompt``/``input``."""
    if not data:
        return []
    messages = data.get("messages")
    if not isinstance(messages, list) and isinstance(data.get("input"), list):
        messages = data["input"]
    if isinstance(messages, list):
        out = []
        for m in messages:
            if isinstance(m, dict):
                role = str(m.get("role", "user"))
                if ignore_system and role in ("system", "developer"):
                    continue
                out.append((role, _content_text(m.get("content"))))
            elif isinstance(m, str):
                out.append(("user", m))
        return out
    for key in ("prompt", "input"):
        value = data.get(key)
        if isinstance(value, str):
            return [("user", value)]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [("user", v) for v in value]
    return []


def completion_text(data: dict[str, Any] | None) -> str:
    """The generated text of a buffered answer: chat ``choices[].message.content``, completions ``choices[].text``,
    Responses ``output[].content[].text``, Anthropic ``content[].text``."""
    if not data:
        return ""
    out: list[str] = []
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message")
            out.append(_content_text(message.get("content")) if isinstance(message, dict) else "")
            if isinstance(choice.get("text"), str):
                out.append(choice["text"])
    for item in data.get("output") or ():
        if isinstance(item, dict):
            out.append(_content_text(item.get("content")))
    if isinstance(data.get("content"), list):
        out.append(_content_text(data["content"]))
    return "\n".join(t for t in out if t)


def count(enc: Any, text: str) -> int:
    return len(enc.encode(text)) if text else 0


def estimate_prompt_tokens(enc: Any, data: dict[str, Any] | None) -> int:
    """Prompt tokens the way OpenAI's counting guide does for chat (framing per message), plain text otherwise."""
    if not data:
        return 0
    if isinstance(data.get("messages"), list):
        total = REPLY_PRIMER
        for m in data["messages"]:
            if not isinstance(m, dict):
                continue
            total += TOKENS_PER_MESSAGE + count(enc, str(m.get("role", "")))
            total += count(enc, _content_text(m.get("content")))
            if isinstance(m.get("name"), str):
                total += TOKENS_PER_NAME + count(enc, m["name"])
        return total
    return sum(count(enc, text) for _, text in prompt_text(data))


class SseUsage:
    """Reads a ``text/event-stream`` answer chunk by chunk as it passes: keeps the ``usage`` a chunk reports
    (``stream_options.include_usage``, Responses ``response.completed``) and the generated text, to count completion
    tokens when no chunk reports them. Memory stays bounded (``TEXT_LIMIT``, ``LINE_LIMIT``)."""

    def __init__(self) -> None:
        self._partial = b""
        self._text: list[str] = []
        self._text_len = 0
        self.overflow_bytes = 0
        self.usage: Usage | None = None
        self.events = 0

    def feed(self, data: bytes) -> None:
        buf = self._partial + data
        lines = buf.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > LINE_LIMIT:
            self._partial = b""
        for line in lines:
            self._line(line.strip())

    def close(self) -> None:
        if self._partial:
            self._line(self._partial.strip())
            self._partial = b""

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            event = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        self.events += 1
        usage = usage_of(event) or self._anthropic(event)
        if usage is not None:
            self.usage = usage
        self._add_text(_delta_text(event))

    def _anthropic(self, event: Any) -> Usage | None:
        """Anthropic's Messages stream: input tokens in ``message_start``, output tokens in ``message_delta``."""
        if not isinstance(event, dict):
            return None
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            return usage_of(event["message"])
        delta_usage = event.get("usage") if event.get("type") == "message_delta" else None
        if isinstance(delta_usage, dict) and _int(delta_usage.get("output_tokens")) is not None:
            prompt = self.usage.prompt_tokens if self.usage is not None else 0
            return Usage(prompt, delta_usage["output_tokens"])
        return None

    def _add_text(self, text: str) -> None:
        if not text:
            return
        if self._text_len + len(text) > TEXT_LIMIT:
            self.overflow_bytes += len(text.encode())
            return
        self._text.append(text)
        self._text_len += len(text)

    @property
    def text(self) -> str:
        return "".join(self._text)

    def completion_tokens(self, enc: Any) -> int:
        return count(enc, self.text) + self.overflow_bytes // 4


def _delta_text(event: Any) -> str:
    if not isinstance(event, dict):
        return ""
    if event.get("type") == "response.output_text.delta" and isinstance(event.get("delta"), str):
        return event["delta"]
    delta = event.get("delta")
    if event.get("type") == "content_block_delta" and isinstance(delta, dict) and isinstance(delta.get("text"), str):
        return delta["text"]  # Anthropic
    out = []
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            out.append(delta["content"])
        elif isinstance(choice.get("text"), str):
            out.append(choice["text"])
    return "".join(out)
