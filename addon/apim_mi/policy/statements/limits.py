"""Limits: rate-limit, rate-limit-by-key (sliding windows), quota, quota-by-key (fixed renewal periods) per
subscription or counter key in the gateway's state, and limit-concurrency (requests in flight per key). Quota
periods lie on APIM's wall-clock grid, ``first-period-start`` (default 0001-01-01T00:00:00Z) plus whole periods.

Exceeded limits answer as APIM does: 429 ``Rate limit is exceeded. Try again in N seconds.`` with ``Retry-After``
(or the ``retry-after-header-name`` that replaces it), 403 ``Out of call volume quota. Quota will be replenished in
hh:mm:ss.``, and go through on-error with ``context.LastError.Reason`` RateLimitExceeded / QuotaExceeded. An
``increment-condition``, or an ``increment-count`` written as an expression, defers its evaluation and the counter's
increment to the end of the request (APIM: "to the end of the outbound pipeline"), so a request is counted by its
final response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ...errors import PolicyError
from ..catalog import FIRST_PERIOD_START, RATE_LIMIT_MAX_PERIOD
from ..engine import UNVERIFIED, PolicyRun, Scope, run_statements
from ..model import Statement
from ._common import ResponseError, int_attr, json_response, str_attr


@dataclass
class Window:
    """A quota's renewal period: when it started, the calls and kilobytes counted in it."""

    start: float
    period: float
    calls: int = 0
    kilobytes: float = 0.0

    def used(self, now: float) -> int:
        return self.calls

    def add(self, now: float, count: int) -> None:
        self.calls += count

    def wait(self, now: float) -> float:
        """Seconds until the counter has room again (the period renews)."""
        return self.start + self.period - now

    def expired(self, now: float) -> bool:
        return self.wait(now) <= 0


@dataclass
class Sliding:
    """A rate limit's sliding window (APIM: "the length in seconds of the sliding window"): the calls of the last
    ``period`` seconds, as (time, count)."""

    period: float
    events: list[tuple[float, int]] = field(default_factory=list)
    kilobytes: float = 0.0

    def _prune(self, now: float) -> None:
        horizon = now - self.period
        while self.events and self.events[0][0] <= horizon:
            self.events.pop(0)

    def used(self, now: float) -> int:
        self._prune(now)
        return sum(n for _, n in self.events)

    def add(self, now: float, count: int) -> None:
        self.events.append((now, count))

    def wait(self, now: float) -> float:
        """Seconds until the oldest counted call leaves the window."""
        self._prune(now)
        return self.events[0][0] + self.period - now if self.events else 0.0

    def expired(self, now: float) -> bool:
        return False


Counter = Window | Sliding


def _window(run: PolicyRun, key: str, period: int, anchor: float | None) -> Counter:
    """The counter of ``key``: a sliding window for a rate limit (``anchor`` None), else the quota period that
    holds now, on the grid ``anchor + k * period`` of wall-clock time."""
    state = run.services.state
    now = state.clock()
    window = state.windows.get(key)
    kind = Sliding if anchor is None else Window
    if not isinstance(window, kind) or window.expired(now) or window.period != period:
        if anchor is None:
            window = Sliding(float(period))
        else:
            wall = state.wall_clock()
            window = Window(now - (wall - anchor) % period, float(period))
        state.windows[key] = window
    return window


def _anchor(stmt: Statement) -> float:
    """quota-by-key's first-period-start as Unix seconds (no offset given: UTC); quota's periods start on APIM's
    default, 0001-01-01T00:00:00Z."""
    text = (stmt.attr("first-period-start") or FIRST_PERIOD_START).strip()
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise PolicyError(stmt.name, f"first-period-start '{text}' is not an ISO 8601 date and time "
                          "(yyyy-MM-ddTHH:mm:ssZ).", "ExpressionValueEvaluationFailure") from None  # fmt: skip
    return (start if start.tzinfo else start.replace(tzinfo=UTC)).timestamp()


def timespan(seconds: float) -> str:
    """.NET's TimeSpan text, as APIM's quota message shows it: ``hh:mm:ss`` or ``d.hh:mm:ss``."""
    total = max(0, math.ceil(seconds))
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days}." if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _subject(run: PolicyRun) -> str:
    sub = run.context.subscription
    return sub.id if sub is not None else "anonymous"


async def _counter(run: PolicyRun, stmt: Statement, scope: Scope) -> str:
    if stmt.name.endswith("-by-key"):
        key = await str_attr(run, stmt, "counter-key", scope)
        if not key:
            raise PolicyError(stmt.name, "The counter key is empty.", "ExpressionValueEvaluationFailure")
        return f"{stmt.name}\x1fkey={key}"
    return f"{stmt.name}\x1fsubscription={_subject(run)}"


def _scoped(run: PolicyRun, stmt: Statement) -> list[tuple[str, Statement]]:
    """rate-limit / quota's <api>/<operation> children that match this request's API and operation."""
    out: list[tuple[str, Statement]] = []
    api, op = run.context.api, run.context.operation
    for a in stmt.children_named("api"):
        if api is None or (a.attr("name") or a.attr("id")) not in (api.name, api.id):
            continue
        out.append((f"api={api.id or api.name}", a))
        for o in a.children_named("operation"):
            if op is not None and (o.attr("name") or o.attr("id")) in (op.name, op.id):
                out.append((f"api={api.id or api.name}\x1foperation={op.id or op.name}", o))
    return out


def _count_later(run: PolicyRun, stmt: Statement, windows: list[Counter], count: int, deferred: bool,
                 quota: bool) -> None:  # fmt: skip
    """At the end of the request: a deferred increment (increment-condition / an increment-count expression, on
    the final response) and a quota's bandwidth."""
    condition = stmt.attrs.get("increment-condition")
    count_value = stmt.attrs.get("increment-count")
    request_bytes = len(run.context.request.body.content) if run.context.request.body else 0

    def finish() -> None:
        counted, n = True, count
        try:
            if condition is not None:
                counted = condition.evaluate(run.context) is True
            if count_value is not None and count_value.is_expression:
                n = int(str(count_value.evaluate(run.context)).strip())
        except Exception as e:  # the request is over: nothing can answer differently any more
            run.trace.add("outbound", stmt.name, {"message": f"Counting this request failed: {e}", **UNVERIFIED})
            counted = False
        now = run.services.state.clock()
        response = run.context.response
        size = request_bytes + (len(response.body.content) if response is not None and response.body else 0)
        for w in windows:
            if deferred and counted:
                w.add(now, n)
            if quota:
                w.kilobytes += size / 1024

    run.add_finalizer(finish)


async def _limit(run: PolicyRun, stmt: Statement, scope: Scope, *, quota: bool) -> None:
    counter = await _counter(run, stmt, scope)
    count_value = stmt.attrs.get("increment-count")
    deferred = "increment-condition" in stmt.attrs or (count_value is not None and count_value.is_expression)
    count = 1
    if count_value is not None and not count_value.is_expression:
        count = await int_attr(run, stmt, "increment-count", scope) or 0
    checks: list[tuple[str, Statement]] = [(counter, stmt)] + [
        (f"{counter}\x1f{suffix}", child) for suffix, child in _scoped(run, stmt)
    ]
    windows: list[tuple[Counter, int | None, int | None, Statement]] = []
    for key, spec in checks:
        calls = await int_attr(run, spec, "calls", scope, source=stmt.name)
        period = await int_attr(run, spec, "renewal-period", scope, source=stmt.name)
        if period is None and windows:  # an <api>/<operation> without its own period renews with the policy's
            period = int(windows[0][0].period)
        bandwidth = await int_attr(run, spec, "bandwidth", scope, source=stmt.name) if quota else None
        if not period or period <= 0:
            raise PolicyError(stmt.name, "renewal-period must be a positive number of seconds.",
                              "ExpressionValueEvaluationFailure")  # fmt: skip
        if not quota and period > RATE_LIMIT_MAX_PERIOD:
            raise PolicyError(stmt.name, f"renewal-period is {period} seconds; a rate limit's sliding window is at "
                              f"most {RATE_LIMIT_MAX_PERIOD} seconds.", "ExpressionValueEvaluationFailure")  # fmt: skip
        windows.append((_window(run, key, period, _anchor(stmt) if quota else None), calls, bandwidth, spec))
    now = run.services.state.clock()
    for window, calls, bandwidth, _ in windows:
        if calls is not None and window.used(now) + (0 if deferred else count) > calls - (1 if deferred else 0):
            _exceeded(run, stmt, scope, window.wait(now), calls, quota, "call volume")
        if bandwidth is not None and window.kilobytes >= bandwidth:
            _exceeded(run, stmt, scope, window.wait(now), calls, quota, "bandwidth")
    if not deferred:
        for window, _, _, _ in windows:
            window.add(now, count)
    _count_later(run, stmt, [w for w, *_ in windows], count, deferred, quota)
    window, calls, _, _ = windows[0]
    used = window.used(now)
    remaining = None if calls is None else max(0, calls - used)
    if not quota:
        _report(run, stmt, remaining, calls)
    run.trace.add(scope.section, stmt.name, {
        "message": f"{'Quota' if quota else 'Rate limit'} counter '{counter.split(chr(31), 1)[1]}': "
                   f"{used} of {calls} calls used"
                   + (f", period renews in {math.ceil(window.wait(now))} s" if quota else
                      f" in the last {window.period:g} s")
                   + (" (this request is counted when it is over)." if deferred else "."),
        **UNVERIFIED,
    })  # fmt: skip


def _report(run: PolicyRun, stmt: Statement, remaining: int | None, total: int | None) -> None:
    """remaining-calls-variable-name now; remaining-calls-header-name / total-calls-header-name on the response."""
    if remaining is None:
        return
    variable = stmt.attr("remaining-calls-variable-name")
    if variable:
        run.context.variables[variable] = remaining
    if stmt.attr("remaining-calls-header-name"):
        run.add_response_header(stmt.attr("remaining-calls-header-name") or "", str(remaining))
    if stmt.attr("total-calls-header-name") and total is not None:
        run.add_response_header(stmt.attr("total-calls-header-name") or "", str(total))


def _exceeded(run: PolicyRun, stmt: Statement, scope: Scope, wait: float, calls: int | None, quota: bool,
              what: str) -> None:  # fmt: skip
    seconds = max(1, math.ceil(wait))
    if quota:
        message = f"Out of {what} quota. Quota will be replenished in {timespan(wait)}."
        response = json_response(403, message, one_line=True)
        reason = "QuotaExceeded"
    else:
        message = f"Rate limit is exceeded. Try again in {seconds} seconds."
        # retry-after-header-name: "custom header name, replaces default 'Retry-After'"
        response = json_response(429, message, [(stmt.attr("retry-after-header-name") or "Retry-After", str(seconds))],
                                 one_line=True)  # fmt: skip
        reason = "RateLimitExceeded"
        if stmt.attr("retry-after-variable-name"):
            run.context.variables[stmt.attr("retry-after-variable-name") or ""] = seconds
        if stmt.attr("remaining-calls-header-name"):
            response.headers.set(stmt.attr("remaining-calls-header-name") or "", ["0"])
        if stmt.attr("total-calls-header-name") and calls is not None:
            response.headers.set(stmt.attr("total-calls-header-name") or "", [str(calls)])
        if stmt.attr("remaining-calls-variable-name"):
            run.context.variables[stmt.attr("remaining-calls-variable-name") or ""] = 0
    run.trace.add(scope.section, stmt.name, {"message": message, "renewsInSeconds": seconds})
    # context.LastError.Message as APIM's error table gives it: "Rate limit is exceeded" (the body has the wait)
    raise ResponseError(stmt.name, message if quota else "Rate limit is exceeded", reason, response)


async def rate_limit(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    await _limit(run, stmt, scope, quota=False)


async def quota(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    await _limit(run, stmt, scope, quota=True)


async def limit_concurrency(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """At most ``max-count`` requests with the key run the enclosed statements at a time; more fail at once with
    429 (APIM: "new requests fail immediately with the 429 Too Many Requests status code")."""
    key = await str_attr(run, stmt, "key", scope) or ""
    limit = await int_attr(run, stmt, "max-count", scope) or 0
    state = run.services.state
    busy = state.in_flight.get(key, 0)
    if busy >= limit:
        message = f"Too many concurrent requests for key '{key}' (max-count {limit})."
        run.trace.add(scope.section, stmt.name, {"message": message, **UNVERIFIED})
        raise ResponseError(stmt.name, message, "ConcurrencyLimitExceeded", json_response(429, "Too many requests"))
    state.in_flight[key] = busy + 1
    try:
        await run_statements(run, stmt.children, scope)
    finally:
        left = state.in_flight.get(key, 1) - 1
        if left > 0:
            state.in_flight[key] = left
        else:
            state.in_flight.pop(key, None)


HANDLERS = {
    "rate-limit": rate_limit,
    "rate-limit-by-key": rate_limit,
    "quota": quota,
    "quota-by-key": quota,
    "limit-concurrency": limit_concurrency,
}
