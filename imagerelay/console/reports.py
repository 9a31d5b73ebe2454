"""Usage reports for the admin console: filters read from a query string, the CSV export
and the dashboard's windows and per-route/per-channel sums. The queries themselves are
storage/usage_stats.py's :class:`UsageReports` (``services.reports``), filtered by a
domain/records.py :class:`UsageQuery`, the same terms as ``/admin/usage`` and the user's
usage page.
Filters come from query strings a person typed, so :func:`parse_usage_filter` reads
them strictly and names the field it refuses (:class:`InvalidRequest`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from imagerelay.console.views import parse_day
from imagerelay.domain.accountrules import label
from imagerelay.domain.records import DAY_S, Bucket, UsageQuery
from imagerelay.errors import InvalidRequest
from imagerelay.storage.usage_stats import UsageReports

CSV_CHUNK = 1000
_MAX_ID = 2**31 - 1
HOUR_S = 3_600


def parse_status(raw: str) -> tuple[int | None, bool | None]:
    """``ok``, ``error`` or a three-digit HTTP status -> (status, failed) of a :class:`UsageQuery`."""
    if raw in ("ok", "error"):
        return None, raw == "error"
    if raw.isascii() and raw.isdigit() and len(raw) == 3:
        return int(raw), None
    raise InvalidRequest("status must be ok, error or a three-digit HTTP status.", param="status")


def parse_id(raw: str, param: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= _MAX_ID):
        raise InvalidRequest(f"{param} must be a whole number.", param=param)
    return int(raw)


def parse_usage_filter(params: Mapping[str, str], *, user_id: int | None = None) -> UsageQuery:
    """Read ``since``/``until`` (days, both inclusive), ``token``, ``model``, ``route``,
    ``channel`` and ``status`` from a query string into storage/billing.py's query (paging
    aside). The user is resolved by the caller (a name needs the database) and passed as
    ``user_id``. Raises :class:`InvalidRequest` naming the field."""

    def text(name: str) -> str | None:
        raw = (params.get(name) or "").strip()
        if not raw:
            return None
        if label(raw) is None:  # PostgreSQL refuses NUL; nothing longer is a name here
            raise InvalidRequest(f"{name} must be a name of up to 128 printable characters.", param=name)
        return raw

    since_raw, until_raw = text("since"), text("until")
    since = float(parse_day(since_raw, "since")) if since_raw else None
    until = float(parse_day(until_raw, "until") + DAY_S) if until_raw else None
    if since is not None and until is not None and until <= since:
        raise InvalidRequest("until must be on or after since.", param="until")
    token_raw, status_raw = text("token"), text("status")
    status, failed = parse_status(status_raw) if status_raw else (None, None)
    return UsageQuery(
        since=since,
        until=until,
        user_id=user_id,
        token_id=parse_id(token_raw, "token") if token_raw else None,
        model=text("model"),
        route=text("route"),
        channel=text("channel"),
        status=status,
        failed=failed,
    )


def usd(micros: int) -> str:
    """Exact dollars with six decimals, no sign prefix: ``30000`` -> ``"0.030000"``."""
    return f"{Decimal(micros) / 1_000_000:.6f}"


def utc_text(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


#: A CSV column: its header and how to read it from a record of :func:`usage_rows`.
CsvColumn = tuple[str, Callable[[Mapping[str, Any]], object]]

#: The administrator's export: every field, with the user's and the key's names.
ADMIN_CSV: tuple[CsvColumn, ...] = (
    ("id", lambda r: r["id"]),
    ("time_utc", lambda r: utc_text(r["created_at"])),
    ("request_id", lambda r: r["request_id"]),
    ("user", lambda r: r.get("user_name") or r["user_id"]),
    ("token_id", lambda r: r["token_id"]),
    ("token", lambda r: r.get("token_name") or ""),
    ("group", lambda r: r["group_name"]),
    ("model", lambda r: r["model"]),
    ("route", lambda r: r["route"]),
    ("channel", lambda r: r["channel"] or ""),
    ("endpoint", lambda r: r["endpoint"]),
    ("status", lambda r: r["status"]),
    ("error_code", lambda r: r["error_code"] or ""),
    ("latency_ms", lambda r: r["latency_ms"]),
    ("upstream_latency_ms", lambda r: "" if r["upstream_latency_ms"] is None else r["upstream_latency_ms"]),
    ("attempts", lambda r: r["attempts"]),
    ("input_text_tokens", lambda r: r["input_text_tokens"]),
    ("input_image_tokens", lambda r: r["input_image_tokens"]),
    ("cached_tokens", lambda r: r["cached_tokens"]),
    ("output_tokens", lambda r: r["output_tokens"]),
    ("billing_mode", lambda r: r["billing_mode"]),
    ("cost_usd", lambda r: usd(int(r["cost_micros"]))),
)
CSV_COLUMNS = tuple(name for name, _ in ADMIN_CSV)


def _cell(value: object) -> object:
    """Spreadsheets run a cell starting with = + - @ (or a tab or CR before one) as a
    formula: user and token names are typed by people, so such text is quoted with a
    leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_row(r: Mapping[str, Any], columns: Sequence[CsvColumn] = ADMIN_CSV) -> list[object]:
    return [_cell(read(r)) for _, read in columns]


async def usage_csv(
    reports: UsageReports, f: UsageQuery, columns: Sequence[CsvColumn] = ADMIN_CSV, *, max_rows: int | None = None
) -> AsyncIterator[str]:
    """Every matching record (newest first, at most ``max_rows``) as CSV text, header
    first, read in chunks so an export of millions of records never sits in memory. The
    one CSV writer of the console: the admin export and the user's own (usage_pages.py)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([name for name, _ in columns])
    before: int | None = None
    sent = 0
    while max_rows is None or sent < max_rows:
        limit = CSV_CHUNK if max_rows is None else min(CSV_CHUNK, max_rows - sent)
        rows, more = await reports.named_rows(f, limit=limit, before_id=before)
        for r in rows:
            writer.writerow(csv_row(r, columns))
        sent += len(rows)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
        if not more or not rows:
            return
        before = rows[-1]["id"]


# -- aggregates for the dashboard ---------------------------------------------------------


def window(now: float, span: str) -> tuple[float, float, int]:
    """(since, until, bucket size) of a dashboard span: ``24h`` by hour, ``7d`` and ``30d`` by day,
    aligned to bucket boundaries so the first and last buckets are whole."""
    spans = {"24h": (24, HOUR_S), "7d": (7, DAY_S), "30d": (30, DAY_S)}
    if span not in spans:
        raise InvalidRequest("span must be one of: 24h, 7d, 30d.", param="span")
    count, size = spans[span]
    end = (int(now) // size + 1) * size
    return float(end - count * size), float(end), size


@dataclass(frozen=True, slots=True)
class KeyTotals:
    """One route's or channel's sums over a dashboard window."""

    key: str
    calls: int
    errors: int
    cost_micros: int
    avg_upstream_latency_ms: int | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


def totals_by_key(buckets: list[Bucket]) -> list[KeyTotals]:
    """The window's buckets summed per route or channel, busiest first."""
    sums: dict[str, list[int]] = {}
    for b in buckets:
        s = sums.setdefault(b.key, [0, 0, 0, 0, 0])
        for i, v in enumerate((b.calls, b.errors, b.cost_micros, b.upstream_latency_sum_ms, b.upstream_latency_n)):
            s[i] += v
    out = [KeyTotals(k, c, e, m, round(ls / ln) if ln else None) for k, (c, e, m, ls, ln) in sums.items()]
    return sorted(out, key=lambda t: (-t.calls, t.key))
