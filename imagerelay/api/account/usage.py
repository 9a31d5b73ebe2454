"""A key owner's account: balance, usage records and the group's prices. ``/admin/usage``
(api/admin/users.py) lists everyone's records with the same filters."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.deps import authenticate, services_of
from imagerelay.api.responses import json_response
from imagerelay.catalog.loader import Catalog
from imagerelay.domain import capabilities
from imagerelay.domain.accountrules import label
from imagerelay.domain.money import format_amount
from imagerelay.domain.records import UsageQuery
from imagerelay.errors import InvalidRequest

MAX_PAGE = 500


def usage_query(request: Request, user_id: int | None) -> UsageQuery:
    params = request.query_params

    def number(name: str, kind: type) -> Any:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        try:
            value = kind(raw)
        except ValueError:
            raise InvalidRequest(f"{name} must be a {kind.__name__}", param=name) from None
        # Past these the database driver fails (an int beyond 64 bits) or the filter is meaningless.
        if not (math.isfinite(value) and abs(value) < 2**63):
            raise InvalidRequest(f"{name} is out of range", param=name)
        return value

    request_id = params.get("request_id") or None
    if request_id is not None and label(request_id, 200) is None:  # PostgreSQL refuses NUL in a text parameter
        raise InvalidRequest("request_id must be the x-request-id of a call (req_...).", param="request_id")
    limit = number("limit", int) or 50
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    return UsageQuery(
        user_id=user_id,
        since=number("since", float),
        until=number("until", float),
        model=params.get("model") or None,
        status=number("status", int),
        limit=limit,
        before_id=number("before", int),
        request_id=request_id,
    )


def _record_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "request_id": r["request_id"],
        "created_at": r["created_at"],
        "user_id": r["user_id"],
        "token_id": r["token_id"],
        "group": r["group_name"],
        "model": r["model"],
        "route": r["route"],
        "channel": r["channel"],
        "endpoint": r["endpoint"],
        "status": r["status"],
        "error_code": r["error_code"],
        "latency_ms": r["latency_ms"],
        "upstream_latency_ms": r["upstream_latency_ms"],
        "attempts": r["attempts"],
        "usage": {
            "input_text_tokens": r["input_text_tokens"],
            "input_image_tokens": r["input_image_tokens"],
            "cached_tokens": r["cached_tokens"],
            "output_tokens": r["output_tokens"],
        },
        "billing_mode": r["billing_mode"],
        "cost_micros": r["cost_micros"],
        "cost_usd": format_amount(r["cost_micros"]),
        "price_basis": r["price_basis"],
    }


async def usage_page(request: Request, user_id: int | None) -> Response:
    rows, more = await services_of(request).reports.page(usage_query(request, user_id))
    data = [_record_json(r) for r in rows]
    return json_response(
        {
            "object": "list",
            "data": data,
            "has_more": more,
            "next_before": data[-1]["id"] if more and data else None,
        }
    )


async def balance(request: Request) -> Response:
    token = await authenticate(request)
    user = await services_of(request).accounts.get_user(token.user_id)
    assert user is not None
    return json_response(
        {
            "user": user.name,
            "balance_micros": user.balance_micros,
            "held_micros": user.held_micros,
            "available_micros": user.available_micros,
            "balance_usd": format_amount(user.balance_micros),
            "available_usd": format_amount(user.available_micros),
        }
    )


async def usage(request: Request) -> Response:
    token = await authenticate(request)
    return await usage_page(request, token.user_id)


def group_pricing(catalog: Catalog, group: str) -> list[dict[str, Any]]:
    """The models of ``group`` with their route, billing mode and prices (``GET
    /v1/pricing``'s entries; the console's pricing matrix)."""
    data = []
    for model in catalog.models_by_group.get(group, ()):
        route = catalog.route(group, model)
        assert route is not None
        entry: dict[str, Any] = {
            "model": model,
            "group": group,
            "route": route.spec.name,
            "description": route.spec.description,
            "endpoints": list(route.spec.endpoints),
        }
        price = capabilities.billing(route)
        entry["billing_mode"] = price.pop("mode")
        entry.update(price)
        data.append(entry)
    return data


async def pricing(request: Request) -> Response:
    token = await authenticate(request)
    catalog = services_of(request).catalog
    return json_response({"object": "list", "group": token.group, "data": group_pricing(catalog, token.group)})


routes = [
    Route("/v1/account/balance", balance, methods=["GET"]),
    Route("/v1/account/usage", usage, methods=["GET"]),
    Route("/v1/pricing", pricing, methods=["GET"]),
]
