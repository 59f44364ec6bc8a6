"""The in-process vector store behind ``llm-semantic-cache-lookup``/``-store``: cached answers with the embedding of
their prompt, per ``vary-by`` partition, each with its own expiry.

A lookup returns the nearest live entry and its cosine *distance* (1 − cosine similarity), which the policy compares
with ``score-threshold`` the way APIM's Redis vector search does: smaller means more similar. Entries are bounded
(oldest dropped first), and expired ones are removed when seen.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_ENTRIES = 10_000


@dataclass
class CachedAnswer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    expires: float


def _norm(v: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def cosine_distance(a: Sequence[float], b: Sequence[float]) -> float:
    na, nb = _norm(a), _norm(b)
    if not na or not nb or len(a) != len(b):
        return 1.0
    return 1.0 - sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


class SemanticCache:
    def __init__(self, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[int, tuple[str, list[float], CachedAnswer]] = OrderedDict()
        self._next = 0
        self.hits = 0
        self.misses = 0

    def nearest(self, partition: str, vector: Sequence[float]) -> tuple[CachedAnswer | None, float | None]:
        now = self.clock()
        best: tuple[CachedAnswer | None, float | None] = (None, None)
        for eid, (part, vec, answer) in list(self._entries.items()):
            if answer.expires <= now:
                del self._entries[eid]
                continue
            if part != partition:
                continue
            d = cosine_distance(vector, vec)
            if best[1] is None or d < best[1]:
                best = (answer, d)
        return best

    def store(self, partition: str, vector: Sequence[float], answer: CachedAnswer) -> None:
        self._entries[self._next] = (partition, list(vector), answer)
        self._next += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        live = sum(1 for _, _, a in self._entries.values() if a.expires > now)
        return {"entries": live, "hits": self.hits, "misses": self.misses}
