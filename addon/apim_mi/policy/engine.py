"""Runs a composed ``Policy`` against a request context, section by section, the way APIM's gateway does.

Each policy element is handled by one function from ``policy/statements``. The engine owns what is common to all
of them: walking statements in order, evaluating attribute values (with APIM's "Expression was successfully
evaluated." trace entries), turning any failure into a ``PolicyError`` (``context.LastError``) and running
``on-error``, and producing APIM's generic 500 when nothing else answered.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import ApimMiError, PolicyError
from ..trace import Trace, deferred
from .expressions import ExpressionRuntimeError, to_policy_string
from .gateway import GatewayState
from .model import Policy, Statement, Value

if TYPE_CHECKING:
    from ..credentials import CredentialSpec
    from ..tokens import TokenProvider
    from .context import Context, Request, Response


class ExecutionLimitError(ApimMiError):
    """A policy nested deeper than any real one (e.g. through recursion in fragments)."""


@dataclass(slots=True)
class Injection:
    """A header that received a token: needed to redact it later and to summarise the flow."""

    header: str
    identity: str
    resource: str
    claims: dict[str, Any]


@dataclass
class Delivered:
    """The backend's answer as the client got it, for the policies that act once it is complete (token counts,
    metrics, the semantic cache): ``body`` is the buffered body, or the copy kept of a streamed one (None when it was
    too large to keep); ``response`` is ``context.Response`` while it can still change (buffered answers only)."""

    status: int
    body: bytes | None
    streamed: bool
    size: int
    sse: Any = None
    response: Response | None = None


OnResponse = Callable[["PolicyRun", Delivered], Awaitable[None]]


@dataclass(slots=True)
class Services:
    """What policies need from outside the request: tokens and (for send-request) an HTTP client."""

    tokens: TokenProvider
    credential_source: str | CredentialSpec = "default"
    send: Callable[..., Awaitable[Any]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    #: What outlives the request (caches, counters, breakers, metrics): one per addon, shared by all flows.
    state: GatewayState = field(default_factory=GatewayState)


@dataclass(slots=True)
class Scope:
    """Where a statement runs: its section, its nested path (``choose[1]/when[2]``) and the request it targets.

    ``request`` is the main request, or the one a ``send-request`` is building.
    """

    section: str
    path: str
    request: Request | None = None


@dataclass(slots=True)
class PolicyRun:
    """The per-request state of one policy execution."""

    policy: Policy
    context: Context
    trace: Trace
    services: Services
    rule_name: str = ""
    response: Response | None = None
    forward: bool = False
    forward_timeout: float = 300.0
    fail_on_error_status: bool = False
    buffer_response: bool = True
    streaming: bool = False
    #: The rarely written sequences (on_response, warnings, token_failures, finalizers, response_headers) are an
    #: empty tuple until their first entry (``add_…``, ``warn``): a flow that needs none makes no list, and every
    #: list a flow keeps in flight is one more object for the garbage collector to visit.
    on_response: Sequence[OnResponse] = ()
    scratch: dict[str, Any] = field(default_factory=dict)  # what policies keep for their on_response actions
    injections: list[Injection] = field(default_factory=list)
    warnings: Sequence[str] = ()
    error: PolicyError | None = None
    token_failures: Sequence[str] = ()
    #: The engine called the backend itself (retry, pools, several forward-requests): ``context.response`` holds
    #: the final answer and outbound runs here, not after the proxy forwards.
    backend_called: bool = False
    #: Per-request state of statement families (the response-cache key, the proxy for side requests …).
    extras: dict[str, Any] = field(default_factory=dict)
    #: Run once the request is over, whatever its outcome (rate-limit increment-condition on the final response).
    finalizers: Sequence[Callable[[], None]] = ()
    #: Headers the caller's response gets whatever produced it (cors on an allowed cross-origin request).
    response_headers: Sequence[tuple[str, str]] = ()
    #: authentication-certificate's choice per request object (the main request, or a send-request's).
    client_certificates: dict[int, Any] = field(default_factory=dict)

    def add_on_response(self, action: OnResponse) -> None:
        """An action for the complete answer (``deliver``)."""
        self.on_response = [*self.on_response, action]

    def add_finalizer(self, finalizer: Callable[[], None]) -> None:
        """Run once the request is over (``finish``)."""
        self.finalizers = [*self.finalizers, finalizer]

    def add_response_header(self, name: str, value: str, *, replace: bool = False) -> None:
        """A header for the caller's response, whatever produced it (``replace``: instead of any of that name)."""
        kept = [(n, v) for n, v in self.response_headers if n.lower() != name.lower()] if replace else \
            self.response_headers
        self.response_headers = [*kept, (name, value)]

    def add_token_failure(self, failure: str) -> None:
        """A token that could not be obtained while the policy went on (ignore-error)."""
        self.token_failures = [*self.token_failures, failure]

    def add_secret(self, secret: str) -> None:
        """Registers a token so no trace entry can ever show it."""
        self.trace.secrets.add(secret)

    def warn(self, section: str, source: str, message: str) -> None:
        """An emulator-only diagnostic: kept for the summary and written to the trace, marked as such."""
        self.warnings = [*self.warnings, message]
        self.trace.add(section, source, {"message": message, "emulator": "apim-mi diagnostic"})


#: A statement's handler: a coroutine function, or (for a statement that never waits) a plain function that returns
#: None, or the awaitable of what it hands on (``choose``'s branch); either way, no coroutine per flow when none waits.
Handler = Callable[[PolicyRun, Statement, Scope], Awaitable[None] | None]


#: What a statement runs per flow once its handler resolved it (``Binder``): called with (run, scope).
Bound = Callable[[PolicyRun, Scope], Awaitable[None] | None]
#: A handler's resolution of one statement, done once when its list is first run (``steps``): the statement's
#: per-flow callable (typically a ``functools.partial`` of the handler's body over what it derived from the statement,
#: so a flow pays neither the ``prepared`` lookup nor a Python call of its own for it), or ``SKIP`` for a statement
#: that does nothing when it runs. It must not raise: it only parses what the handler itself would parse.
Binder = Callable[[Statement], "Bound | None"]

#: A binder's answer for a statement with nothing to run (``<base/>`` left at the global scope).
SKIP: Bound | None = None

_HANDLERS: tuple[Mapping[str, Handler], Mapping[str, Binder]] | None = None


def _handlers() -> tuple[Mapping[str, Handler], Mapping[str, Binder]]:
    global _HANDLERS
    if _HANDLERS is None:
        from .statements import BINDERS, HANDLERS

        _HANDLERS = HANDLERS, BINDERS
    return _HANDLERS


@lru_cache(maxsize=4096)
def expression_text(text: str) -> str:
    """The expression (a value's ``text``) as APIM's trace shows it: the code inside ``@( )``."""
    src = text.strip()
    if src.startswith("@(") and src.endswith(")"):
        return src[2:-1]
    return src[1:] if src.startswith("@") else src


#: Marks trace entries whose wording APIM's documentation and real traces do not show.
UNVERIFIED = {"emulator": "wording not verified against Azure"}


def record_code_traces(run: PolicyRun, source: str, scope: Scope) -> None:
    """Entries for the ``context.Trace(message)`` calls the expression just made, under the calling policy."""
    traces = run.context.traces
    if traces:
        for message in traces:
            run.trace.add(scope.section, source, {"message": message, **UNVERIFIED})
        traces.clear()


async def evaluate(run: PolicyRun, value: Value | None, source: str, scope: Scope) -> Any:
    """A literal, or an expression evaluated with APIM's trace entry; failures become ``PolicyError``."""
    return evaluate_now(run, value, source, scope)


async def evaluate_string(run: PolicyRun, value: Value | None, source: str, scope: Scope) -> str | None:
    """Like ``evaluate`` but converted the way APIM converts a value for a header or attribute."""
    return evaluate_string_now(run, value, source, scope)


def evaluate_now(run: PolicyRun, value: Value | None, source: str, scope: Scope, as_string: bool = False) -> Any:
    """``evaluate`` for a caller that is not a coroutine, or that runs on every flow (no coroutine to await);
    ``as_string``: converted as ``evaluate_string`` converts it."""
    if value is None:
        return None
    expression = value.expression
    if expression is None:
        return value.text
    context = run.context
    closure = expression.closure
    try:
        # the compiled closure called here, as ``evaluate`` calls it (one call fewer per expression and flow)
        result = closure(context, None) if closure is not None else expression.evaluate(context)
    except Exception as error:
        e = expression.failure(error) if closure is not None else error
        if not isinstance(e, ExpressionRuntimeError):
            raise
        record_code_traces(run, source, scope)
        raise PolicyError(
            source,
            f"Expression evaluation failed. {e.message}",
            "ExpressionValueEvaluationFailure",
            section=scope.section,
            path=scope.path,
        ) from None
    if context.traces:
        record_code_traces(run, source, scope)
    t = type(result)
    if t is str or t is bool or result is None or isinstance(result, int | float):  # as the policy string shows
        shown = result
    else:
        shown = to_policy_string(result)
    run.trace.add(scope.section, source, (_EVALUATED, value.text, shown))
    if as_string and result is not None and not isinstance(result, str):
        return shown if shown is not result else to_policy_string(result)  # the string already made for the trace
    return result


def evaluated_entry(text: str, shown: Any) -> dict[str, Any]:
    """APIM's trace entry of an evaluated expression, built when the trace is read (``shown``: the result, or its
    policy string taken when it was evaluated)."""
    return {"message": "Expression was successfully evaluated.", "expression": expression_text(text), "value": shown}


_EVALUATED = deferred(evaluated_entry)


def evaluate_string_now(run: PolicyRun, value: Value | None, source: str, scope: Scope) -> str | None:
    """``evaluate_string`` without a coroutine (see ``evaluate_now``)."""
    return evaluate_now(run, value, source, scope, True)  # type: ignore[no-any-return]


class Step(NamedTuple):
    """A statement resolved for running: its handler (None: not supported), its path (``choose[1]/when[2]``) and,
    when the handler binds statements, what runs per flow instead (``call``)."""

    stmt: Statement
    handler: Handler | None
    path: str
    too_deep: bool
    call: Bound | None


#: Statement lists whose steps a policy keeps (beyond it, lists made per flow are resolved each time).
MAX_CACHED_LISTS = 512


def steps(policy: Policy, statements: list[Statement], parent: str) -> tuple[Step, ...]:
    """``statements`` resolved once per (list, parent path) and kept by ``policy``: handler lookup, per-name
    counters, path strings and each statement's binding are not redone per flow. A statement whose binder answers
    ``SKIP`` has no step (its path still counts)."""
    key = (id(statements), parent)
    cached = policy.compiled.get(key)
    if cached is not None and cached[0] is statements and cached[1] == len(statements):
        return cached[2]  # type: ignore[no-any-return]
    handlers, binders = _handlers()
    counts: dict[str, int] = {}
    out = []
    for stmt in statements:
        counts[stmt.name] = counts.get(stmt.name, 0) + 1
        path = f"{parent}/{stmt.name}[{counts[stmt.name]}]" if parent else f"{stmt.name}[{counts[stmt.name]}]"
        too_deep = path.count("/") > 64
        binder = binders.get(stmt.name)
        if binder is None or too_deep:
            out.append(Step(stmt, handlers.get(stmt.name), path, too_deep, None))
        elif (call := binder(stmt)) is not SKIP:
            out.append(Step(stmt, handlers.get(stmt.name), path, too_deep, call))
    resolved = tuple(out)
    if len(policy.compiled) < MAX_CACHED_LISTS:  # the entry holds the list, so its id is not reused meanwhile
        policy.compiled[key] = (statements, len(statements), resolved)
    return resolved


def prepared[T](stmt: Statement, build: Callable[[Statement], T]) -> T:
    """What ``build`` derives from the statement alone (literal attributes parsed, documented defaults looked up),
    computed on first use and kept with the statement: a handler's per-flow work is then only what depends on the
    request. ``build`` must not look at anything but ``stmt``."""
    cache = stmt.compiled
    if cache is not None:
        found = cache.get(build, _ABSENT)
        if found is not _ABSENT:
            return found  # type: ignore[no-any-return]
    return memo(stmt, build, build, stmt)


_ABSENT = object()


def memo[T](stmt: Statement, key: Hashable, compute: Callable[..., T], *args: Any) -> T:
    """Like ``prepared``, for a value that ``key`` names (e.g. one attribute's parsed literal): ``compute(*args)``
    on first use (arguments rather than a closure, so a kept value costs no closure per flow); a ``compute`` that
    raises is not kept, so the error is raised again on the next flow."""
    cache = stmt.compiled
    if cache is None:
        cache = stmt.compiled = {}
    try:
        return cache[key]  # type: ignore[no-any-return]
    except KeyError:
        value = cache[key] = compute(*args)
        return value


async def run_statements(run: PolicyRun, statements: list[Statement], scope: Scope, own: bool = False) -> None:
    """Statements in document order; stops as soon as one answers the request (return-response). ``own``: the
    caller made ``scope`` for this call alone and never reads it again, so it serves as the list's own scope."""
    section = scope.section
    # One scope for the whole list, its path set per statement: no allocation per statement. Safe because a
    # handler finishes (its awaitable is awaited) before the next statement runs, and nothing reads a scope's path
    # after its handler returned.
    listed = steps(run.policy, statements, scope.path)
    inner = scope if own else Scope(section, "", scope.request)
    for stmt, handler, path, too_deep, call in listed:
        if run.response is not None:
            return
        if too_deep:
            raise ExecutionLimitError(f"policy nesting deeper than 64 levels at {stmt.location}")
        if handler is None:
            from .catalog import CATALOG

            spec = CATALOG.get(stmt.name)
            why = f" {spec.limits}" if spec is not None and spec.limits else ""
            raise PolicyError(
                stmt.name,
                f"Policy '{stmt.name}' is not supported by apim-mi (declared at {stmt.location}).{why}",
                "PolicyNotSupported",
                section=section,
                path=path,
                policy_id=stmt.policy_id,
            )
        try:
            inner.path = path
            pending = handler(run, stmt, inner) if call is None else call(run, inner)
            if pending is not None:
                await pending
        except PolicyError as e:
            e.section = e.section or section
            e.path = e.path or path
            e.policy_id = e.policy_id or stmt.policy_id
            raise


def run_section(run: PolicyRun, section: str) -> Awaitable[None]:
    """One section of the effective policy: inbound/backend act on the main request, outbound on the response (the
    statements' coroutine, for the caller to await: no coroutine of its own)."""
    request = run.context.request if section in ("inbound", "backend") else None
    return run_statements(run, run.policy.sections.get(section, []), Scope(section, "", request), own=True)


async def handle_error(run: PolicyRun, error: PolicyError) -> None:
    """APIM's error flow: record ``context.LastError``, run on-error, and answer 500 if nothing else did."""
    from .context import LastError

    run.error = error
    run.response = None
    run.context.last_error = LastError(
        source=error.source,
        reason=error.reason,
        message=error.message,
        scope="",
        section=error.section,
        path=error.path,
        policy_id=error.policy_id,
    )
    run.trace.add(
        "on-error",
        error.source or "apim-mi",
        {
            "message": error.message,
            "reason": error.reason,
            "section": error.section,
            "path": error.path,
            "policyId": error.policy_id,
        },
    )
    # The response being built: what the failing policy answers (check-header's 401 …) or APIM's generic 500.
    # on-error's set-status/set-header/set-body act on it (context.Response); return-response replaces it.
    error_response = getattr(error, "response", None)
    run.context.response = error_response if error_response is not None else internal_server_error(run.context)
    statements = run.policy.sections.get("on-error", [])
    if statements:
        try:
            await run_statements(run, statements, Scope("on-error", "", None), own=True)
        except (PolicyError, ExecutionLimitError) as e:
            run.trace.add("on-error", getattr(e, "source", "") or "apim-mi", {"message": str(e)})
            run.response = internal_server_error(run.context)
    if run.response is None:
        run.response = run.context.response or internal_server_error(run.context)


def internal_server_error(context: Context) -> Response:
    """APIM's generic gateway 500; the real cause is only in the trace, as in Azure."""
    from .context import Body, Headers, Response

    body = json.dumps(
        {"statusCode": 500, "message": "Internal server error", "activityId": str(context.request_id)}, indent=4
    ).encode()
    return Response(
        status_code=500,
        status_reason="Internal Server Error",
        headers=Headers([("Content-Type", "application/json; charset=utf-8")]),
        body=Body(body),
    )


async def run_inbound(run: PolicyRun) -> None:
    """inbound then backend (up to forward-request); any failure goes through on-error.

    A backend section that never reaches forward-request does not call the backend (APIM's "Do not forward requests
    to backend"): outbound runs at once on an empty 200, and that is the answer.
    """
    if run.context.subscription is None and run.context.api is None:  # an APIM instance's gateway already decided
        run.context.subscription = run.services.state.subscription_of(run.context.request)
    try:
        await run_section(run, "inbound")
        if run.response is None:
            await run_section(run, "backend")
    except PolicyError as e:
        await handle_error(run, e)
    except ExecutionLimitError as e:
        await handle_error(run, PolicyError("apim-mi", str(e), "ExecutionLimit"))
    if run.response is None and run.backend_called:
        answer = run.context.response
        if run.on_response and answer is not None:  # the engine's own backend call: a buffered answer
            body = answer.body.content if answer.body is not None else b""
            await deliver(run, Delivered(answer.status_code, body, False, len(body), response=answer))
        await run_outbound(run)
        if run.response is None:
            run.response = run.context.response
    if run.response is None and not run.forward and not run.backend_called:
        from .context import Body, Headers, Response

        run.trace.add("backend", "apim-mi", {
            "message": "The backend section has no forward-request: the backend service is not called.", **UNVERIFIED
        })  # fmt: skip
        run.context.response = Response(200, "OK", Headers(), Body(b""))
        await run_outbound(run)
        if run.response is None:
            run.response = run.context.response


def backend_error_status(run: PolicyRun, status: int) -> PolicyError | None:
    """forward-request's ``fail-on-error-status-code``: a 400–599 answer goes through on-error."""
    if not run.fail_on_error_status or not 400 <= status <= 599:
        return None
    return PolicyError(
        "forward-request",
        f"Backend service responded with status code {status} and fail-on-error-status-code is true.",
        "BackendErrorStatusCode",
        section="backend",
    )


async def deliver(run: PolicyRun, delivered: Delivered) -> None:
    """The ``on_response`` actions policies registered, in order; a failing one is traced, never raised (the answer
    is already on its way, or about to be)."""
    for action in run.on_response:
        try:
            await action(run, delivered)
        except PolicyError as e:
            run.trace.add("outbound", e.source or "apim-mi", {"message": e.message, "reason": e.reason})


async def run_outbound(run: PolicyRun) -> None:
    """outbound against the backend's response; failures go through on-error, which answers instead."""
    try:
        await run_section(run, "outbound")
    except PolicyError as e:
        await handle_error(run, e)
    except ExecutionLimitError as e:
        await handle_error(run, PolicyError("apim-mi", str(e), "ExecutionLimit"))


def finish(run: PolicyRun) -> None:
    """The request is over (answered, forwarded and answered, or failed): run the finalizers once."""
    finalizers, run.finalizers = run.finalizers, ()
    for f in finalizers:
        f()
