"""Backend calls the engine makes itself: ``retry`` around any child (``forward-request`` included), several
forward-requests, backend entities with credentials, circuit breakers and load-balanced pools, and ``proxy``.

A lone top-level ``forward-request`` to a plain URL leaves the call to mitmproxy (streaming, HTTP/2, its TLS
settings). As soon as a backend section needs more than that (the call sits in ``retry``, ``choose``,
``limit-concurrency`` …, or a second call follows, or the backend is a pool or has a circuit breaker, or a proxy is
set), ``forward-request`` sends the request with aiohttp like ``send-request`` does, ``context.Response`` is the
answer at once, and the flow gets the final response. Every attempt is in the trace, with the pool member that
served it.

Pools: the lowest priority number that has an untripped member wins; among its members the choice is random by
weight. A tripped member is skipped until its trip ends (``tripDuration``, or the backend's ``Retry-After`` when
``acceptRetryAfter``). With every member tripped the call answers ``503`` with the reason ``Backend pool <id> is
temporarily unavailable`` (``Backend <id> is temporarily unavailable`` for a single backend) — the wording the
AI-gateway samples' retry conditions test for; inferred, not seen in a real trace.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ...backends import Backend, PoolMember
from ...errors import Location, PolicyError
from ..context import Body, Headers, Request, Response, Url
from ..engine import UNVERIFIED, PolicyRun, Scope, backend_error_status, evaluate, run_statements
from ..model import Statement, Value
from ._common import ResponseError, bool_attr, int_attr, json_response, str_attr
from .core import MI, authentication_managed_identity

#: run.extras keys
ENTITY = "backend-entity"  # the Backend set-backend-service chose, and the base URL it put into the request
PROXY = "proxy"  # (url, username, password) from <proxy>


@dataclass
class Breaker:
    """One backend's circuit: failure times per rule, and until when it is open (tripped)."""

    failures: dict[str, list[float]] = field(default_factory=dict)
    open_until: float = 0.0


def _breaker(run: PolicyRun, backend_id: str) -> Breaker:
    breaker = run.services.state.breakers.get(backend_id)
    if not isinstance(breaker, Breaker):
        breaker = run.services.state.breakers[backend_id] = Breaker()
    return breaker


def tripped(run: PolicyRun, backend_id: str) -> bool:
    return _breaker(run, backend_id).open_until > run.services.state.clock()


def record_outcome(run: PolicyRun, backend: Backend, status: int | None, retry_after: str | None) -> str | None:
    """Counts a failure against the backend's circuit-breaker rules; returns a trace message when it trips."""
    if not backend.circuit_breaker:
        return None
    now = run.services.state.clock()
    breaker = _breaker(run, backend.id)
    for rule in backend.circuit_breaker:
        cond = rule.failure_condition
        failed = cond.counts_status(status) if status is not None else bool(cond.error_reasons)
        if not failed:
            continue
        times = [t for t in breaker.failures.get(rule.name, []) if now - t < cond.interval] + [now]
        breaker.failures[rule.name] = times
        if len(times) >= cond.count:
            duration = rule.trip_duration
            if rule.accept_retry_after and retry_after and retry_after.strip().isdigit():
                duration = float(retry_after.strip())
            breaker.open_until = now + duration
            breaker.failures.clear()
            return (f"Circuit breaker rule '{rule.name}' tripped backend '{backend.id}' for {duration:g} seconds "
                    f"({len(times)} failure(s) within {cond.interval:g} s).")  # fmt: skip
    return None


def choose_member(run: PolicyRun, pool: Backend) -> PoolMember | None:
    """The lowest priority group with an untripped member; within it, random by weight."""
    for priority in sorted({m.priority for m in pool.pool}):
        group = [m for m in pool.pool if m.priority == priority and not tripped(run, m.id)]
        if not group:
            continue
        weights = [m.weight for m in group]
        if not any(weights):
            weights = [1] * len(group)
        return run.services.state.random.choices(group, weights=weights)[0]
    return None


def entity_base(backends: dict[str, Any], backend: Backend) -> str:
    """The URL set-backend-service puts into the request: a single backend's, a pool's first member's."""
    if not backend.is_pool:
        return backend.url
    first = min(backend.pool, key=lambda m: m.priority)
    member = backends.get(first.id)
    return member.url if isinstance(member, Backend) else ""


def _rebase(url: Url, old_base: str, new_base: str) -> Url:
    """The request URL with the base URL set-backend-service used replaced by another member's."""
    old, new = urlsplit(old_base), urlsplit(new_base)
    out = Url.parse(new_base)
    path = url.path
    old_path = old.path.rstrip("/")
    rest = path[len(old_path):] if old_path and path.startswith(old_path) else path
    out.path = new.path.rstrip("/") + (rest if rest.startswith("/") or not rest else "/" + rest)
    out.query = url.query
    out._raw_query, out._raw_pairs = url._raw_query, url._raw_pairs
    return out


def _apply_credentials(request: Request, backend: Backend) -> None:
    creds = backend.credentials
    for name, values in creds.header:
        request.headers.set(name, list(values))
    for name, values in creds.query:
        request.url.query.set(name, list(values))
        request.url._raw_query = request.url._raw_pairs = None
    if creds.authorization is not None:
        request.headers.set("Authorization", [f"{creds.authorization.scheme} {creds.authorization.parameter}".strip()])


async def apply_identity(run: PolicyRun, scope: Scope, request: Request, backend: Backend, *, keep: bool) -> None:
    """``credentials.managedIdentity``: the token, exactly as authentication-managed-identity gets and sets it (same
    cache, failures, trace). ``keep``: record the injection (a request mitmproxy forwards, redacted afterwards)."""
    identity = backend.credentials.managed_identity
    if identity is None:
        return
    where = Location(f"backend '{backend.id}' credentials")
    attrs = {"resource": Value(identity.resource, where)}
    if identity.client_id:
        attrs["client-id"] = Value(identity.client_id, where)
    run.trace.add(scope.section, "forward-request", {
        "message": f"Backend '{backend.id}' credentials: managed identity token for {identity.resource}.", **UNVERIFIED,
    })  # fmt: skip
    injections = len(run.injections)
    await authentication_managed_identity(run, Statement(MI, where, attrs), Scope(scope.section, scope.path, request))
    if not keep:
        del run.injections[injections:]  # the engine's own call: the flow's request never carries this token


def needs_engine_call(run: PolicyRun, scope: Scope) -> bool:
    """Whether forward-request must be made here rather than by mitmproxy (see the module docstring)."""
    entity = run.extras.get(ENTITY)
    backend = entity[0] if entity else None
    return bool(
        "/" in scope.path
        or run.forward
        or run.backend_called
        or PROXY in run.extras
        or (backend is not None and (backend.is_pool or backend.circuit_breaker))
    )


def apply_entity(run: PolicyRun, scope: Scope) -> Awaitable[None] | None:
    """A single backend's credentials on the request mitmproxy forwards; the awaitable of its managed identity step,
    or None (no coroutine) when no single backend entity is set."""
    entity = run.extras.get(ENTITY)
    if not entity or entity[0].is_pool:
        return None
    _apply_credentials(run.context.request, entity[0])
    return apply_identity(run, scope, run.context.request, entity[0], keep=True)


async def side_send(run: PolicyRun, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                    timeout: float, **extra: Any) -> Response:  # fmt: skip
    """One HTTP exchange for side requests and engine-made backend calls, through ``<proxy>`` when one is set
    (``extra``: the sender's other options, e.g. a client certificate)."""
    from .http import default_send

    send: Any = run.services.send or default_send
    proxy = run.extras.get(PROXY)
    if proxy:
        extra["proxy"] = proxy
    return await asyncio.wait_for(send(method, url, headers, body, timeout, **extra), timeout + 1)  # type: ignore[no-any-return]


async def call_backend(run: PolicyRun, scope: Scope, timeout: float) -> None:
    """forward-request made by the engine: pick the pool member, apply credentials, send, count breaker
    outcomes, and make the answer ``context.Response``."""
    main = run.context.request
    request = Request(main.method, main.url.copy(), Headers(main.headers.pairs()),
                      Body(main.body.content) if main.body is not None else None, main.ip_address)  # fmt: skip
    backend: Backend | None = None
    entity = run.extras.get(ENTITY)
    if entity:
        chosen, base = entity
        backends = run.services.settings.get("backends") or {}
        backend = chosen
        if chosen.is_pool:
            member = choose_member(run, chosen)
            if member is None:
                return _unavailable(run, scope, f"Backend pool {chosen.id} is temporarily unavailable")
            backend = backends[member.id]
            request.url = _rebase(request.url, base, backend.url)
            run.trace.add(scope.section, "forward-request", {
                "message": f"Backend pool '{chosen.id}': member '{member.id}' (priority {member.priority}, weight "
                           f"{member.weight}) serves this request.", "backendId": member.id, **UNVERIFIED,
            })  # fmt: skip
        elif tripped(run, chosen.id):
            return _unavailable(run, scope, f"Backend {chosen.id} is temporarily unavailable")
        _apply_credentials(request, backend)
        await apply_identity(run, scope, request, backend, keep=False)
    url = str(request.url)
    headers = [(n, v) for n, v in request.headers.pairs() if n.lower() not in ("content-length", "host")]
    run.trace.add(scope.section, "forward-request", {
        "message": f"Request is being forwarded to the backend service. Timeout set to {timeout:g} seconds",
        "request": {"method": request.method, "url": url, "headers": [{"name": n, "value": v} for n, v in headers]},
    })  # fmt: skip
    run.forward = True
    run.backend_called = True
    body = request.body.content if request.body is not None and request.method not in ("GET", "HEAD") else None
    cert = run.client_certificates.get(id(main))  # authentication-certificate on the forwarded request
    try:
        response = await side_send(run, request.method, url, headers, body, timeout,
                                   **({"client_cert": cert} if cert is not None else {}))  # fmt: skip
    except Exception as e:  # timeouts, connection failures, an injected sender's errors: a failed backend call
        if backend is not None:
            _note_trip(run, scope, record_outcome(run, backend, None, None))
        reason = "Timeout" if isinstance(e, TimeoutError) else "BackendConnectionFailure"
        message = ("HTTP response status code and headers were not received from the backend within the configured "
                   f"timeout ({timeout:g} seconds)." if reason == "Timeout"
                   else f"Could not reach {url}: {type(e).__name__}: {e}")  # fmt: skip
        raise PolicyError("forward-request", message, reason) from None
    if backend is not None:
        _note_trip(run, scope, record_outcome(run, backend, response.status_code, response.headers.get("Retry-After")))
    run.trace.add(scope.section, "forward-request", {
        "response": {"status": {"code": response.status_code, "reason": response.status_reason},
                     "headers": [{"name": n, "value": v} for n, v in response.headers.pairs()]},
    })  # fmt: skip
    run.context.response = response
    error = backend_error_status(run, response.status_code)
    if error is not None:
        raise error


def _note_trip(run: PolicyRun, scope: Scope, message: str | None) -> None:
    if message:
        run.trace.add(scope.section, "forward-request", {"message": message, **UNVERIFIED})


def _unavailable(run: PolicyRun, scope: Scope, reason: str) -> None:
    """Every member tripped: an error (on-error runs) whose response, 503 with the reason, is ``context.Response``
    — also for an enclosing retry's condition, which the AI-gateway samples write against that reason."""
    response = json_response(503, reason)
    response.status_reason = reason
    run.context.response = response
    run.forward = run.backend_called = True
    run.trace.add(scope.section, "forward-request", {
        "message": f"{reason}: every member's circuit breaker is tripped; the backend is not called.",
        "response": {"status": {"code": 503, "reason": reason}}, **UNVERIFIED,
    })  # fmt: skip
    raise ResponseError("forward-request", reason, "BackendUnavailable", response)


# -- retry -------------------------------------------------------------------------------------------------------


def retry_delay(attempt: int, interval: int, max_interval: int | None, delta: int | None, first_fast: bool,
                jitter: float = 1.0) -> float:  # fmt: skip
    """APIM's retry intervals: fixed (interval), linear (interval + (n-1)·delta) or exponential
    (interval + (2^n - 1)·delta·jitter, capped at max-interval) when max-interval is given; the first retry is
    immediate with first-fast-retry."""
    if first_fast and attempt == 1:
        return 0.0
    n = attempt - 1 if first_fast else attempt
    if delta is None:
        wait = float(interval)
    elif max_interval is None:
        wait = float(interval + (n - 1) * delta)
    else:
        wait = interval + (2**n - 1) * delta * jitter
    return min(wait, float(max_interval)) if max_interval is not None else wait


async def retry(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Runs the children once, then again while ``condition`` is true, at most ``count`` more times."""
    count = await int_attr(run, stmt, "count", scope) or 0
    interval = await int_attr(run, stmt, "interval", scope) or 0
    max_interval = await int_attr(run, stmt, "max-interval", scope)
    delta = await int_attr(run, stmt, "delta", scope)
    first_fast = await bool_attr(run, stmt, "first-fast-retry", scope)
    if not 0 <= count <= 50:
        raise PolicyError("retry", f"count must be between 0 and 50 (got {count}).", "ExpressionValueEvaluationFailure")
    attempt = 0
    while True:
        failure: ResponseError | None = None
        try:
            await run_statements(run, stmt.children, scope)
        except ResponseError as e:  # a failure that carries its response (pool unavailable): the condition decides
            failure = e
            run.context.response = e.response
        if run.response is not None:
            return
        condition = await evaluate(run, stmt.attrs.get("condition"), "retry", scope)
        if not isinstance(condition, bool):
            raise PolicyError("retry", f"The condition did not evaluate to a boolean (got {condition!r}).",
                              "ExpressionValueEvaluationFailure")  # fmt: skip
        if not condition or attempt >= count:
            run.trace.add(scope.section, "retry", {
                "message": f"Retry condition is {'true' if condition else 'false'} after attempt {attempt + 1}"
                           + ("; retry count exhausted." if condition else "."), **UNVERIFIED,
            })  # fmt: skip
            if failure is not None:
                raise failure
            return
        attempt += 1
        jitter = run.services.state.random.uniform(0.8, 1.2)
        wait = retry_delay(attempt, interval, max_interval, delta, first_fast, jitter)
        run.trace.add(scope.section, "retry", {
            "message": f"Retry condition is true: retry {attempt} of {count} in {math.ceil(wait * 1000)} ms.",
            **UNVERIFIED,
        })  # fmt: skip
        if wait > 0:
            await run.services.state.sleep(wait)


async def proxy(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """``<proxy url username password/>``: side requests (and backend calls apim-mi makes) go through it."""
    url = (await str_attr(run, stmt, "url", scope) or "").strip()
    user = await str_attr(run, stmt, "username", scope)
    password = await str_attr(run, stmt, "password", scope)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PolicyError("proxy", f"The proxy URL '{url}' is not an absolute http(s) URL.",
                          "ExpressionValueEvaluationFailure")  # fmt: skip
    if user:
        from urllib.parse import quote

        url = f"{parts.scheme}://{quote(user, safe='')}:{quote(password or '', safe='')}@{parts.netloc}{parts.path}"
    run.extras[PROXY] = url
    run.trace.add(scope.section, "proxy", {
        "message": f"Requests apim-mi sends for this request go through the proxy {parts.scheme}://{parts.netloc}.",
        **UNVERIFIED,
    })  # fmt: skip


HANDLERS = {"retry": retry, "proxy": proxy}
