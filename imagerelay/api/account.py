"""Account endpoints for token owners (balance, usage, pricing) and admins (everyone)."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.admin import require_admin
from imagerelay.api.deps import authenticate, services_of
from imagerelay.api.parsing import read_json_object
from imagerelay.api.responses import json_response
from imagerelay.domain import capabilities
from imagerelay.domain.pricing import MoneyInputError, format_usd, parse_usd_amount
from imagerelay.errors import InvalidRequest, NotFound
from imagerelay.storage.accounts import TokenLimits
from imagerelay.storage.billing import AdjustmentRefused, UsageQuery, usage_page

MAX_PAGE = 500
_MAX_UNIX_TIME = 253_402_300_799  # 9999-12-31: beyond it a date is a typo


def usd(micros: int) -> str:
    return f"{Decimal(micros) / 1_000_000:.6f}"


def _usage_query(request: Request, user_id: int | None) -> UsageQuery:
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
        "cost_usd": usd(r["cost_micros"]),
        "price_basis": r["price_basis"],
    }


async def _page(request: Request, user_id: int | None) -> Response:
    rows, more = await usage_page(services_of(request).engine, _usage_query(request, user_id))
    data = [_record_json(r) for r in rows]
    return json_response({
        "object": "list", "data": data, "has_more": more,
        "next_before": data[-1]["id"] if more and data else None,
    })


async def balance(request: Request) -> Response:
    token = await authenticate(request)
    user = await services_of(request).accounts.get_user(token.user_id)
    assert user is not None
    return json_response({
        "user": user.name,
        "balance_micros": user.balance_micros,
        "held_micros": user.held_micros,
        "available_micros": user.available_micros,
        "balance_usd": usd(user.balance_micros),
        "available_usd": usd(user.available_micros),
    })


async def usage(request: Request) -> Response:
    token = await authenticate(request)
    return await _page(request, token.user_id)


async def pricing(request: Request) -> Response:
    token = await authenticate(request)
    catalog = services_of(request).catalog
    data = []
    for model in catalog.models_by_group.get(token.group, ()):
        route = catalog.route(token.group, model)
        assert route is not None
        entry: dict[str, Any] = {
            "model": model, "group": token.group, "route": route.spec.name,
            "description": route.spec.description, "endpoints": list(route.spec.endpoints),
        }
        price = capabilities.billing(route)
        entry["billing_mode"] = price.pop("mode")
        entry.update(price)
        data.append(entry)
    return json_response({"object": "list", "group": token.group, "data": data})


async def admin_users(request: Request) -> Response:
    await require_admin(request)
    users = await services_of(request).accounts.list_users()
    return json_response({"object": "list", "data": [
        {"id": u.id, "name": u.name, "is_admin": u.is_admin, "balance_micros": u.balance_micros,
         "held_micros": u.held_micros, "balance_usd": usd(u.balance_micros)} for u in users
    ]})


def _label(value: object, limit: int = 128) -> str | None:
    """A user or token name, or a ledger reason, as the database can store it on every
    backend (PostgreSQL refuses NUL and text past the column's length): else None."""
    if isinstance(value, str) and value.strip() and len(value) <= limit and value.isprintable():
        return value
    return None


def _usd_field(body: dict[str, Any], name: str, *, signed: bool = False) -> int | None:
    """An optional money field of an admin body, as micro-dollars (see parse_usd_amount)."""
    if body.get(name) is None:
        return None
    try:
        return parse_usd_amount(body[name], signed=signed)
    except MoneyInputError as exc:
        raise InvalidRequest(f"{name} {exc}.", param=name) from None


async def admin_adjust_balance(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    name = _label(request.path_params["name"])
    user = await services.accounts.find_user(name) if name else None
    if user is None:
        raise NotFound(f"No user named {request.path_params['name']!r}.")
    body = await read_json_object(request, 64 * 1024)
    micros, reason = _usd_field(body, "amount_usd", signed=True), _label(body.get("reason"), 1000)
    if not micros:
        raise InvalidRequest('amount_usd is required and non-zero, e.g. "10.00" or "-2.50".', param="amount_usd")
    if reason is None:
        raise InvalidRequest("reason is required (up to 1,000 printable characters): it is recorded in the ledger.",
                             param="reason")
    try:
        new_balance = await services.billing.adjust(user.id, micros, reason.strip(),
                                                    kind="topup" if micros > 0 else "adjust")
    except AdjustmentRefused as refused:
        raise InvalidRequest(
            f"Refused: {user.name}'s available balance is {format_usd(refused.available_micros)}; "
            + ("a debit cannot take it below zero." if micros < 0 else "the balance would pass its maximum."),
            param="amount_usd", code="balance_limit",
        ) from None
    return json_response({"user": user.name, "balance_micros": new_balance, "balance_usd": usd(new_balance)})


# Per-token limits are counters in memory and Redis: bounded so no typo becomes an
# integer the database or Redis cannot hold.
_MAX_TOKEN_LIMIT = 1_000_000


async def admin_create_token(request: Request) -> Response:
    """Create a token (user created if missing) with optional limits; shown once."""
    await require_admin(request)
    services = services_of(request)
    body = await read_json_object(request, 64 * 1024)
    user, group = _label(body.get("user")), body.get("group")
    if user is None:
        raise InvalidRequest("user (a user name of up to 128 printable characters) is required.", param="user")
    token_name = _label(body.get("name") or "default")
    if token_name is None:
        raise InvalidRequest("name must be up to 128 printable characters.", param="name")
    if group not in services.catalog.groups:
        raise InvalidRequest(f"group must be one of: {', '.join(services.catalog.groups)}.", param="group")
    cap_micros = _usd_field(body, "spend_cap_usd")
    allowed = body.get("allowed_models")
    if allowed is not None and not (isinstance(allowed, list) and all(isinstance(m, str) for m in allowed)):
        raise InvalidRequest("allowed_models must be a list of model names.", param="allowed_models")
    for key in ("rpm", "concurrency"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 1 <= value <= _MAX_TOKEN_LIMIT):
            raise InvalidRequest(f"{key} must be an integer from 1 to {_MAX_TOKEN_LIMIT:,}.", param=key)
    expires = body.get("expires_at")
    if expires is not None and (not isinstance(expires, (int, float)) or isinstance(expires, bool)
                                or not 0 <= expires <= _MAX_UNIX_TIME):
        raise InvalidRequest("expires_at must be a unix time.", param="expires_at")
    owner = await services.accounts.get_or_create_user(user)
    token = await services.accounts.create_token(
        owner.id, group, name=token_name, expires_at=expires,
        limits=TokenLimits(spend_cap_micros=cap_micros, allowed_models=tuple(allowed) if allowed else None,
                           rpm_limit=body.get("rpm"), concurrency_limit=body.get("concurrency")),
    )
    return json_response({"token": token, "user": user, "group": group}, status=201)


async def admin_usage(request: Request) -> Response:
    await require_admin(request)
    user_id = None
    name = request.query_params.get("user")
    if name:
        user = await services_of(request).accounts.find_user(name) if _label(name) else None
        if user is None:
            raise NotFound(f"No user named {name!r}.")
        user_id = user.id
    return await _page(request, user_id)


routes = [
    Route("/v1/account/balance", balance, methods=["GET"]),
    Route("/v1/account/usage", usage, methods=["GET"]),
    Route("/v1/pricing", pricing, methods=["GET"]),
    Route("/admin/users", admin_users, methods=["GET"]),
    Route("/admin/users/{name}/balance", admin_adjust_balance, methods=["POST"]),
    Route("/admin/usage", admin_usage, methods=["GET"]),
    Route("/admin/tokens", admin_create_token, methods=["POST"]),
]
