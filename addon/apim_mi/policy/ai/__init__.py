"""The AI gateway's shared state: token counters, emitted metrics and the semantic cache, one of each per proxy.

The policies in ``policy/statements/ai.py`` reach it as ``run.services.state.ai`` (``GatewayState``), one per addon,
so counters and cached answers live across flows and rule reloads, as APIM's do across requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .limits import TokenCounters
from .metrics import MetricsRegistry
from .semcache import SemanticCache

if TYPE_CHECKING:
    from ..model import Policy

#: Policies that may count tokens with the tokenizer (streamed answers are always estimated).
COUNTING = frozenset({"azure-openai-token-limit", "llm-token-limit", "azure-openai-emit-token-metric",
                      "llm-emit-token-metric"})  # fmt: skip


def counts_tokens(policies: Iterable[Policy]) -> bool:
    """Whether any of the policies may need the tokenizer, so the proxy builds it at startup (~0.5 s, in a worker
    thread) instead of the first streamed answer waiting for it."""
    return any(stmt.name in COUNTING for policy in policies for stmt in policy.statements())


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


__all__ = ["COUNTING", "AiState", "counts_tokens"]
