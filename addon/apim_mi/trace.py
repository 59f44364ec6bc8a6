"""APIM-shaped request traces: recording entries while policies run, and rendering them like the portal.

The JSON shape is APIM's (``{traceId, traceEntries: {inbound, backend, outbound, on-error}}``, entries
``{source, timestamp, elapsed, data}`` with a 7-digit fraction and a .NET TimeSpan), so a trace can be compared with
one from Azure. Nothing here ever sees a token: callers pass claims, not secrets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SECTIONS: tuple[str, ...] = ("inbound", "backend", "outbound", "on-error")
METADATA_KEY = "apim_mi"


def format_timestamp(epoch: float) -> str:
    """``2023-05-03T12:03:04.6899436Z``: UTC with 7 fractional digits, as APIM writes it."""
    whole = int(epoch)
    ticks = round((epoch - whole) * 10_000_000)
    if ticks >= 10_000_000:
        whole, ticks = whole + 1, ticks - 10_000_000
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ticks:07d}Z"


def format_elapsed(seconds: float) -> str:
    """A .NET TimeSpan in the ``c`` format: ``00:00:00.2983315``."""
    ticks = max(round(seconds * 10_000_000), 0)
    secs, frac = divmod(ticks, 10_000_000)
    hours, rest = divmod(secs, 3600)
    minutes, s = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{s:02d}.{frac:07d}"


def parse_elapsed(text: str) -> float:
    """Inverse of ``format_elapsed`` (used when rendering saved traces)."""
    hms, _, frac = text.partition(".")
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s + (int(frac.ljust(7, "0")[:7]) / 10_000_000 if frac else 0.0)


REDACTED = "[token redacted]"


def scrub(data: Any, secrets: set[str]) -> Any:
    """``data`` with every secret replaced, however deeply it is nested (a header value, an expression result)."""
    if isinstance(data, str):
        for secret in secrets:
            if secret and secret in data:
                data = data.replace(secret, REDACTED)
        return data
    if isinstance(data, dict):
        return {k: scrub(v, secrets) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [scrub(v, secrets) for v in data]
    return data


@dataclass
class Trace:
    """Entries of one request, timed from when the proxy received it."""

    trace_id: str
    started: float = field(default_factory=time.time)
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    entries: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    secrets: set[str] = field(default_factory=set, repr=False)
    _t0: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self._t0

    def add(self, section: str, source: str, data: Any) -> dict[str, Any]:
        el = self.elapsed()
        entry = {
            "source": source,
            "timestamp": format_timestamp(self.started + el),
            "elapsed": format_elapsed(el),
            "data": scrub(data, self.secrets) if self.secrets else data,
        }
        self.entries.setdefault(section, []).append(entry)
        return entry

    def to_json(self) -> dict[str, Any]:
        """The APIM document; sections with no entries are left out, as APIM leaves out a skipped backend."""
        return {"traceId": self.trace_id, "traceEntries": {k: v for k, v in self.entries.items() if v}}


def render(trace: dict[str, Any]) -> str:
    """Portal style: ``source (0.273 ms)`` then the pretty-printed data, section by section.

    The per-step time is the difference of consecutive ``elapsed`` values (what the portal shows).
    """
    lines = [f"traceId: {trace.get('traceId', '')}"]
    previous = 0.0
    for section in SECTIONS:
        entries = trace.get("traceEntries", {}).get(section) or []
        if not entries:
            continue
        lines.append("")
        lines.append(section.replace("-", " ").title().replace(" ", "-") if section == "on-error" else section.title())
        for entry in entries:
            try:
                now = parse_elapsed(str(entry.get("elapsed", "")))
            except ValueError:
                now = previous
            lines.append(f"    {entry.get('source', '?')} ({max(now - previous, 0.0) * 1000:.3f} ms)")
            previous = now
            body = entry.get("data")
            text = body if isinstance(body, str) else json.dumps(body, indent=4, ensure_ascii=False)
            lines.extend("    " + line for line in text.splitlines())
    return "\n".join(lines) + "\n"
