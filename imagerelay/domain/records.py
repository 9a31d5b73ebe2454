"""Usage records as values: what one call leaves behind (:class:`UsageRecord`), the filters
a reader asks for (:class:`UsageQuery`) and the sums reports show. storage/billing.py
writes records; storage/usage_stats.py reads them; nothing here touches a database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from imagerelay.domain.types import Usage

DAY_S = 86_400


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    user_id: int
    token_id: int
    group: str
    model: str
    route: str
    endpoint: str
    status: int
    billing_mode: str
    latency_ms: int
    channel: str | None = None
    error_code: str | None = None
    upstream_latency_ms: int | None = None
    attempts: int = 0
    usage: Usage | None = None
    cost_micros: int = 0
    price_basis: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        u = self.usage or Usage()
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "token_id": self.token_id,
            "group_name": self.group,
            "model": self.model,
            "route": self.route,
            "channel": self.channel,
            "endpoint": self.endpoint,
            "status": self.status,
            "error_code": self.error_code,
            "latency_ms": self.latency_ms,
            "upstream_latency_ms": self.upstream_latency_ms,
            "attempts": self.attempts,
            "input_text_tokens": u.input_text_tokens,
            "input_image_tokens": u.input_image_tokens,
            "cached_tokens": u.cached_text_tokens + u.cached_image_tokens,
            "output_tokens": u.output_tokens,
            "cost_micros": self.cost_micros,
            "billing_mode": self.billing_mode,
            "price_basis": orjson.dumps(self.price_basis).decode(),
            "created_at": time.time(),
        }

    def call_info(self) -> str:
        """What an interrupted call's record will say (kept with its hold)."""
        return orjson.dumps(
            {
                "group": self.group,
                "model": self.model,
                "route": self.route,
                "endpoint": self.endpoint,
                "billing_mode": self.billing_mode,
            }
        ).decode()


@dataclass(frozen=True, slots=True)
class UsageQuery:
    user_id: int | None = None  # None: everyone (admins)
    since: float | None = None
    until: float | None = None
    model: str | None = None
    status: int | None = None
    limit: int = 50
    before_id: int | None = None  # page backwards from this record id
    request_id: str | None = None  # one call: its record, and for a job every attempt's ("<id>.2", ...)
    token_id: int | None = None
    failed: bool | None = None  # True: status >= 400 only; False: successes only
    route: str | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums over the records a :class:`UsageQuery` selects (paging aside)."""

    calls: int
    errors: int  # status >= 400
    cost_micros: int
    avg_latency_ms: int | None = None
    avg_upstream_latency_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DaySum:
    day: int  # days since the epoch (UTC)
    calls: int
    failed: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class Bucket:
    """One (time bucket, route or channel) cell of the admin dashboard."""

    start: int  # unix time of the bucket's start (UTC)
    key: str
    calls: int
    errors: int
    cost_micros: int
    upstream_latency_sum_ms: int
    upstream_latency_n: int

    @property
    def avg_upstream_latency_ms(self) -> float | None:
        return self.upstream_latency_sum_ms / self.upstream_latency_n if self.upstream_latency_n else None
