"""Token counters for ``azure-openai-token-limit`` / ``llm-token-limit``: a sliding one-minute window per counter key
(``tokens-per-minute``) and a fixed calendar window per key and period (``token-quota``/``token-quota-period``).

Time comes from an injected clock (wall seconds), so tests move it instead of sleeping. A request reserves what it is
expected to cost (its estimated prompt, or nothing) and settles the reservation with the real count when the response
has been received; both windows see the correction. The counters are shared by every rule and both policy names, as
APIM shares a key's counter across scopes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

WINDOW = 60.0
PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """The UTC calendar window (start, end) of ``period`` containing ``now`` (weeks start on Monday)."""
    t = datetime.fromtimestamp(now, UTC)
    p = period.lower()
    if p == "hourly":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif p == "daily":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif p == "weekly":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=t.weekday())
        end = start + timedelta(days=7)
    elif p == "monthly":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    elif p == "yearly":
        start = t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1)
    else:
        raise ValueError(f"token-quota-period must be one of Hourly, Daily, Weekly, Monthly, Yearly (got '{period}')")
    return start.timestamp(), end.timestamp()


@dataclass
class _Minute:
    entries: deque[list[float]] = field(default_factory=deque)  # [time, tokens], oldest first
    used: float = 0.0

    def prune(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - WINDOW:
            self.used -= self.entries.popleft()[1]


@dataclass
class _Quota:
    start: float
    end: float
    used: int = 0


@dataclass
class Reservation:
    """What one request was charged; ``settle`` replaces it with the real count."""

    key: str
    entry: list[float] | None
    quota: tuple[str, str] | None
    quota_start: float
    tokens: int


class TokenCounters:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._minutes: dict[str, _Minute] = {}
        self._quotas: dict[tuple[str, str], _Quota] = {}

    # -- per minute -------------------------------------------------------------------------------------------

    def minute_used(self, key: str) -> int:
        window = self._minutes.get(key)
        if window is None:
            return 0
        window.prune(self.clock())
        return int(window.used)

    def minute_retry_after(self, key: str, limit: int, need: int) -> int:
        """Seconds until ``used + need <= limit`` (``need`` 0: until ``used < limit``), at least 1."""
        window = self._minutes.get(key)
        now = self.clock()
        if window is None:
            return 1
        window.prune(now)
        used = window.used
        for t, tokens in window.entries:
            used -= tokens
            if (used + need <= limit) if need else (used < limit):
                return max(1, math.ceil(t + WINDOW - now))
        return max(1, math.ceil(WINDOW))

    # -- quota ------------------------------------------------------------------------------------------------

    def _quota(self, key: str, period: str) -> _Quota:
        now = self.clock()
        q = self._quotas.get((key, period.lower()))
        if q is None or now >= q.end:
            start, end = period_bounds(period, now)
            q = self._quotas[(key, period.lower())] = _Quota(start, end)
        return q

    def quota_used(self, key: str, period: str) -> int:
        return self._quota(key, period).used

    def quota_retry_after(self, key: str, period: str) -> int:
        return max(1, math.ceil(self._quota(key, period).end - self.clock()))

    # -- charging ---------------------------------------------------------------------------------------------

    def reserve(self, key: str, tokens: int, *, per_minute: bool, period: str | None) -> Reservation:
        now = self.clock()
        entry = None
        if per_minute:
            window = self._minutes.setdefault(key, _Minute())
            window.prune(now)
            entry = [now, float(tokens)]
            window.entries.append(entry)
            window.used += tokens
        quota_start = 0.0
        if period:
            q = self._quota(key, period)
            q.used += tokens
            quota_start = q.start
        return Reservation(key, entry, (key, period.lower()) if period else None, quota_start, tokens)

    def settle(self, reservation: Reservation, tokens: int) -> None:
        """Replaces what the request was charged with ``tokens`` (in windows it still belongs to)."""
        delta = tokens - reservation.tokens
        reservation.tokens = tokens
        if not delta:
            return
        if reservation.entry is not None:
            window = self._minutes.get(reservation.key)
            reservation.entry[1] += delta
            if window is not None and any(e is reservation.entry for e in window.entries):
                window.used += delta
        if reservation.quota is not None:
            q = self._quotas.get(reservation.quota)
            if q is not None and q.start == reservation.quota_start:
                q.used = max(0, q.used + delta)

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        out: list[dict[str, Any]] = []
        for key, window in sorted(self._minutes.items()):
            window.prune(now)
            out.append({"counterKey": key, "tokensLastMinute": int(window.used)})
        for (key, period), q in sorted(self._quotas.items()):
            out.append({"counterKey": key, "quotaPeriod": period, "quotaTokensUsed": q.used,
                        "quotaResetsAt": datetime.fromtimestamp(q.end, UTC).isoformat()})  # fmt: skip
        return out
