"""Prometheus metrics: counters and histograms fed from the hot path, gauges read at scrape.

Hot path: one HTTP observation per request (middleware), one call observation per usage
record (the relay's one record per call), one upstream observation per attempt (the
pool's health accounting). Each is a dict lookup and an addition in memory.

Scrape time: gauges that need the database (open holds, the job queue) or the channel
state are computed by :func:`scrape_families` when ``/metrics`` is read, never per call.

Several worker processes (``serve --workers N``) share one listening socket, so a scrape
reaches one process at random and per-process scraping cannot work; the CLI then points
``PROMETHEUS_MULTIPROC_DIR`` at a directory in the data dir and prometheus-client's
multiprocess mode sums every process's counters and histograms (and the live processes'
in-flight gauges) at scrape time. With one process the ordinary in-memory registry is used.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
    """Every metric the gateway exports, owned by one object (no module globals).

    One process: each metric is a :class:`_LocalFamily` (plain additions on the event
    loop, exported by a collector at scrape time). Several (``PROMETHEUS_MULTIPROC_DIR``):
    prometheus-client's own metrics, whose values live in the directory's files."""

    def __init__(self, models: Collection[str], multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir if multiproc_dir is not None else os.environ.get(MULTIPROC_ENV)
        self._models = frozenset(models)
        self._registry = CollectorRegistry()
        local: list[_LocalFamily] = []

        def family(kind: str, name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            if not self.multiproc_dir:
                made = _LocalFamily(kind, name, doc, tuple(labels))
                local.append(made)
                return made
            if kind == "counter":
                return _Children(Counter(name, doc, labels, registry=None))
            if kind == "histogram":
                return _Children(Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=None))
            return Gauge(name, doc, registry=None, multiprocess_mode="livesum")

        self.http_request = family(
            "counter",
            "imagerelay_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "path", "status"],
        )
        self.http_time = family(
            "histogram",
            "imagerelay_http_request_duration_seconds",
            "Time from request to the end of the response.",
            ["path"],
        )
        in_flight = family("gauge", "imagerelay_http_requests_in_flight", "HTTP requests being served now.")
        self.in_flight = in_flight() if isinstance(in_flight, _LocalFamily) else in_flight
        self._calls = family(
            "counter",
            "imagerelay_calls",
            "Image calls (one per usage record), by token group, model, route, endpoint and status.",
            ["group", "model", "route", "endpoint", "status"],
        )
        self._call_duration = family(
            "histogram",
            "imagerelay_call_duration_seconds",
            "Latency of image calls as recorded in the usage record.",
            ["group", "route", "endpoint"],
        )
        self._upstream_duration = family(
            "histogram",
            "imagerelay_upstream_duration_seconds",
            "Latency of the upstream attempt that answered a plain call.",
            ["channel"],
        )
        self._upstream_attempts = family(
            "counter",
            "imagerelay_upstream_attempts",
            "Upstream results counted against a channel's health, by outcome (ok or the failure kind).",
            ["channel", "outcome"],
        )
        self._upstream_failures = family(
            "counter", "imagerelay_upstream_failures", "Upstream failures by channel and kind.", ["channel", "kind"]
        )
        self._charged = family(
            "counter",
            "imagerelay_charged_usd_micros",
            "Money settled (charged to balances), in micro-dollars.",
            ["group", "route"],
        )
        if local:
            self._registry.register(_LocalCollector(local))

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
    """A prometheus-client metric's children by label values, created once each
    (``labels()`` validates and locks on every call, ~2 us). Every label value the
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


class _LocalValue:
    """One counter or gauge series of a single process: an addition, no lock. Every
    observation happens on the event loop's thread, and so does the scrape."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class _LocalHistogram:
    """One histogram series of a single process: a count per bucket (found by bisection,
    in C) and a sum; cumulated at scrape time."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, amount)] += 1  # le: amount <= bound
        self.sum += amount


class _LocalFamily:
    """A metric of a single process, its series by label values.

    Why not prometheus-client's own metrics here: an observation through them is ~6
    Python calls and a lock (a histogram walks its buckets in Python), 39 calls per
    image call in all; these are one or two. prometheus-client still writes the
    exposition (:class:`_LocalCollector`), and runs the multiprocess mode."""

    __slots__ = ("kind", "name", "doc", "labels", "series")

    def __init__(self, kind: str, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.kind, self.name, self.doc, self.labels = kind, name, doc, labels
        self.series: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _LocalHistogram() if self.kind == "histogram" else _LocalValue()
        return series

    def family(self) -> Metric:
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.doc, labels=self.labels)
            for labels, value in self.series.items():
                counter.add_metric(labels, value.value)
            return counter
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.doc, value=sum(v.value for v in self.series.values()))
        histogram = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        bounds = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]  # unannotated upstream
        for labels, series in self.series.items():
            histogram.add_metric(
                labels, list(zip(bounds, itertools.accumulate(series.counts), strict=True)), series.sum
            )
        return histogram


class _LocalCollector(Collector):
    def __init__(self, families: list[_LocalFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return (f.family() for f in self._families)


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
