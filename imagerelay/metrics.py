"""Prometheus metrics: counters and histograms fed from the hot path, gauges read at scrape.

Hot path: one HTTP observation per request (middleware), one call observation per usage
record (the relay's one record per call), one upstream observation per attempt (the
pool's health accounting). Each is a few label lookups and additions in memory.

Scrape time: gauges that need the database (open holds, the job queue) or the channel
state are computed by :func:`scrape_families` when ``/metrics`` is read, never per call.

Several worker processes (``serve --workers N``) share one listening socket, so a scrape
reaches one process at random and per-process scraping cannot work; the CLI then points
``PROMETHEUS_MULTIPROC_DIR`` at a directory in the data dir and prometheus-client's
multiprocess mode sums every process's counters and histograms (and the live processes'
in-flight gauges) at scrape time. With one process the ordinary in-memory registry is used.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from imagerelay.domain.records import UsageRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Image calls take from milliseconds (cached simulator) to minutes (quality=high).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# A model label for a call refused before routing whose model the catalog does not know:
# the request's own text would let any caller add label values without bound.
UNKNOWN = "unknown"


class Metrics:
    """Every metric the gateway exports, owned by one object (no module globals)."""

    def __init__(self, models: Collection[str], multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir if multiproc_dir is not None else os.environ.get(MULTIPROC_ENV)
        self._models = frozenset(models)
        # In multiprocess mode values live in the directory's files, not in a registry.
        self._registry = CollectorRegistry()
        reg = None if self.multiproc_dir else self._registry
        self.http_requests = Counter(
            "imagerelay_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "path", "status"],
            registry=reg,
        )
        self.http_duration = Histogram(
            "imagerelay_http_request_duration_seconds",
            "Time from request to the end of the response.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "imagerelay_http_requests_in_flight",
            "HTTP requests being served now.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.calls = Counter(
            "imagerelay_calls",
            "Image calls (one per usage record), by token group, model, route, endpoint and status.",
            ["group", "model", "route", "endpoint", "status"],
            registry=reg,
        )
        self.call_duration = Histogram(
            "imagerelay_call_duration_seconds",
            "Latency of image calls as recorded in the usage record.",
            ["group", "route", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.upstream_duration = Histogram(
            "imagerelay_upstream_duration_seconds",
            "Latency of the upstream attempt that answered a plain call.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.upstream_attempts = Counter(
            "imagerelay_upstream_attempts",
            "Upstream results counted against a channel's health, by outcome (ok or the failure kind).",
            ["channel", "outcome"],
            registry=reg,
        )
        self.upstream_failures = Counter(
            "imagerelay_upstream_failures", "Upstream failures by channel and kind.", ["channel", "kind"], registry=reg
        )
        self.charged = Counter(
            "imagerelay_charged_usd_micros",
            "Money settled (charged to balances), in micro-dollars.",
            ["group", "route"],
            registry=reg,
        )

        # prometheus-client's labels() validates and locks on every call (~2 us each);
        # a label set seen once is looked up in a dict afterwards.
        self._calls = _Children(self.calls)
        self._call_duration = _Children(self.call_duration)
        self._upstream_duration = _Children(self.upstream_duration)
        self._upstream_attempts = _Children(self.upstream_attempts)
        self._upstream_failures = _Children(self.upstream_failures)
        self._charged = _Children(self.charged)
        self.http_request = _Children(self.http_requests)
        self.http_time = _Children(self.http_duration)

    # -- hot path ---------------------------------------------------------------------

    def observe_call(self, record: UsageRecord) -> None:
        """One finished call, from its usage record (the relay's single source of truth)."""
        model = record.model if record.route or record.model in self._models else UNKNOWN
        route = record.route or "none"
        self._calls(record.group, model, route, record.endpoint, str(record.status)).inc()
        self._call_duration(record.group, route, record.endpoint).observe(record.latency_ms / 1000)
        if record.channel and record.upstream_latency_ms:
            self._upstream_duration(record.channel).observe(record.upstream_latency_ms / 1000)
        if record.cost_micros:
            self._charged(record.group, route).inc(record.cost_micros)

    def observe_attempt(self, channel: str, failure_kind: str | None) -> None:
        """One upstream result as the pool counts it (``None``: success)."""
        self._upstream_attempts(channel, failure_kind or "ok").inc()
        if failure_kind is not None:
            self._upstream_failures(channel, failure_kind).inc()

    # -- scrape -------------------------------------------------------------------------

    def render(self, extra: Iterable[Metric] = ()) -> bytes:
        """The exposition text: this process's (or every process's) metrics, then ``extra``."""
        if self.multiproc_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        else:
            registry = self._registry
        snapshot = CollectorRegistry()
        snapshot.register(_Fixed(list(extra)))
        return generate_latest(registry) + generate_latest(snapshot)

    def process_exiting(self) -> None:
        """Drop this process's live gauges (in-flight) from the multiprocess sums."""
        if self.multiproc_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)  # type: ignore[no-untyped-call]  # unannotated upstream


class _Children:
    """A metric's children by label values, created once each. Every label value the
    gateway uses is bounded (catalog names, statuses, failure kinds), so is this dict."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class _Fixed(Collector):
    """Families computed before the scrape (async database reads cannot run in collect())."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def gauge(
    name: str,
    doc: str,
    value: float | None = None,
    labels: Iterable[str] = (),
    samples: Iterable[tuple[list[str], float]] = (),
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)
    for label_values, v in samples:
        family.add_metric(label_values, v)
    return family
