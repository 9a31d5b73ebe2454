"""Balance and usage (filters, paging, totals, CSV, a chart per day) and the pricing matrix
of the user's groups. Records come from storage/billing.py's query, prices from the
same function as ``GET /v1/pricing``."""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, replace

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imagerelay.api.account.usage import group_pricing
from imagerelay.api.deps import services_of
from imagerelay.console import reports, views
from imagerelay.console.auth import ConsoleUser, require_user
from imagerelay.console.web import render
from imagerelay.domain.accounts import TokenFilter
from imagerelay.domain.money import format_amount
from imagerelay.domain.records import DAY_S, UsageQuery
from imagerelay.errors import InvalidRequest

PAGE = 50
DEFAULT_DAYS = 30
MAX_CHART_DAYS = 366
CSV_MAX_ROWS = 100_000
STATUSES = {"": None, "ok": False, "failed": True}


@dataclass(frozen=True, slots=True)
class UsageFilters:
    query: UsageQuery  # everything but paging
    values: dict[str, str]  # as the form shows them
    first_day: int
    last_day: int
    error: str | None = None


def _filters(request: Request, user: ConsoleUser, models: set[str], token_ids: set[int]) -> UsageFilters:
    """The page's filters from the query string; a bad one is reported and dropped."""
    params = request.query_params
    today = int(time.time()) // DAY_S
    values = {k: params.get(k, "")[:40] for k in ("from", "to", "model", "token", "status")}
    error = None
    try:
        first = views.parse_day(values["from"], "from") // DAY_S if values["from"] else today - DEFAULT_DAYS + 1
        last = views.parse_day(values["to"], "to") // DAY_S if values["to"] else today
    except InvalidRequest as exc:
        error, first, last = exc.message, today - DEFAULT_DAYS + 1, today
    if last < first:
        error, first, last = "The start date is after the end date.", today - DEFAULT_DAYS + 1, today
    first = max(first, last - MAX_CHART_DAYS + 1)
    values["from"], values["to"] = views.day_text(first * DAY_S), views.day_text(last * DAY_S)
    model = values["model"] if values["model"] in models else None
    token = int(values["token"]) if values["token"].isdigit() and int(values["token"]) in token_ids else None
    failed = STATUSES.get(values["status"])
    query = UsageQuery(
        user_id=user.id,
        since=float(first * DAY_S),
        until=float((last + 1) * DAY_S),
        model=model,
        token_id=token,
        failed=failed,
        limit=PAGE,
    )
    return UsageFilters(query, values, first, last, error)


async def _context(request: Request, user: ConsoleUser) -> tuple[UsageFilters, dict[int, str], list[str]]:
    services = services_of(request)
    tokens, _ = await services.accounts.list_tokens(TokenFilter(user_id=user.id, limit=500))
    names = {t.id: f"{t.name} ({t.hint})" for t in tokens}
    groups = set(user.allowed_groups) | {t.group for t in tokens}
    models = sorted({m for g in groups for m in services.catalog.models_by_group.get(g, ())})
    return _filters(request, user, set(models), set(names)), names, models


async def usage(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    filters, token_names, models = await _context(request, user)
    before = request.query_params.get("before", "")
    page_query = replace(filters.query, before_id=int(before) if before.isdigit() and len(before) <= 9 else None)
    rows, more = await services.reports.page(page_query)
    totals = await services.reports.totals(filters.query)
    days = await services.reports.by_day(filters.query)
    info = await services.accounts.get_user(user.id)
    assert info is not None
    keep = {k: v for k, v in filters.values.items() if v}
    return await render(
        request,
        "usage.html",
        {
            "info": info,
            "rows": rows,
            "more": more,
            "next_before": rows[-1]["id"] if more and rows else None,
            "totals": totals,
            "chart": views.usage_chart(days, filters.first_day, filters.last_day),
            "values": filters.values,
            "error": filters.error,
            "models": models,
            "token_names": token_names,
            "query": urllib.parse.urlencode(keep),
            "time_text": views.time_text,
        },
    )


def user_csv_columns(token_names: dict[int, str]) -> tuple[reports.CsvColumn, ...]:
    """The user's export: their own records, their keys by name (no routes or channels)."""
    return (
        ("id", lambda r: r["id"]),
        ("created_at", lambda r: views.time_text(r["created_at"]).replace(" UTC", "Z")),
        ("request_id", lambda r: r["request_id"]),
        ("token_id", lambda r: r["token_id"]),
        ("token", lambda r: token_names.get(r["token_id"], "")),
        ("group", lambda r: r["group_name"]),
        ("model", lambda r: r["model"]),
        ("endpoint", lambda r: r["endpoint"]),
        ("status", lambda r: r["status"]),
        ("error_code", lambda r: r["error_code"] or ""),
        ("latency_ms", lambda r: r["latency_ms"]),
        ("billing_mode", lambda r: r["billing_mode"]),
        ("cost_usd", lambda r: format_amount(r["cost_micros"])),
    )


async def usage_csv(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    filters, token_names, _ = await _context(request, user)
    lines = reports.usage_csv(services.reports, filters.query, user_csv_columns(token_names), max_rows=CSV_MAX_ROWS)
    name = f"usage-{filters.values['from']}-{filters.values['to']}.csv"
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
    )


async def pricing(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    tokens, _ = await services.accounts.list_tokens(TokenFilter(user_id=user.id, status="active", limit=500))
    groups = [g for g in services.catalog.groups if g in set(user.allowed_groups) | {t.group for t in tokens}]
    rows = []
    for group in groups:
        for entry in group_pricing(services.catalog, group):
            route = services.catalog.route(group, entry["model"])
            assert route is not None
            rows.append({**entry, "summary": views.route_summary(route)})
    return await render(request, "pricing.html", {"rows": rows})


routes = [
    Route("/console/usage", usage, methods=["GET"]),
    Route("/console/usage.csv", usage_csv, methods=["GET"]),
    Route("/console/pricing", pricing, methods=["GET"]),
]
