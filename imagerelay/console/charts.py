"""Line charts as data for server-rendered SVG: no script, so the CSP stays strict.

:func:`pivot` turns dashboard buckets into one series per route or channel;
:func:`line_chart` computes the geometry (polyline points, axis ticks) that
``templates/admin/_chart.html`` draws. Hand-rolled rather than a vendored JS chart
library: a few dozen lines of arithmetic, rendered identically without JavaScript,
and the same numbers are printed in a table next to each chart for screen readers.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imagerelay.domain.records import DAY_S, Bucket

MAX_SERIES = 6  # more lines than this is unreadable; the rest is summed as "other"
OTHER = "other"

Metric = Callable[[Sequence[Bucket]], float | None]


def _calls(cells: Sequence[Bucket]) -> float | None:
    return float(sum(c.calls for c in cells))


def _errors(cells: Sequence[Bucket]) -> float | None:
    return float(sum(c.errors for c in cells))


def _spend(cells: Sequence[Bucket]) -> float | None:
    # Chart geometry only: the exact amounts are shown as integers/Decimal elsewhere.
    return sum(c.cost_micros for c in cells) / 1_000_000


def _latency(cells: Sequence[Bucket]) -> float | None:
    n = sum(c.upstream_latency_n for c in cells)
    return sum(c.upstream_latency_sum_ms for c in cells) / n if n else None


METRICS: dict[str, tuple[str, Metric]] = {
    "calls": ("Calls", _calls),
    "errors": ("Errors", _errors),
    "spend": ("Spend (USD)", _spend),
    "latency": ("Upstream latency (ms, mean)", _latency),
}


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: list[float | None]  # one per bucket; None: nothing to show there


def pivot(buckets: Sequence[Bucket], starts: Sequence[int], metric: str) -> list[Series]:
    """One series per key (the busiest :data:`MAX_SERIES` by calls, the rest as "other"),
    one value per bucket start in ``starts``."""
    _, fn = METRICS[metric]
    busy: dict[str, int] = {}
    for b in buckets:
        busy[b.key] = busy.get(b.key, 0) + b.calls
    ranked = sorted(busy, key=lambda k: (-busy[k], k))
    keep = set(ranked[:MAX_SERIES]) if len(ranked) > MAX_SERIES + 1 else set(ranked)
    names = [k for k in ranked if k in keep] + ([OTHER] if len(keep) < len(ranked) else [])
    cells: dict[tuple[str, int], list[Bucket]] = {}
    for b in buckets:
        cells.setdefault((b.key if b.key in keep else OTHER, b.start), []).append(b)
    out = []
    for name in names:
        values = []
        for start in starts:
            here = cells.get((name, start), [])
            # An additive metric is 0 in an empty bucket; a mean has no value there.
            values.append(fn(here) if here or metric != "latency" else None)
        out.append(Series(name, values))
    return out


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    index: int  # colour class: chart-s0 .. chart-s6
    segments: list[str]  # SVG polyline "x,y x,y" runs (a gap where a value is missing)
    dots: list[tuple[float, float]]  # for single-point runs, which a polyline cannot show


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    lines: list[Line]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    empty: bool


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value`` (a readable axis top)."""
    if value <= 0:
        return 1.0
    power: float = 10 ** math.floor(math.log10(value))  # int ** int is typed Any (a negative exponent gives a float)
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


def _tick_label(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def bucket_label(start: int, size_s: int) -> str:
    moment = dt.datetime.fromtimestamp(start, tz=dt.UTC)
    return moment.strftime("%m-%d") if size_s >= DAY_S else moment.strftime("%H:00")


def line_chart(
    title: str, starts: Sequence[int], size_s: int, series: Sequence[Series], *, width: int = 640, height: int = 220
) -> Chart:
    left, right, top, bottom = 56, width - 12, 12, height - 28
    values = [v for s in series for v in s.values if v is not None]
    top_value = nice_ceiling(max(values, default=0.0))
    n = len(starts)

    def x_at(i: int) -> float:
        return round(left + (right - left) * (i / (n - 1) if n > 1 else 0.5), 1)

    def y_at(v: float) -> float:
        return round(bottom - (bottom - top) * v / top_value, 1)

    lines = []
    for index, s in enumerate(series):
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append((x_at(i), y_at(v)))
        lines.append(
            Line(
                s.name,
                index,
                [" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1],
                [run[0] for run in runs if len(run) == 1],
            )
        )
    y_ticks = [(y_at(top_value * k / 4), _tick_label(top_value * k / 4)) for k in range(5)]
    every = max(1, math.ceil(n / 8))
    x_ticks = [(x_at(i), bucket_label(starts[i], size_s)) for i in range(0, n, every)]
    # Empty only with nothing to draw: a flat zero line (no errors at all) is worth showing.
    return Chart(title, width, height, left, top, right, bottom, lines, y_ticks, x_ticks, not values)
