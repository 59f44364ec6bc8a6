"""The AI gateway policies: token limits, token metrics (and ``emit-metric``), content safety and the semantic cache,
under both their ``azure-openai-`` and ``llm-`` names.

They act twice: in inbound (check a budget, call Content Safety or the embeddings backend, look up the cache) and once
the backend's answer is complete (``run.on_response``: settle the tokens really used, emit the metrics, store the
answer), which for a streamed answer is when the last chunk has reached the client. Shared state (counters, metrics,
the vector store) is the proxy's ``GatewayState.ai`` (``policy/ai``). Side calls to Content Safety and the
embeddings backend carry a managed-identity token: the backend's ``credentials.managedIdentity``, else
``https://cognitiveservices.azure.com``, as APIM requires of those backends. Wording marked ``UNVERIFIED`` in the
trace is apim-mi's, not Azure's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...errors import PolicyError
from ...tokens import TokenError, token_key
from ..ai import AiState
from ..ai.semcache import CachedAnswer
from ..ai.usage import (
    SseUsage,
    Usage,
    completion_text,
    estimate_prompt_tokens,
    is_stream_request,
    load_encoding,
    prompt_text,
    request_json,
    usage_from_body,
)
from ..context import Body, Headers, Response
from ..engine import UNVERIFIED, Delivered, PolicyRun, Scope, evaluate_string, handle_error
from ..model import Statement
from ._common import ResponseError, bool_attr, int_attr, json_response, str_attr

COGNITIVE_SERVICES = "https://cognitiveservices.azure.com"
CONTENT_SAFETY_API = "2024-09-01"
TOKEN_METRICS = ("Total Tokens", "Prompt Tokens", "Completion Tokens")
#: Dimensions a token metric may name without a value; the value comes from the request's context.
DEFAULT_DIMENSIONS = ("API ID", "Operation ID", "Product ID", "User ID", "Subscription ID", "Location", "Gateway ID",
                      "Backend ID")  # fmt: skip
#: "You can configure at most N custom dimensions for this policy" (each policy's reference page).
MAX_CUSTOM_DIMENSIONS = {"llm-emit-token-metric": 5}
DEFAULT_MAX_CUSTOM_DIMENSIONS = 10
CACHE_BODY_LIMIT = 1 << 20


def _ai(run: PolicyRun) -> AiState:
    return run.services.state.ai


def _request_data(run: PolicyRun) -> dict[str, Any] | None:
    body = run.context.request.body
    return request_json(body.content if body is not None else None)


# -- usage of one exchange ---------------------------------------------------------------------------------------


async def _usage(run: PolicyRun, delivered: Delivered) -> Usage | None:
    """The exchange's tokens, worked out once per run: the backend's ``usage`` when it reports one (also in a
    stream's last chunk), else estimated with the offline tokenizer (APIM estimates streamed answers too)."""
    cached = run.scratch.get("usage")
    if isinstance(cached, Usage):
        return cached
    usage = None
    if isinstance(delivered.sse, SseUsage):
        usage = delivered.sse.usage
        if usage is None:
            data = _request_data(run)
            enc = await load_encoding((data or {}).get("model"))
            usage = Usage(estimate_prompt_tokens(enc, data), delivered.sse.completion_tokens(enc), "estimated")
    elif delivered.body is not None:
        usage = usage_from_body(delivered.body)
    if usage is not None:
        run.scratch["usage"] = usage
    return usage


# -- token limits -------------------------------------------------------------------------------------------------


def _refuse(
    run: PolicyRun, stmt: Statement, scope: Scope, status: int, message: str, reason: str, retry: int,
    remaining_name: str, remaining: int, traced: str,
) -> ResponseError:  # fmt: skip
    """APIM's 429/403 with Retry-After (and the remaining-tokens header, 0 or what is left), the variables set."""
    variables = run.context.variables
    _set(variables, stmt.attr("retry-after-variable-name"), retry)
    _set(variables, stmt.attr(f"{remaining_name}-variable-name"), remaining)
    headers = [(stmt.attr("retry-after-header-name") or "Retry-After", str(retry))]
    remaining_header = stmt.attr(f"{remaining_name}-header-name")
    if remaining_header:
        headers.append((remaining_header, str(remaining)))
    run.trace.add(scope.section, stmt.name, {"message": traced, "retryAfter": retry, **UNVERIFIED})
    return ResponseError(stmt.name, message, reason, json_response(status, message, headers))


async def token_limit(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """``azure-openai-token-limit`` / ``llm-token-limit``: 429 over ``tokens-per-minute``, 403 over the quota.

    The budget is exceeded when what the key used in the last 60 s (or in the quota period) reaches the limit, or,
    when the prompt is estimated (``estimate-prompt-tokens``, or any ``"stream": true`` request), when the used
    tokens plus the estimate exceed it."""
    source = stmt.name
    ai = _ai(run)
    key = await str_attr(run, stmt, "counter-key", scope) or ""
    tpm = await int_attr(run, stmt, "tokens-per-minute", scope)
    quota = await int_attr(run, stmt, "token-quota", scope)
    period = stmt.attr("token-quota-period") if quota is not None else None
    if tpm is None and (quota is None or not period):
        raise PolicyError(
            source,
            "Either tokens-per-minute or both token-quota and token-quota-period must be specified.",
            "ExpressionValueEvaluationFailure",
        )
    estimate = await bool_attr(run, stmt, "estimate-prompt-tokens", scope)
    data = _request_data(run)
    stream = is_stream_request(data)
    prompt = 0
    if estimate or stream:
        enc = await load_encoding((data or {}).get("model"))
        prompt = estimate_prompt_tokens(enc, data)
    variables = run.context.variables
    used = ai.counters.minute_used(key) if tpm is not None else 0
    if tpm is not None and ((used + prompt > tpm) if prompt else (used >= tpm)):
        retry = ai.counters.minute_retry_after(key, tpm, prompt)
        raise _refuse(run, stmt, scope, 429, f"Token limit is exceeded. Try again in {retry} seconds.",
                      "TokenLimitExceeded", retry, "remaining-tokens", max(0, tpm - used),
                      f"Token limit of {tpm} tokens per minute exceeded for counter key '{key}': {used} used, "
                      f"{prompt} estimated for this prompt.")  # fmt: skip
    quota_used = ai.counters.quota_used(key, period) if quota is not None and period else 0
    if quota is not None and period and ((quota_used + prompt > quota) if prompt else (quota_used >= quota)):
        retry = ai.counters.quota_retry_after(key, period)
        raise _refuse(run, stmt, scope, 403, f"Token quota is exceeded. Try again in {_hms(retry)}.",
                      "TokenQuotaExceeded", retry, "remaining-quota-tokens", max(0, quota - quota_used),
                      f"Token quota of {quota} tokens per {period} period exceeded for counter key '{key}': "
                      f"{quota_used} used.")  # fmt: skip
    reservation = ai.counters.reserve(key, prompt, per_minute=tpm is not None, period=period)
    _publish_remaining(run, stmt, tpm, used + prompt, quota, quota_used + prompt)
    _set(variables, stmt.attr("tokens-consumed-variable-name"), prompt)
    run.trace.add(scope.section, source, {
        "message": f"Counter key '{key}' is within its token budget.", "counterKey": key,
        "tokensPerMinute": tpm, "tokensUsedLastMinute": used, "tokenQuota": quota, "quotaPeriod": period,
        "quotaTokensUsed": quota_used if quota is not None else None,
        "estimatedPromptTokens": prompt if prompt else None,
        "stream": stream, **UNVERIFIED,
    })  # fmt: skip

    async def settle(run: PolicyRun, delivered: Delivered) -> None:
        usage = await _usage(run, delivered)
        if usage is None:
            run.trace.add("outbound", source, {"message": "The response reports no token usage; the request stays "
                          f"charged {reservation.tokens} estimated prompt tokens.", **UNVERIFIED})  # fmt: skip
            return
        ai.counters.settle(reservation, usage.total_tokens)
        _set(run.context.variables, stmt.attr("tokens-consumed-variable-name"), usage.total_tokens)
        now_used = ai.counters.minute_used(key) if tpm is not None else 0
        now_quota = ai.counters.quota_used(key, period) if quota is not None and period else 0
        _publish_remaining(run, stmt, tpm, now_used, quota, now_quota, delivered)
        consumed_header = stmt.attr("tokens-consumed-header-name")
        if consumed_header and delivered.response is not None:
            _answer_header(run, consumed_header, str(usage.total_tokens))
        run.trace.add("outbound", source, {
            "message": f"Counter key '{key}' charged {usage.total_tokens} tokens.", "usage": usage.to_json(),
            **({"note": f"{consumed_header} is not added: the streamed response's headers were already sent."}
               if consumed_header and delivered.response is None else {}),
            **UNVERIFIED,
        })  # fmt: skip

    run.add_on_response(settle)


def _publish_remaining(
    run: PolicyRun, stmt: Statement, tpm: int | None, used: int, quota: int | None, quota_used: int,
    delivered: Delivered | None = None,
) -> None:  # fmt: skip
    """remaining-(quota-)tokens variables now, and their headers on the answer (when it can still take headers)."""
    pairs = []
    if tpm is not None:
        pairs.append(("remaining-tokens", max(0, tpm - used)))
    if quota is not None:
        pairs.append(("remaining-quota-tokens", max(0, quota - quota_used)))
    for name, value in pairs:
        _set(run.context.variables, stmt.attr(f"{name}-variable-name"), value)
        header = stmt.attr(f"{name}-header-name")
        if not header:
            continue
        if delivered is None or delivered.response is not None:  # a streamed answer's headers have left
            _answer_header(run, header, str(value))


def _answer_header(run: PolicyRun, name: str, value: str) -> None:
    """A header the client's answer gets whatever produced it (``run.response_headers``), replacing an earlier one."""
    run.add_response_header(name, value, replace=True)


def _set(variables: dict[str, Any], name: str | None, value: Any) -> None:
    if name:
        variables[name] = value


def _hms(seconds: int) -> str:
    """A .NET TimeSpan as APIM prints quota waits (``d.hh:mm:ss``)."""
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days}." if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


# -- metrics ------------------------------------------------------------------------------------------------------


async def _dimensions(run: PolicyRun, stmt: Statement, scope: Scope, *, defaults: bool) -> dict[str, str]:
    dims: dict[str, str] = {}
    for d in stmt.children_named("dimension"):
        name = await evaluate_string(run, d.attrs.get("name"), stmt.name, scope) or ""
        value_attr = d.attrs.get("value")
        if value_attr is not None:
            dims[name] = await evaluate_string(run, value_attr, stmt.name, scope) or ""
        elif defaults and name in DEFAULT_DIMENSIONS:
            dims[name] = _default_dimension(run, name)
        else:
            raise PolicyError(
                stmt.name,
                f"Dimension '{name}' has no value and is not a default dimension ({', '.join(DEFAULT_DIMENSIONS)}).",
                "ExpressionValueEvaluationFailure",
            )
    custom = [n for n in dims if n not in DEFAULT_DIMENSIONS]
    limit = MAX_CUSTOM_DIMENSIONS.get(stmt.name, DEFAULT_MAX_CUSTOM_DIMENSIONS)
    if len(custom) > limit:
        raise PolicyError(
            stmt.name,
            f"At most {limit} custom dimensions are allowed (got {len(custom)}).",
            "ExpressionValueEvaluationFailure",
        )
    return dims


def _default_dimension(run: PolicyRun, name: str) -> str:
    c = run.context
    if name == "API ID":
        return c.api.id if c.api is not None else ""
    if name == "Operation ID":
        return c.operation.id if c.operation is not None else ""
    if name == "Product ID":
        return c.product.id if c.product is not None else ""
    if name == "User ID":
        return c.user.id if c.user is not None else ""
    if name == "Subscription ID":
        return c.subscription.id if c.subscription is not None else ""
    if name == "Location":
        return c.deployment.region
    if name == "Gateway ID":
        return c.deployment.gateway_id
    return _backend_id(run)


def _backend_id(run: PolicyRun) -> str:
    """The configured backend the request goes to (the backend whose URL the request URL starts with)."""
    url = str(run.context.request.url)
    for name, entry in (run.services.settings.get("backends") or {}).items():
        base = _entry_url(entry).rstrip("/")
        if base and (url == base or url.startswith(base + "/") or url.startswith(base + "?")):
            return str(name)
    return ""


def _emit(run: PolicyRun, namespace: str, name: str, dims: dict[str, str], value: float) -> None:
    """Into the proxy's metrics (``mi.status``) and, when ``mi_metrics`` serves Prometheus, into its registry as the
    counter ``<name>_total`` with the dimensions and ``namespace`` as labels (negative values: not a counter)."""
    _ai(run).metrics.emit(namespace, name, dims, value)
    prometheus = run.services.settings.get("metrics")
    if prometheus is not None and value >= 0:
        prometheus.counter(name, {"namespace": namespace, **dims}, value, "emitted by an APIM metric policy")


async def emit_token_metric(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """``azure-openai-emit-token-metric`` / ``llm-emit-token-metric``: Total, Prompt and Completion Tokens with the
    dimensions evaluated now, emitted when the answer is complete."""
    source = stmt.name
    namespace = stmt.attr("namespace") or "API Management"
    dims = await _dimensions(run, stmt, scope, defaults=True)

    async def emit(run: PolicyRun, delivered: Delivered) -> None:
        usage = await _usage(run, delivered)
        if usage is None:
            run.trace.add("outbound", source, {"message": "The response reports no token usage; no token metric is "
                          "emitted.", **UNVERIFIED})  # fmt: skip
            return
        values = dict(zip(TOKEN_METRICS, (usage.total_tokens, usage.prompt_tokens, usage.completion_tokens),
                          strict=True))  # fmt: skip
        for name, value in values.items():
            _emit(run, namespace, name, dims, float(value))
        run.trace.add(
            "outbound",
            source,
            {
                "message": f"Token metrics emitted to namespace '{namespace}'.",
                "metrics": values,
                "dimensions": dims,
                "usageSource": usage.source,
                **UNVERIFIED,
            },
        )

    run.add_on_response(emit)


async def emit_metric(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """``emit-metric``: one value (default 1) now, with its dimensions."""
    name = await str_attr(run, stmt, "name", scope) or ""
    namespace = stmt.attr("namespace") or "API Management"
    raw = await str_attr(run, stmt, "value", scope)
    try:
        value = float(raw) if raw not in (None, "") else 1.0
    except ValueError:
        raise PolicyError(
            "emit-metric", f"The metric value '{raw}' is not a number.", "ExpressionValueEvaluationFailure"
        ) from None
    dims = await _dimensions(run, stmt, scope, defaults=True)
    _emit(run, namespace, name, dims, value)
    run.trace.add(scope.section, "emit-metric", {"message": f"Metric '{name}' emitted to namespace '{namespace}'.",
                  "value": value, "dimensions": dims, **UNVERIFIED})  # fmt: skip


# -- side calls (Content Safety, embeddings) -----------------------------------------------------------------------


def _backend(run: PolicyRun, backend_id: str, source: str) -> tuple[str, str, str]:
    """(URL, managed-identity resource, client id) of a configured backend: its ``credentials.managedIdentity``,
    else ``https://cognitiveservices.azure.com`` with the system-assigned identity (what APIM requires of a Content
    Safety backend)."""
    backends = run.services.settings.get("backends") or {}
    entry = backends.get(backend_id)
    url = _entry_url(entry) if entry is not None else ""
    if not url:
        known = ", ".join(sorted(backends)) or "none configured"
        raise PolicyError(source, f"Backend with id '{backend_id}' could not be found (backends: {known}).",
                          "BackendNotFound")
    if isinstance(entry, dict):
        return url.rstrip("/"), str(entry.get("resource") or COGNITIVE_SERVICES), ""
    credentials = getattr(entry, "credentials", None)
    identity = getattr(credentials, "managed_identity", None)
    if identity is not None:
        return url.rstrip("/"), identity.resource, identity.client_id
    return url.rstrip("/"), COGNITIVE_SERVICES, ""


def _entry_url(entry: Any) -> str:
    """A ``backends:`` entry's URL: a bare URL, a mapping with ``url``, or a backend entity (``.url``)."""
    if isinstance(entry, dict):
        return str(entry.get("url") or "")
    return str(entry if isinstance(entry, str) else getattr(entry, "url", "") or "")


async def _call(run: PolicyRun, source: str, url: str, identity: tuple[str, str], payload: dict[str, Any]) -> Any:
    """POST JSON with a managed-identity token; the parsed answer, or a PolicyError (the gateway's 500)."""
    from .http import default_send

    try:
        resource, client_id = identity
        result = await run.services.tokens.get(token_key(run.services.credential_source, client_id, resource))
    except TokenError as e:
        raise PolicyError(
            source, f"Obtaining managed identity token for {resource} audience failed: {e.message}", e.reason
        ) from None
    run.add_secret(result.token.value)
    headers = [("Authorization", f"Bearer {result.token.value}"), ("Content-Type", "application/json")]
    send: Any = run.services.send or default_send
    try:
        response = await send("POST", url, headers, json.dumps(payload).encode(), 30.0)
    except Exception as e:  # aiohttp's errors, timeouts, an injected sender's: the call failed
        raise PolicyError(
            source, f"Could not reach {url}: {type(e).__name__}: {e}", "BackendConnectionFailure"
        ) from None
    body = response.body.content if response.body is not None else b""
    if not 200 <= response.status_code < 300:
        raise PolicyError(
            source, f"{url} answered {response.status_code}: {body[:500].decode(errors='replace')}", "BackendError"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise PolicyError(source, f"{url} answered with a body that is not JSON.", "BackendError") from None


# -- content safety -----------------------------------------------------------------------------------------------


@dataclass
class _Screen:
    """What one llm-content-safety statement checks, its values evaluated."""

    backend_id: str
    base: str
    identity: tuple[str, str]  # (resource, client id) of the backend's managed-identity token
    shield: bool
    output_type: str
    thresholds: dict[str, int]
    blocklists: list[str]

    async def verdict(self, run: PolicyRun, source: str, text: str, user_text: str | None) -> list[str]:
        """Why ``text`` is blocked (empty: it passes); ``user_text`` also goes to Prompt Shields when shielding."""
        reasons: list[str] = []
        if text and (self.thresholds or self.blocklists):
            payload: dict[str, Any] = {"text": text, "outputType": self.output_type, "haltOnBlocklistHit": False}
            if self.thresholds:
                payload["categories"] = list(self.thresholds)
            if self.blocklists:
                payload["blocklistNames"] = self.blocklists
            answer = await _call(run, source, f"{self.base}/contentsafety/text:analyze?api-version="
                                 f"{CONTENT_SAFETY_API}", self.identity, payload)  # fmt: skip
            for item in answer.get("categoriesAnalysis") or []:
                name, severity = item.get("category"), item.get("severity") or 0
                if name in self.thresholds and severity >= self.thresholds[name]:
                    reasons.append(f"{name} severity {severity} >= {self.thresholds[name]}")
            for hit in answer.get("blocklistsMatch") or []:
                reasons.append(f"blocklist '{hit.get('blocklistName')}' matched")
        if self.shield and user_text:
            answer = await _call(run, source, f"{self.base}/contentsafety/text:shieldPrompt?api-version="
                                 f"{CONTENT_SAFETY_API}", self.identity, {"userPrompt": user_text, "documents": []})
            if (answer.get("userPromptAnalysis") or {}).get("attackDetected"):
                reasons.append("prompt attack detected")
        return reasons

    def record(self, run: PolicyRun, section: str, source: str, what: str, reasons: list[str]) -> None:
        verdict = f"Content safety check of the {what} failed: " + "; ".join(reasons) if reasons else \
            f"Content safety check of the {what} passed."  # fmt: skip
        run.trace.add(section, source, {
            "message": verdict, "backendId": self.backend_id, "categories": self.thresholds,
            "blocklists": self.blocklists, "shieldPrompt": self.shield, **UNVERIFIED,
        })  # fmt: skip


def _blocked(source: str, what: str) -> ResponseError:
    message = f"{what} failed content safety check."
    return ResponseError(source, message, "ContentSafetyViolation", json_response(403, message))


async def _screen_of(run: PolicyRun, stmt: Statement, scope: Scope) -> _Screen:
    source = stmt.name
    backend_id = await str_attr(run, stmt, "backend-id", scope) or ""
    shield = await bool_attr(run, stmt, "shield-prompt", scope)
    base, resource, client_id = _backend(run, backend_id, source)
    thresholds: dict[str, int] = {}
    output_type = "FourSeverityLevels"
    categories = stmt.child("categories")
    if categories is not None:
        output_type = await str_attr(run, categories, "output-type", scope, source=source) or output_type
        for c in categories.children_named("category"):
            name = await evaluate_string(run, c.attrs.get("name"), source, scope) or ""
            threshold = await int_attr(run, c, "threshold", scope, source=source)
            thresholds[name] = threshold if threshold is not None else 0
    blocklists = []
    lists = stmt.child("blocklists")
    if lists is not None:
        for item in lists.children_named("id"):
            value = await evaluate_string(run, item.text, source, scope)
            if value:
                blocklists.append(value)
    return _Screen(backend_id, base, (resource, client_id), shield, output_type, thresholds, blocklists)


async def content_safety(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Sends the prompt's text to Azure AI Content Safety (text:analyze, and text:shieldPrompt with
    ``shield-prompt``); a category at or over its threshold, a blocklist hit or a detected attack answers 403.
    With ``enforce-on-completions`` (or in outbound) the model's answer is screened the same way before the client
    gets it: buffered answers only, a streamed one has left already (the trace says so)."""
    source = stmt.name
    screen = await _screen_of(run, stmt, scope)
    if scope.section == "outbound":
        await _screen_completion(run, source, screen, run.context.response, "outbound")
        return
    messages = prompt_text(_request_data(run))
    text = "\n".join(t for _, t in messages if t)
    user = "\n".join(t for role, t in messages if role == "user" and t) or text
    reasons = await screen.verdict(run, source, text, user)
    screen.record(run, scope.section, source, "prompt", reasons)
    if reasons:
        raise _blocked(source, "Request")
    if await bool_attr(run, stmt, "enforce-on-completions", scope):

        async def on_completion(run: PolicyRun, delivered: Delivered) -> None:
            try:
                await _screen_completion(run, source, screen, delivered.response, "outbound")
            except PolicyError as e:
                await handle_error(run, e)  # the answer becomes the 403 (or on-error's), before outbound runs

        run.add_on_response(on_completion)


async def _screen_completion(
    run: PolicyRun, source: str, screen: _Screen, response: Response | None, section: str
) -> None:
    if response is None or run.streaming:
        run.trace.add(section, source, {"message": "The completion is not screened: the answer streams to the "
                      "client as it comes.", **UNVERIFIED})  # fmt: skip
        return
    text = completion_text(request_json(response.body.content if response.body is not None else None))
    reasons = await screen.verdict(run, source, text, None)
    screen.record(run, section, source, "completion", reasons)
    if reasons:
        raise _blocked(source, "Response")


# -- semantic cache -----------------------------------------------------------------------------------------------

_PENDING = "semantic-cache"


async def semantic_cache_lookup(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Embeds the prompt with the embeddings backend and answers from the nearest cached answer in the same
    ``vary-by`` partition when its distance is within ``score-threshold``."""
    source = stmt.name
    ai = _ai(run)
    threshold_text = await str_attr(run, stmt, "score-threshold", scope) or ""
    try:
        threshold = float(threshold_text)
    except ValueError:
        raise PolicyError(
            source,
            f"score-threshold must be a number between 0.0 and 1.0 (got '{threshold_text}').",
            "ExpressionValueEvaluationFailure",
        ) from None
    backend_id = await str_attr(run, stmt, "embeddings-backend-id", scope) or ""
    ignore_system = await bool_attr(run, stmt, "ignore-system-messages", scope)
    max_messages = await int_attr(run, stmt, "max-message-count", scope)
    data = _request_data(run)
    messages = prompt_text(data, ignore_system=ignore_system)
    if not messages:
        run.trace.add(scope.section, source, {"message": "No prompt in the request: the semantic cache is skipped.",
                      **UNVERIFIED})  # fmt: skip
        return
    if max_messages is not None and len(messages) > max_messages:
        run.trace.add(scope.section, source, {"message": f"{len(messages)} messages exceed max-message-count "
                      f"{max_messages}: the semantic cache is skipped.", **UNVERIFIED})  # fmt: skip
        return
    partition = "\x1f".join([await evaluate_string(run, v.text, source, scope) or ""
                             for v in stmt.children_named("vary-by")])  # fmt: skip
    url, resource, client_id = _backend(run, backend_id, source)
    answer = await _call(run, source, url, (resource, client_id), {"input": "\n".join(t for _, t in messages)})
    try:
        vector = [float(x) for x in answer["data"][0]["embedding"]]
    except (KeyError, IndexError, TypeError, ValueError):
        raise PolicyError(
            source, f"The embeddings backend '{backend_id}' answered without data[0].embedding.", "BackendError"
        ) from None
    cached, distance = ai.cache.nearest(partition, vector)
    hit = cached is not None and distance is not None and distance <= threshold
    shown = round(distance, 6) if distance is not None else None
    run.trace.add(scope.section, source, {
        "message": "Semantic cache hit: the cached response is returned." if hit else "Semantic cache miss.",
        "score": shown, "scoreThreshold": threshold, "varyBy": partition.split("\x1f") if partition else [],
        **UNVERIFIED,
    })  # fmt: skip
    if hit:
        assert cached is not None
        ai.cache.hits += 1
        run.response = Response(cached.status, cached.reason, Headers(cached.headers), Body(cached.body))
        return
    ai.cache.misses += 1
    run.scratch[_PENDING] = (partition, vector)


async def semantic_cache_store(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Stores a 200 answer for ``duration`` seconds under the prompt the lookup embedded (streamed answers once
    complete, when their copy fits ``CACHE_BODY_LIMIT``)."""
    source = stmt.name
    pending = run.scratch.get(_PENDING)
    duration = await int_attr(run, stmt, "duration", scope)
    if pending is None:
        return
    if duration is None or duration <= 0:
        raise PolicyError(source, "duration must be a positive number of seconds.", "ExpressionValueEvaluationFailure")
    ai = _ai(run)
    partition, vector = pending

    def store(status: int, reason: str, headers: list[tuple[str, str]], body: bytes | None) -> None:
        if status != 200 or body is None:
            run.trace.add("outbound", source, {"message": f"Response not cached (status {status}"
                          f"{', body not kept' if body is None else ''}).", **UNVERIFIED})  # fmt: skip
            return
        kept = [(n, v) for n, v in headers if n.lower() not in ("content-length", "transfer-encoding", "date")]
        ai.cache.store(partition, vector, CachedAnswer(status, reason, kept, body, ai.clock() + duration))
        run.trace.add("outbound", source, {"message": f"Response cached for {duration} seconds.",
                      "bytes": len(body), **UNVERIFIED})  # fmt: skip

    response = run.context.response
    if response is None:
        return
    if not run.streaming:
        store(
            response.status_code,
            response.status_reason,
            response.headers.pairs(),
            response.body.content if response.body is not None else None,
        )
        return
    status, reason, headers = response.status_code, response.status_reason, response.headers.pairs()

    async def store_streamed(run: PolicyRun, delivered: Delivered) -> None:
        store(status, reason, headers, delivered.body)

    run.add_on_response(store_streamed)


HANDLERS = {
    "azure-openai-token-limit": token_limit,
    "llm-token-limit": token_limit,
    "azure-openai-emit-token-metric": emit_token_metric,
    "llm-emit-token-metric": emit_token_metric,
    "emit-metric": emit_metric,
    "llm-content-safety": content_safety,
    "azure-openai-semantic-cache-lookup": semantic_cache_lookup,
    "llm-semantic-cache-lookup": semantic_cache_lookup,
    "azure-openai-semantic-cache-store": semantic_cache_store,
    "llm-semantic-cache-store": semantic_cache_store,
}
