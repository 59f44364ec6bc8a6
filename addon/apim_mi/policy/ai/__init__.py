"""The AI gateway's shared state: token counters, emitted metrics and the semantic cache, one of each per proxy.

The policies in ``policy/statements/ai.py`` reach it as ``run.services.settings["ai"]``; the addon creates it once,
so counters and cached answers live across flows and rule reloads, as APIM's do across requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .limits import TokenCounters
from .metrics import MetricsRegistry
from .semcache import SemanticCache


@dataclass
class AiState:
    """Everything the AI policies keep between requests; ``clock`` (seconds, wall time) is injectable for tests."""

    clock: Callable[[], float] = time.time
    counters: TokenCounters = field(init=False)
    metrics: MetricsRegistry = field(default_factory=MetricsRegistry)
    cache: SemanticCache = field(init=False)

    def __post_init__(self) -> None:
        self.counters = TokenCounters(self.clock)
        self.cache = SemanticCache(self.clock)

    def status(self) -> dict[str, object]:
        """What ``mi.status`` shows: counters per key, metrics, cache size (never a prompt or a response)."""
        return {"tokenCounters": self.counters.status(), "metrics": self.metrics.status(),
                "semanticCache": self.cache.status()}  # fmt: skip


__all__ = ["AiState"]
