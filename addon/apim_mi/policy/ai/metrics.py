"""Custom metrics as ``emit-metric`` and the token-metric policies send them to Application Insights: a value per
(namespace, metric name, dimensions), aggregated here the way Azure Monitor shows them (count, sum, min, max).

``mi.status`` shows the series; ``series()`` is the exporter's view (a Prometheus module can publish it as
``apim_mi_custom_metric_sum{namespace, name, <dimensions>}``). The number of series is bounded: dimension values come
from requests, and a client must not be able to grow memory without limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_SERIES = 10_000
OVERFLOW = "(other)"


@dataclass
class Series:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]
    count: int = 0
    sum: float = 0.0
    min: float = 0.0
    max: float = 0.0

    def add(self, value: float) -> None:
        self.min = value if not self.count else min(self.min, value)
        self.max = value if not self.count else max(self.max, value)
        self.count += 1
        self.sum += value

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "dimensions": dict(self.dimensions),
                "count": self.count, "sum": self.sum, "min": self.min, "max": self.max}  # fmt: skip


class MetricsRegistry:
    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self.max_series = max_series
        self._series: dict[tuple[str, str, tuple[tuple[str, str], ...]], Series] = {}
        self.dropped = 0

    def emit(self, namespace: str, name: str, dimensions: dict[str, str], value: float) -> Series:
        dims = tuple(sorted(dimensions.items()))
        key = (namespace, name, dims)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                self.dropped += 1
                dims = ((OVERFLOW, OVERFLOW),)
                key = (namespace, name, dims)
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(namespace, name, dims)
        series.add(value)
        return series

    def series(self) -> list[Series]:
        return list(self._series.values())

    def total(self, name: str, namespace: str | None = None) -> float:
        """Sum of a metric over all dimensions (tests and summaries)."""
        return sum(s.sum for s in self._series.values() if s.name == name and namespace in (None, s.namespace))

    def status(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self._series.values()]
