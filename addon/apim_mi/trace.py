"""APIM-shaped request traces: recording entries while policies run, and rendering them like the portal.

The JSON shape is APIM's (``{traceId, traceEntries: {inbound, backend, outbound, on-error}}``, entries
``{source, timestamp, elapsed, data}`` with a 7-digit fraction and a .NET TimeSpan), so a trace can be compared with
one from Azure. Nothing here ever sees a token: callers pass claims, not secrets.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

SECTIONS: tuple[str, ...] = ("inbound", "backend", "outbound", "on-error")
METADATA_KEY = "apim_mi"

# The order keys are shown in: APIM's own order for the keys APIM writes, then the rest alphabetically. Needed
# because dict order is not stable across storage: mitmproxy's flow files (tnetstring) read dicts back reversed,
# and a trace must render the same from memory and from a saved flow.
KEY_ORDER: tuple[str, ...] = (
    "serviceName", "traceId", "traceEntries", *SECTIONS,
    "source", "timestamp", "elapsed", "data",
    "message", "messages", "expression", "name", "value", "errorResponse", "error", "error_description",
    "request", "configuration", "response", "status", "code", "reason", "method", "url", "headers", "header",
    "api", "from", "to", "scheme", "host", "port", "path", "queryString", "query", "isDefaultPort", "version",
    "revision", "operation", "uriTemplate", "user", "product",
    "cached", "claims", "aud", "iss", "appid", "oid", "tid", "iat", "nbf", "exp",
    "section", "policyId", "rule", "definedAt", "emulator",
)  # fmt: skip
_RANK = {k: i for i, k in enumerate(KEY_ORDER)}


def _sort_key(key: Any) -> tuple[int, str]:
    return (_RANK.get(key, len(_RANK)), str(key))


# Canonical order of a dict's keys, by the keys in their current order: trace data has a few dozen shapes, so the
# sort runs once per shape. Only all-str key tuples are cached (1 == True == 1.0 would share an entry otherwise).
_ORDER: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_ORDER_MAX = 4096


def _order(data: dict[Any, Any]) -> tuple[Any, ...]:
    keys = tuple(data)
    order = _ORDER.get(keys)
    if order is None:
        order = tuple(sorted(keys, key=_sort_key))
        if len(_ORDER) < _ORDER_MAX and all(type(k) is str for k in keys):
            _ORDER[keys] = order
    return order


def canonical(data: Any) -> Any:
    """``data`` with every dict's keys in the canonical order (``KEY_ORDER``, then alphabetical); lists keep theirs."""
    t = type(data)
    if t is str or t is int or t is bool or t is float or data is None:
        return data
    if t is dict or isinstance(data, dict):
        return {k: canonical(data[k]) for k in _order(data)}
    if t is list or isinstance(data, list | tuple):
        return [canonical(v) for v in data]
    return data


def _scrub_text(text: str, secrets: set[str] | frozenset[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


# The last whole second formatted (``strftime`` is the expensive part): entries of one request share it.
_LAST_SECOND: tuple[int, str] = (-1, "")


def format_timestamp(epoch: float) -> str:
    """``2023-05-03T12:03:04.6899436Z``: UTC with 7 fractional digits, as APIM writes it."""
    global _LAST_SECOND
    whole = int(epoch)
    ticks = round((epoch - whole) * 10_000_000)
    if ticks >= 10_000_000:
        whole, ticks = whole + 1, ticks - 10_000_000
    last = _LAST_SECOND
    if last[0] == whole:
        return f"{last[1]}.{ticks:07d}Z"
    prefix = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _LAST_SECOND = (whole, prefix)
    return f"{prefix}.{ticks:07d}Z"


def format_elapsed(seconds: float) -> str:
    """A .NET TimeSpan in the ``c`` format: ``00:00:00.2983315``."""
    ticks = max(round(seconds * 10_000_000), 0)
    secs, frac = divmod(ticks, 10_000_000)
    if secs < 60:
        return f"00:00:{secs:02d}.{frac:07d}"
    hours, rest = divmod(secs, 3600)
    minutes, s = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{s:02d}.{frac:07d}"


def parse_elapsed(text: str) -> float:
    """Inverse of ``format_elapsed`` (used when rendering saved traces)."""
    hms, _, frac = text.partition(".")
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s + (int(frac.ljust(7, "0")[:7]) / 10_000_000 if frac else 0.0)


REDACTED = "[token redacted]"


def scrub(data: Any, secrets: set[str] | frozenset[str], ordered: bool = False) -> Any:
    """``data`` with every secret replaced, however deeply it is nested (a header value, an expression result);
    ``ordered``: also in canonical key order, i.e. ``scrub(canonical(data), secrets)`` in one walk."""
    t = type(data)
    if t is str or isinstance(data, str):
        return _scrub_text(data, secrets)
    if t is int or t is bool or t is float or data is None:
        return data
    if t is dict or isinstance(data, dict):
        return {k: scrub(data[k], secrets, ordered) for k in (_order(data) if ordered else data)}
    if t is list or isinstance(data, list | tuple):
        return [scrub(v, secrets, ordered) for v in data]
    return data


#: Trace data computed only when the trace is read: ``(deferred(fn), *args)``, a plain tuple, is ``fn(*args)`` then,
#: where ``args`` are snapshots (immutable values such as mitmproxy's header ``fields`` tuple) taken when the entry was
#: added. The function is kept by its name, not as an object: a tuple of plain values is one the garbage collector
#: stops visiting, and a flow's trace lives as long as the flow (a ``partial`` would stay tracked, with its own tuple).
#: Entry data that is a tuple is always deferred.
Deferred = tuple[Any, ...]


@lru_cache(maxsize=256)
def deferred(fn: Callable[..., Any]) -> str:
    """The name a deferred entry keeps for ``fn`` (a module-level function: found again by its name)."""
    name = f"{fn.__module__}:{fn.__qualname__}"
    if _function(name) is not fn:
        raise ValueError(f"{name} is not a module-level function, so a trace cannot find it by its name")
    return sys.intern(name)


@lru_cache(maxsize=256)
def _function(name: str) -> Callable[..., Any]:
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found  # type: ignore[no-any-return]


def later(fn: Callable[..., Any], *args: Any) -> Deferred:
    """``fn(*args)`` as an entry's data, computed when the trace is read (hot paths build the tuple themselves, with
    the name ``deferred`` gave once)."""
    return (deferred(fn), *args)


def computed(data: Any) -> Any:
    """An entry's data as it is shown: a deferred entry's computed."""
    if type(data) is tuple:
        return _function(data[0])(*data[1:])
    return data

#: One recorded step, ``(section, source, data, seconds since receipt)`` as given. The trace keeps its entries'
#: items in one flat list (four per entry), not a tuple each: a flow's trace lives as long as the flow, so every
#: object it holds is one more for the garbage collector to visit while the flow is in flight; and it holds nothing
#: that holds the trace (no reference cycle).
Entry = tuple[str, str, Any, float]


def finished(entry: Entry, started: float, secrets: set[str] | frozenset[str]) -> dict[str, Any]:
    """The entry as the APIM document shows it: timestamps formatted, deferred data computed, canonical key order,
    secrets scrubbed (``started``: the trace's start, epoch seconds)."""
    _, source, data, el = entry
    data = computed(data)
    if secrets:
        source = scrub(source, secrets)
        data = scrub(data, secrets, ordered=True)
    else:
        data = canonical(data)
    return {
        "source": source,
        "timestamp": format_timestamp(started + el),
        "elapsed": format_elapsed(el),
        "data": data,
    }


# The clocks a trace reads, as they were when this module was loaded (a test may replace ``time``'s).
_NOW, _CLOCK = time.time, time.perf_counter


@dataclass(slots=True)
class Trace:
    """Entries of one request, timed from when the proxy received it (``started``, epoch seconds).

    Recording is cheap (``add`` keeps what it is given and the time); the APIM document (``to_json``, ``entries``)
    is built when something reads it, and then every entry is scrubbed of every secret registered by then. So data
    passed to ``add`` must not change afterwards: pass fresh values, or a deferred tuple over immutable snapshots.
    """

    trace_id: str
    started: float = field(default_factory=_NOW)
    clock: Callable[[], float] = field(default=_CLOCK, repr=False)
    secrets: set[str] = field(default_factory=set, repr=False)
    _t0: float = field(default=math.nan, repr=False)  # clock() when it started; NaN: now
    _added: list[Any] = field(default_factory=list, repr=False)  # four items per entry (``Entry``), flat
    # the finished entries by section, and (entries, secrets) counts they were built with
    _built: dict[str, list[dict[str, Any]]] | None = field(default=None, repr=False)
    _built_for: tuple[int, int] = field(default=(-1, -1), repr=False)

    @classmethod
    def since(cls, trace_id: str, received: float | None) -> Trace:
        """A trace whose clock started when the request was received (``received``: epoch seconds, e.g.
        ``flow.request.timestamp_start``), so ``elapsed`` counts from receipt as in APIM."""
        return cls.began(trace_id, received, _NOW(), _CLOCK())

    @classmethod
    def began(cls, trace_id: str, received: float | None, now: float, now_clock: float) -> Trace:
        """``since`` for a trace built after the fact: ``now`` (epoch seconds) and ``now_clock`` (``clock()``) are
        when the request's processing began; entries then come with their times (``add_at``)."""
        trace = object.__new__(cls)  # what __init__ would set, without its default factories (one trace per flow)
        trace.trace_id, trace.clock, trace.secrets, trace._added = trace_id, _CLOCK, set(), []
        trace._built, trace._built_for = None, (-1, -1)
        if received is not None and 0 <= now - received < 3600:  # counted from receipt
            now_clock -= now - received
            now = received
        trace.started, trace._t0 = now, now_clock
        return trace

    def __post_init__(self) -> None:
        if math.isnan(self._t0):
            self._t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self._t0

    def add(self, section: str, source: str, data: Any) -> None:
        self._added += (section, source, data, self.clock() - self._t0)

    def add_at(self, at: float, section: str, source: str, data: Any) -> None:
        """``add`` of a step that happened at ``at`` (a ``clock()`` value)."""
        self._added += (section, source, data, at - self._t0)

    def __len__(self) -> int:
        return len(self._added) // 4

    @property
    def entries(self) -> dict[str, list[dict[str, Any]]]:
        """The finished entries by section (every APIM section present, empty ones too)."""
        secrets = self.secrets
        if self._built is None or self._built_for != (len(self._added), len(secrets)):
            built: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
            started, added = self.started, self._added
            for i in range(0, len(added), 4):
                entry: Entry = (added[i], added[i + 1], added[i + 2], added[i + 3])
                section = built.get(entry[0])
                if section is None:
                    section = built[entry[0]] = []
                section.append(finished(entry, started, secrets))
            self._built, self._built_for = built, (len(self._added), len(secrets))
        return self._built

    def to_json(self) -> dict[str, Any]:
        """The APIM document, in canonical key order; sections with no entries are left out, as APIM leaves out a
        skipped backend."""
        sections = {k: list(v) for k, v in self.entries.items() if v}
        return {"traceId": self.trace_id, "traceEntries": {k: sections[k] for k in _order(sections)}}


def render(trace: dict[str, Any]) -> str:
    """Portal style: ``source (0.273 ms)`` then the pretty-printed data, section by section.

    The per-step time is the difference of consecutive ``elapsed`` values (what the portal shows). Keys are put in
    canonical order first, so a trace renders identically from memory and after a round trip through a flow file.
    """
    trace = canonical(trace)
    lines = [f"traceId: {trace.get('traceId', '')}"]
    previous = 0.0
    for section in SECTIONS:
        entries = trace.get("traceEntries", {}).get(section) or []
        if not entries:
            continue
        lines.append("")
        lines.append("On error" if section == "on-error" else section.title())
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


def _gist(data: Any) -> str:
    """One line saying what an entry is about: its message, the request/response line, or compact JSON."""
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        message = data.get("message")
        if isinstance(message, list):
            return "; ".join(str(m) for m in message)
        if message is not None:
            return str(message)
        if isinstance(data.get("request"), dict):
            return f"{data['request'].get('method', '')} {data['request'].get('url', '')}".strip()
        if isinstance(data.get("response"), dict):
            status = data["response"].get("status") or {}
            return f"response {status.get('code', '')} {status.get('reason', '')}".strip()
        if "configuration" in data:
            return "configuration"
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def outline(trace: dict[str, Any]) -> str:
    """One line per entry (section, source, step time, what it says): the trace at a glance, above ``render``."""
    trace = canonical(trace)
    rows: list[tuple[str, str, str, str]] = []
    previous = 0.0
    for section in SECTIONS:
        for entry in trace.get("traceEntries", {}).get(section) or []:
            try:
                now = parse_elapsed(str(entry.get("elapsed", "")))
            except ValueError:
                now = previous
            ms = f"{max(now - previous, 0.0) * 1000:.3f} ms"
            previous = now
            rows.append((section, str(entry.get("source", "?")), ms, _gist(entry.get("data"))))
    if not rows:
        return ""
    w_section = max(len(r[0]) for r in rows)
    w_source = max(len(r[1]) for r in rows)
    w_ms = max(len(r[2]) for r in rows)
    return "\n".join(f"{a:<{w_section}}  {b:<{w_source}}  {c:>{w_ms}}  {d}" for a, b, c, d in rows) + "\n"


class FlowRecord(dict[str, Any]):
    """``flow.metadata['apim_mi']``: ``{"summary": …, "trace": …}``, made by ``fill`` only when something reads it
    (the content view, a saved flow, a script), so a flow nobody looks at never builds its summary or APIM document.

    Every read (``[]``, ``get``, ``in``, iteration, ``json.dumps``, ``==``, copies) and every write builds it
    first; ``copy.deepcopy`` (what ``flow.get_state()`` does for ``mitmdump -w``, flow copies and replays) and pickling
    return the plain dict, so saved flows hold exactly today's document and read back as plain dicts.
    """

    __slots__ = ("_fill", "_keys")

    def __init__(self, fill: Callable[[], dict[str, Any]], keys: tuple[str, ...]) -> None:
        """A record whose items (``keys``, in that order) ``fill`` returns when it is first read."""
        self._fill: Callable[[], dict[str, Any]] | None = fill
        self._keys = keys
        dict.__setitem__(self, keys[0], None)  # not empty: C code (json) that skips an empty dict calls items()

    def build(self) -> FlowRecord:
        if self._keys:
            self._keys = ()
            fill, self._fill = self._fill, None
            if fill is not None:
                dict.update(self, fill())
        return self

    def __getitem__(self, key: str) -> Any:
        return dict.__getitem__(self.build() if self._keys else self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys or dict.__contains__(self, key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self.build(), key, default)

    def __iter__(self) -> Any:
        return dict.__iter__(self.build())

    def __len__(self) -> int:
        return dict.__len__(self.build())

    def keys(self) -> Any:
        return dict.keys(self.build())

    def values(self) -> Any:
        return dict.values(self.build())

    def items(self) -> Any:
        return dict.items(self.build())

    def __eq__(self, other: object) -> bool:
        return dict.__eq__(self.build(), other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return dict.__repr__(self.build())

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self.build(), key, value)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self.build(), key)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        return dict.pop(self.build(), key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.setdefault(self.build(), key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        dict.update(self.build(), *args, **kwargs)

    def copy(self) -> dict[str, Any]:  # type: ignore[override]
        return dict(self.build().items())

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        import copy

        return copy.deepcopy(dict(self.build().items()), memo)

    def __reduce__(self) -> Any:
        return (dict, (dict(self.build().items()),))
