"""Admin HTTP API for users: their keys (``/admin/tokens``), their accounts
(``/admin/users``), their balances (top-ups and debits, recorded in the ledger) and their
usage records (``/admin/usage``). Keys are handled by api/account/keys.py's helpers, the
same as a user's own.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.account.keys import (
    BODY_LIMIT,
    create_response,
    revoke_response,
    token_json,
    token_named,
    token_page,
    update_response,
    user_json,
)
from imagerelay.api.account.usage import usage_page
from imagerelay.api.admin.auth import require_admin, user_filter, user_named
from imagerelay.api.deps import services_of
from imagerelay.api.parsing import read_json_object
from imagerelay.api.responses import json_response
from imagerelay.domain.accountrules import TOKEN_FIELDS, label, refuse_unknown, token_changes, usd_field, user_changes
from imagerelay.domain.accounts import UserInfo
from imagerelay.domain.money import format_amount, format_usd
from imagerelay.errors import InvalidRequest
from imagerelay.services import Services
from imagerelay.storage.billing import AdjustmentRefused

# -- keys and users -------------------------------------------------------------------


async def admin_list_tokens(request: Request) -> Response:
    await require_admin(request)
    return await token_page(request, await user_filter(request))


async def admin_create_token(request: Request) -> Response:
    """Create a token (user created if missing) with optional limits; shown once."""
    await require_admin(request)
    services = services_of(request)
    body = await read_json_object(request, BODY_LIMIT)
    refuse_unknown(body, ("user", "group", *TOKEN_FIELDS))
    name = label(body.pop("user", None))
    if name is None:
        raise InvalidRequest("user (a user name of up to 128 printable characters) is required.", param="user")
    group = body.pop("group", None)
    if not isinstance(group, str) or group not in services.catalog.groups:  # a list or object is no group either
        raise InvalidRequest(f"group must be one of: {', '.join(services.catalog.groups)}.", param="group")
    token_changes(body, models=services.catalog.models_by_group.get(group, ()))  # before the user is created
    return await create_response(services, await services.accounts.get_or_create_user(name), group, body)


async def admin_get_token(request: Request) -> Response:
    await require_admin(request)
    return json_response(token_json(await token_named(request, None), time.time()))


async def admin_update_token(request: Request) -> Response:
    await require_admin(request)
    return await update_response(request, await token_named(request, None))


async def admin_revoke_token(request: Request) -> Response:
    await require_admin(request)
    return await revoke_response(request, await token_named(request, None))


async def admin_users(request: Request) -> Response:
    await require_admin(request)
    users = await services_of(request).accounts.list_users()
    return json_response({"object": "list", "data": [user_json(u) for u in users]})


async def admin_update_user(request: Request) -> Response:
    """Disable or enable a user (their tokens are refused: 401 ``account_disabled``),
    make them an admin or not, and set the groups they may create tokens in."""
    await require_admin(request)
    services = services_of(request)
    user = await user_named(request)
    body = await read_json_object(request, BODY_LIMIT)
    await services.accounts.update_user(user.id, user_changes(body, groups=list(services.catalog.groups)))
    updated = await services.accounts.get_user(user.id)
    assert updated is not None
    return json_response(user_json(updated))


# -- balances and usage ------------------------------------------------------------------


async def adjust_balance(services: Services, user: UserInfo, amount: object, reason: object) -> int:
    """Top up (or, negative, debit) ``user`` by ``amount`` (a plain decimal USD string,
    read exactly into micro-dollars) with a ledger ``reason``; the admin API and the
    console both come here. Returns the new balance; raises :class:`InvalidRequest`."""
    micros, why = usd_field({"amount_usd": amount}, "amount_usd", signed=True), label(reason, 1000)
    if not micros:
        raise InvalidRequest('amount_usd is required and non-zero, e.g. "10.00" or "-2.50".', param="amount_usd")
    if why is None:
        raise InvalidRequest(
            "reason is required (up to 1,000 printable characters): it is recorded in the ledger.", param="reason"
        )
    try:
        return await services.billing.adjust(user.id, micros, why.strip(), kind="topup" if micros > 0 else "adjust")
    except AdjustmentRefused as refused:
        raise InvalidRequest(
            f"Refused: {user.name}'s available balance is {format_usd(refused.available_micros)}; "
            + ("a debit cannot take it below zero." if micros < 0 else "the balance would pass its maximum."),
            param="amount_usd",
            code="balance_limit",
        ) from None


async def admin_adjust_balance(request: Request) -> Response:
    await require_admin(request)
    user = await user_named(request)
    body = await read_json_object(request, 64 * 1024)
    new_balance = await adjust_balance(services_of(request), user, body.get("amount_usd"), body.get("reason"))
    return json_response({"user": user.name, "balance_micros": new_balance, "balance_usd": format_amount(new_balance)})


async def admin_usage(request: Request) -> Response:
    await require_admin(request)
    return await usage_page(request, await user_filter(request))


routes = [
    Route("/admin/tokens", admin_list_tokens, methods=["GET"]),
    Route("/admin/tokens", admin_create_token, methods=["POST"]),
    Route("/admin/tokens/{token_id}", admin_get_token, methods=["GET"]),
    Route("/admin/tokens/{token_id}", admin_update_token, methods=["PATCH"]),
    Route("/admin/tokens/{token_id}", admin_revoke_token, methods=["DELETE"]),
    Route("/admin/users", admin_users, methods=["GET"]),
    Route("/admin/users/{name}", admin_update_user, methods=["PATCH"]),
    Route("/admin/users/{name}/balance", admin_adjust_balance, methods=["POST"]),
    Route("/admin/usage", admin_usage, methods=["GET"]),
]
