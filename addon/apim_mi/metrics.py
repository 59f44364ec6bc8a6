"""Prometheus metrics and health endpoints (option ``mi_metrics``), with prometheus-client.

:class:`Metrics` owns one registry per addon (no global state) and is what the rest of the proxy feeds:

* the addon counts flows per rule (:meth:`Metrics.flow`: one increment of a plain counter per flow event, about
  a dict update; prometheus-client's own counters take a lock and cost several times that, so these are exported
  by a collector at scrape time), rules reloads and policy errors;
* token acquisitions are timed by wrapping the credential factory (:meth:`Metrics.timed`), so ``tokens.py`` does
  not know about metrics; cached tokens' remaining lifetimes are read from ``TokenProvider.status()`` at scrape time;
* policies (``emit-metric``, AI token metrics) record their own metrics with dimensions through
  :meth:`Metrics.counter` and :meth:`Metrics.histogram`; the addon hands the object to policies as
  ``Services.settings["metrics"]`` (absent or None when ``mi_metrics`` is off, so they pay nothing then).

:class:`MetricsServer` serves ``/metrics``, ``/healthz`` and ``/readyz`` with aiohttp on mitmproxy's event loop,
answering only the clients the addon allows (loopback, ``mi_allow_clients``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("apim_mi")

PREFIX = "apim_mi_"
#: Flow events counted per rule (``Metrics.flow(event, rule)``): event -> (metric name without prefix, help).
FLOW_EVENTS: dict[str, tuple[str, str]] = {
    "matched": ("requests_matched", "Requests that matched the rule."),
    "injected": ("requests_injected", "Requests forwarded with a token the rule's policy added."),
    "failed": ("requests_failed_closed", "Requests failed closed (APIM's 500, or the policy's on-error answer)."),
    "refused": ("requests_refused", "Requests refused with 403: the client may not use managed-identity rules."),
}
TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """A valid Prometheus name for ``name`` (``emit-metric``'s names may hold spaces, dots, dashes)."""
    cleaned = _INVALID.sub("_", name.strip()) or "_"
    return "_" + cleaned if cleaned[0].isdigit() else cleaned


class Metrics:
    """The proxy's metrics registry and the interface that feeds it. Not thread-safe beyond prometheus-client's
    own locks; every caller runs on mitmproxy's event loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._flows: dict[str, dict[str, int]] = {event: {} for event in FLOW_EVENTS}
        reg.register(_FlowCounts(self._flows))
        self.token_acquisitions = Counter(
            f"{PREFIX}token_acquisitions", "Token requests to the credential (cache misses and refreshes), by result.",
            ["source", "identity", "resource", "result"], registry=reg,
        )  # fmt: skip
        self.token_seconds = Histogram(
            f"{PREFIX}token_acquisition_seconds", "How long the credential took to return a token (or fail).",
            ["source", "identity", "resource"], buckets=TOKEN_BUCKETS, registry=reg,
        )  # fmt: skip
        self.reloads = Counter(f"{PREFIX}rules_reloads", "Rules reloads, by result (ok, failed).", ["result"],
                               registry=reg)  # fmt: skip
        self.policy_errors = Counter(
            f"{PREFIX}policy_errors", "Policy errors (the error's source: the policy that failed).", ["policy"],
            registry=reg,
        )  # fmt: skip
        self._custom: dict[str, tuple[MetricWrapperBase, tuple[str, ...]]] = {}
        self._warned: set[tuple[str, str]] = set()

    # -- the proxy's own metrics ----------------------------------------------------------------------------------

    def flow(self, event: str, rule: str) -> None:
        """Count one flow ``event`` (a key of :data:`FLOW_EVENTS`) for ``rule``."""
        counts = self._flows[event]
        counts[rule] = counts.get(rule, 0) + 1

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()

    def policy_error(self, policy: str) -> None:
        self.policy_errors.labels(policy or "unknown").inc()

    def acquired(self, source: str, client_id: str, scope: str, seconds: float, ok: bool) -> None:
        labels = (source, client_id or "system-assigned", scope.removesuffix("/.default"))
        self.token_acquisitions.labels(*labels, "ok" if ok else "failed").inc()
        self.token_seconds.labels(*labels).observe(seconds)

    def timed(self, factory: Callable[..., Any]) -> Callable[..., Any]:
        """The credential factory, with every ``get_token`` timed and counted (an app registration's credential
        is labelled with its description; the federated assertion argument passes through)."""

        def make(source: Any, client_id: str, *assertion: Any) -> Any:
            return _TimedCredential(factory(source, client_id, *assertion), self, str(source), client_id)

        return make

    def watch_tokens(self, status: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        """Export ``apim_mi_token_expires_in_seconds`` from ``status()`` (``TokenProvider.status``) at scrape time."""
        self.registry.register(_TokenExpiry(status))

    # -- what policies emit -----------------------------------------------------------------------------------------

    def counter(self, name: str, dimensions: Mapping[str, str] | None = None, value: float = 1.0,
                description: str = "") -> None:  # fmt: skip
        """Add ``value`` (>= 0) to the counter ``name`` (exported as ``<name>_total``) with ``dimensions`` as labels."""
        self._custom_child(Counter, name, dimensions, description).inc(value)

    def histogram(self, name: str, value: float, dimensions: Mapping[str, str] | None = None,
                  description: str = "") -> None:  # fmt: skip
        """Observe ``value`` in the histogram ``name`` (default buckets) with ``dimensions`` as labels."""
        self._custom_child(Histogram, name, dimensions, description).observe(value)

    def _custom_child(
        self, kind: type[MetricWrapperBase], name: str, dimensions: Mapping[str, str] | None, description: str
    ) -> Any:
        """The labelled child of custom metric ``name``. A metric's label names are fixed by its first use, as
        Prometheus requires: a later call's missing dimensions are exported as "", extra ones are dropped (logged
        once per metric and dimension). A name already used by another kind raises ValueError."""
        prom = metric_name(name)
        dims = {metric_name(k): str(v) for k, v in (dimensions or {}).items()}
        entry = self._custom.get(prom)
        if entry is None:
            labels = tuple(dims)
            metric = kind(prom, description or f"emitted by a policy: {name}", labels, registry=self.registry)
            entry = self._custom[prom] = (metric, labels)
        metric, labels = entry
        if not isinstance(metric, kind):
            raise ValueError(f"metric '{name}' is already a {type(metric).__name__.lower()}")
        for extra in dims.keys() - set(labels):
            if (prom, extra) not in self._warned:
                self._warned.add((prom, extra))
                log.warning("apim-mi: metric %s has no dimension '%s' (its first use fixed %s); dropped", prom, extra,
                            list(labels) or "none")  # fmt: skip
        return metric.labels(*(dims.get(label, "") for label in labels)) if labels else metric

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _TimedCredential:
    """An azure-identity async credential whose ``get_token`` calls are timed and counted."""

    def __init__(self, inner: Any, metrics: Metrics, source: str, client_id: str) -> None:
        self._inner, self._metrics, self._source, self._client_id = inner, metrics, source, client_id

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        ok = False
        try:
            token = await self._inner.get_token(*scopes, **kwargs)
            ok = True
            return token
        finally:
            self._metrics.acquired(self._source, self._client_id, " ".join(scopes), time.perf_counter() - started, ok)

    async def close(self) -> None:
        await self._inner.close()


class _FlowCounts(Collector):
    """``apim_mi_requests_*_total{rule}`` from the plain per-(event, rule) counts, read at scrape time."""

    def __init__(self, counts: dict[str, dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        for event, (name, doc) in FLOW_EVENTS.items():
            family = CounterMetricFamily(PREFIX + name, doc, labels=["rule"])
            for rule, n in list(self._counts[event].items()):
                family.add_metric([rule], n)
            yield family


class _TokenExpiry(Collector):
    def __init__(self, status: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            f"{PREFIX}token_expires_in_seconds", "Seconds until each cached token expires.",
            labels=["source", "identity", "resource"],
        )  # fmt: skip
        for row in self._status():
            if "expires_in_s" in row:
                gauge.add_metric([row["source"], row["identity"], row["resource"]], float(row["expires_in_s"]))
        yield gauge


# -- the endpoint -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: dict[str, Any]


def parse_listen(spec: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (127.0.0.1) for ``mi_metrics``; ValueError names what is wrong."""
    host, sep, port = spec.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"mi_metrics: '{spec}' is not host:port (e.g. 127.0.0.1:9464 or 0.0.0.0:9464)")
    host = host.strip("[]") or "127.0.0.1"
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"mi_metrics: '{host}' is not an IP address (or localhost)") from None
    return host, int(port)


class MetricsServer:
    """``/metrics`` (Prometheus text format), ``/healthz`` (the process answers), ``/readyz`` (``readiness()``)."""

    def __init__(self, metrics: Metrics, readiness: Callable[[], Readiness], allowed: Callable[[str], bool]) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._allowed = allowed
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self._allowed(request.remote or ""):
            return web.json_response({"error": "not allowed: loopback and mi_allow_clients only"}, status=403)
        response: web.StreamResponse = await handler(request)
        return response

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        state = self._readiness()
        body = {"status": "ready" if state.ready else "not ready", **state.detail}
        return web.json_response(body, status=200 if state.ready else 503)
