"""What a gateway keeps between requests: caches, rate-limit and quota counters, concurrency slots, circuit
breakers, subscriptions, log sinks and the AI gateway's state (``policy/ai``).

One ``GatewayState`` belongs to the addon and is handed to every ``PolicyRun`` (``Services.state``), so all flows and
all rules share it, as one APIM instance shares its cache and counters. Time comes from ``clock`` (monotonic
seconds) and waiting from ``sleep``, both injectable, so tests move time instead of sleeping. The statement families
(``policy/statements/caching.py``, ``limits.py``, ``backends.py``, ``effects.py``) own the meaning of their tables.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ai import AiState
from .context import Request, Subscription


@dataclass
class SubscriptionSpec:
    """A subscription the rules file declares: what ``context.Subscription`` shows for one of its keys."""

    id: str
    name: str = ""
    primary_key: str = ""
    secondary_key: str = ""

    def context(self, key: str) -> Subscription:
        return Subscription(id=self.id, key=key, name=self.name or self.id, primary_key=self.primary_key,
                            secondary_key=self.secondary_key)  # fmt: skip


@dataclass
class GatewayState:
    clock: Callable[[], float] = time.monotonic
    #: wall time (Unix seconds): quota periods are aligned on first-period-start, a calendar instant
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: random.Random = field(default_factory=random.Random)
    #: cache-store-value / cache-lookup-value: key → (value, expires at)
    values: dict[str, tuple[Any, float]] = field(default_factory=dict)
    #: cache-store / cache-lookup: key → (response, expires at)
    responses: dict[str, tuple[Any, float]] = field(default_factory=dict)
    #: rate-limit / quota windows: counter key → window
    windows: dict[str, Any] = field(default_factory=dict)
    #: limit-concurrency: key → requests in flight
    in_flight: dict[str, int] = field(default_factory=dict)
    #: circuit breakers: backend id → breaker
    breakers: dict[str, Any] = field(default_factory=dict)
    #: declared subscriptions by key (primary and secondary)
    subscriptions: Mapping[str, SubscriptionSpec] = field(default_factory=dict)
    #: log-to-eventhub: logger id → JSON-lines file
    loggers: Mapping[str, Path] = field(default_factory=dict)
    #: fire-and-forget side requests still running (kept referenced until done)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    #: the AI gateway's token counters, metrics and semantic cache (its own wall clock: quotas are calendar windows)
    ai: AiState = field(default_factory=AiState)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def subscription_of(self, request: Request) -> Subscription | None:
        """The subscription of APIM's key header (``Ocp-Apim-Subscription-Key``) or query parameter
        (``subscription-key``); None without a key."""
        key = request.headers.get("Ocp-Apim-Subscription-Key")
        raw_query = request.url._raw_query
        if not key and (raw_query is None or "subscription-key" in raw_query.lower()):  # skip a query without one
            key = request.url.query.get("subscription-key")
        return self.subscription(key.strip()) if key and key.strip() else None

    def subscription(self, key: str) -> Subscription:
        """``context.Subscription`` for a key: the declared subscription, else one named after the key (APIM would
        refuse an unknown key; apim-mi has no subscription store unless the rules file declares one)."""
        spec = self.subscriptions.get(key)
        if spec is not None:
            return spec.context(key)
        import hashlib

        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return Subscription(id=f"undeclared-{digest}", key=key, name="undeclared subscription", primary_key=key)
