"""A local stand-in for Azure OpenAI and Azure AI Content Safety, protected like the demo backend.

Every route requires a managed-identity bearer token for one of its audiences (default
``https://cognitiveservices.azure.com``), validated exactly as :class:`~apim_mi.backend.DemoBackend` does (RS256
against the emulator's JWKS, ``aud``, ``iss``, ``exp``). It answers deterministically, so tests can compare what the
gateway counted with what was served:

* ``POST …/chat/completions`` (Azure's ``/openai/deployments/{d}/chat/completions`` and OpenAI's ``/v1/…``): the reply
  is the last user message echoed (``Echo: …``), cut at ``max_tokens``; ``usage`` counted with the same offline
  tokenizer the gateway estimates with. ``"stream": true`` answers ``text/event-stream``, one word per chunk every
  ``chunk_delay`` seconds (header ``x-standin-chunk-delay-ms`` overrides), ``data: [DONE]`` last, and a usage chunk
  when ``stream_options.include_usage`` is true, as OpenAI does.
* ``POST …/responses`` (the Responses API): the same echo with ``input_tokens``/``output_tokens``; streamed as
  ``response.output_text.delta`` events and a ``response.completed`` event with the usage.
* ``POST …/embeddings``: a 64-dimensional bag-of-words vector (similar prompts are near each other), with ``usage``.
* ``POST /contentsafety/text:analyze`` and ``/contentsafety/text:shieldPrompt``: severities from a small lexicon,
  the configured blocklists, attack detection for "ignore previous instructions"; 400 over 10 000 characters.
* ``GET /_backend/usage`` (loopback): the tokens served so far; ``/_backend/stats`` etc. as the demo backend.

Standalone: ``python -m apim_mi.openai_backend --emulator http://127.0.0.1:8479``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .backend import DemoBackend, add_arguments, resolve_source, run_cli
from .emulator.serving import ServerThread, require_loopback, serve_until_stopped
from .policy.ai.usage import count, encoding, encoding_name, estimate_prompt_tokens, prompt_text

COGNITIVE_SERVICES = "https://cognitiveservices.azure.com"
DEFAULT_PORT = 8481
EMBEDDING_DIMENSIONS = 64
CONTENT_SAFETY_LIMIT = 10_000
DEFAULT_BLOCKLISTS: Mapping[str, tuple[str, ...]] = {"blocklist1": ("forbidden-term",)}
#: Words that raise a Content Safety category, with the severity (eight levels) they give.
LEXICON: Mapping[str, tuple[str, int]] = {
    "hate": ("Hate", 6), "despise": ("Hate", 4), "kill": ("Violence", 6), "attack": ("Violence", 4),
    "self-harm": ("SelfHarm", 6), "explicit": ("Sexual", 4),
}  # fmt: skip
ATTACKS = ("ignore previous instructions", "ignore all previous instructions", "disregard your instructions")
_WORD = re.compile(r"[\w'-]+")


@dataclass
class Served:
    """Tokens the stand-in reported in ``usage`` (streamed answers included), per route kind."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.requests += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {"promptTokens": self.prompt_tokens, "completionTokens": self.completion_tokens,
                "totalTokens": self.prompt_tokens + self.completion_tokens, "requests": self.requests,
                "byKind": dict(self.by_kind)}  # fmt: skip


def embed(text: str) -> list[float]:
    """Deterministic bag-of-words embedding: each word adds to a hashed dimension; unit length."""
    vec = [0.0] * EMBEDDING_DIMENSIONS
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2s(word.encode(), digest_size=4).digest(), "big")
        vec[h % EMBEDDING_DIMENSIONS] += 1.0 if h & 0x80000000 else -1.0
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def reply_words(data: dict[str, Any]) -> list[str]:
    """The completion, word by word (each with its leading space after the first)."""
    users = [t for role, t in prompt_text(data) if role == "user"]
    words = ("Echo: " + (users[-1] if users else "hello")).split()
    limit = data.get("max_tokens") or data.get("max_completion_tokens")
    if isinstance(limit, int) and limit > 0:
        words = words[:limit]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class OpenAIBackend(DemoBackend):
    """The stand-in; ``chunk_delay`` is the pause between streamed chunks (seconds)."""

    _what = "openai stand-in"

    def __init__(
        self, jwks_uri: str, issuer: str | Sequence[str], audiences: Sequence[str] = (COGNITIVE_SERVICES,), *,
        chunk_delay: float = 0.0, blocklists: Mapping[str, Sequence[str]] = DEFAULT_BLOCKLISTS,
        name: str = "openai-stand-in",
    ) -> None:  # fmt: skip
        super().__init__(jwks_uri, issuer, audiences, name=name)
        self.chunk_delay = chunk_delay
        self.blocklists = {k: tuple(v) for k, v in blocklists.items()}
        self.served = Served()

    def reset(self) -> None:
        super().reset()
        self.served = Served()

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._add_admin_routes(app)
        app.router.add_get("/_backend/usage", self._admin_usage)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def _admin_usage(self, request: web.Request) -> web.Response:
        require_loopback(request)
        return web.json_response(self.served.to_json())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        headers = list(request.headers.keys())
        claims = await self._admit(request, headers)
        if isinstance(claims, web.Response):
            return claims
        self._log(request, headers, 200, claims={k: claims[k] for k in ("aud", "appid", "oid") if k in claims})
        path = request.path.rstrip("/")
        try:
            data = await request.json() if request.can_read_body else {}
        except ValueError:
            return _error(400, "invalid_request_error", "The request body is not JSON.")
        if not isinstance(data, dict):
            return _error(400, "invalid_request_error", "The request body must be a JSON object.")
        if request.method == "POST" and path.endswith("/chat/completions"):
            return await self._chat(request, data)
        if request.method == "POST" and path.endswith("/responses"):
            return await self._responses(request, data)
        if request.method == "POST" and path.endswith("/embeddings"):
            return self._embeddings(data)
        if request.method == "POST" and path.endswith("/contentsafety/text:analyze"):
            return self._analyze(data)
        if request.method == "POST" and path.endswith("/contentsafety/text:shieldPrompt"):
            return self._shield(data)
        return _error(404, "NotFound", f"No route for {request.method} {request.path}")

    async def _reply(self, kind: str, data: dict[str, Any]) -> tuple[str, list[str], int, int]:
        """The echoed reply to a request (model, words, prompt and completion tokens), counted as served."""
        model = str(data.get("model") or "gpt-4o")
        enc = await asyncio.to_thread(encoding, encoding_name(model))
        prompt = estimate_prompt_tokens(enc, data)
        words = reply_words(data)
        completion = count(enc, "".join(words))
        self.served.add(kind, prompt, completion)
        return model, words, prompt, completion

    async def _chat(self, request: web.Request, data: dict[str, Any]) -> web.StreamResponse:
        model, words, prompt, completion = await self._reply("chat", data)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        base = {"id": f"chatcmpl-{int(time.time() * 1000)}", "created": int(time.time()), "model": model}
        if data.get("stream") is not True:
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "usage": usage,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(words)},
                        }
                    ],
                }
            )
        delay_ms = request.headers.get("x-standin-chunk-delay-ms")
        delay = float(delay_ms) / 1000 if delay_ms else self.chunk_delay
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        for i, word in enumerate(words):
            if i and delay:
                await asyncio.sleep(delay)
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            await _event(resp, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        await _event(resp, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (data.get("stream_options") or {}).get("include_usage"):
            await _event(resp, {**chunk, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _responses(self, request: web.Request, data: dict[str, Any]) -> web.StreamResponse:
        """The Responses API: the same echo, ``usage`` as ``input_tokens``/``output_tokens``; streamed as
        ``response.output_text.delta`` events and a ``response.completed`` event carrying the usage."""
        model, words, prompt, completion = await self._reply("responses", data)
        rid, now = f"resp_{int(time.time() * 1000)}", int(time.time())
        message = {"id": f"msg_{rid}", "type": "message", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": "".join(words), "annotations": []}]}  # fmt: skip
        done = {"id": rid, "object": "response", "created_at": now, "model": model, "status": "completed",
                "output": [message], "usage": {"input_tokens": prompt, "output_tokens": completion,
                                               "total_tokens": prompt + completion}}  # fmt: skip
        if data.get("stream") is not True:
            return web.json_response(done)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        events = [{"type": "response.created", "response": {**done, "status": "in_progress", "output": [],
                                                             "usage": None}}]  # fmt: skip
        events += [{"type": "response.output_text.delta", "item_id": message["id"], "output_index": 0,
                    "content_index": 0, "delta": word} for word in words]  # fmt: skip
        events.append({"type": "response.completed", "response": done})
        for n, event in enumerate(events):
            await resp.write(f"event: {event['type']}\n".encode())
            await _event(resp, {**event, "sequence_number": n})
        await resp.write_eof()
        return resp

    def _embeddings(self, data: dict[str, Any]) -> web.Response:
        inputs = data.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs or []]
        enc = encoding(encoding_name(str(data.get("model") or "text-embedding-3-small")))
        tokens = sum(count(enc, t) for t in texts)
        self.served.add("embeddings", tokens, 0)
        return web.json_response({
            "object": "list", "model": data.get("model") or "text-embedding-3-small",
            "data": [{"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    def _analyze(self, data: dict[str, Any]) -> web.Response:
        text = str(data.get("text") or "")
        if len(text) > CONTENT_SAFETY_LIMIT:
            return _error(400, "InvalidRequestBody", f"The text is longer than {CONTENT_SAFETY_LIMIT} characters.")
        eight = str(data.get("outputType", "FourSeverityLevels")).lower() == "eightseveritylevels"
        wanted = data.get("categories") or ["Hate", "SelfHarm", "Sexual", "Violence"]
        found: dict[str, int] = dict.fromkeys(wanted, 0)
        lowered = text.lower()
        for word, (category, severity) in LEXICON.items():
            if word in lowered and category in found:
                found[category] = max(found[category], severity if eight else severity // 2 * 2)
        matches = [{"blocklistName": name, "blocklistItemId": f"{name}-{i}", "blocklistItemText": term}
                   for name in data.get("blocklistNames") or [] for i, term in enumerate(self.blocklists.get(name, ()))
                   if term.lower() in lowered]  # fmt: skip
        return web.json_response(
            {
                "blocklistsMatch": matches,
                "categoriesAnalysis": [{"category": c, "severity": s} for c, s in found.items()],
            }
        )

    def _shield(self, data: dict[str, Any]) -> web.Response:
        prompt = str(data.get("userPrompt") or "").lower()
        return web.json_response(
            {
                "userPromptAnalysis": {"attackDetected": any(a in prompt for a in ATTACKS)},
                "documentsAnalysis": [{"attackDetected": False} for _ in data.get("documents") or []],
            }
        )


class OpenAIBackendThread(ServerThread[OpenAIBackend]):
    """``with OpenAIBackendThread(jwks_uri, issuer) as standin:`` runs the stand-in on its own loop and thread."""

    def __init__(self, jwks_uri: str, issuer: str | Sequence[str], audiences: Sequence[str] = (COGNITIVE_SERVICES,),
                 *, chunk_delay: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:  # fmt: skip
        backend = OpenAIBackend(jwks_uri, issuer, audiences, chunk_delay=chunk_delay)
        super().__init__(backend, "apim-mi-openai-stand-in", lambda: backend.start(host, port))

    @property
    def backend(self) -> OpenAIBackend:
        return self._server

    def served(self) -> dict[str, Any]:
        return self._thread.call(self._server.served.to_json)

    def stats(self) -> Any:
        return self._thread.call(self._server.stats)

    def reset(self) -> None:
        self._thread.call(self._server.reset)


async def _event(resp: web.StreamResponse, data: dict[str, Any]) -> None:
    await resp.write(b"data: " + json.dumps(data).encode() + b"\n\n")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def serve(args: argparse.Namespace) -> int:
    jwks_uri, issuers = resolve_source(args)
    backend = OpenAIBackend(jwks_uri, issuers, args.audience or [COGNITIVE_SERVICES], chunk_delay=args.chunk_delay)
    try:
        url = await backend.start(args.host, args.port, allow_remote=args.allow_remote)
    except OSError as exc:
        print(f"apim-mi openai stand-in: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    line = (f"apim-mi OpenAI stand-in on {url} | accepts aud {', '.join(backend.audiences)} | keys {jwks_uri} | "
            "Ctrl-C to stop")  # fmt: skip
    return await serve_until_stopped(backend, line)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m apim_mi.openai_backend``; returns the exit code."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m apim_mi.openai_backend", description="OpenAI / Content Safety stand-in that accepts only "
        "valid managed-identity tokens."))  # fmt: skip
    for action in parser._actions:
        if action.dest == "audience":
            action.required = False
        if action.dest == "port":
            action.default = DEFAULT_PORT
            action.help = f"default {DEFAULT_PORT}; 0 = ephemeral"
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    return run_cli(parser, argv, serve, "apim-mi openai stand-in")


if __name__ == "__main__":
    raise SystemExit(main())
