"""API keys: one API for the console, scripts and the CLI's habits.

- ``/admin/tokens`` and ``/admin/users`` (api/admin/users.py) use this module's key
  helpers: administrators act on anyone's keys.
- ``/v1/account/tokens`` (list, create, rename/limit, revoke): a user's own keys, with any
  of their keys that is not itself restricted (a spend cap or allowed models): a
  restricted key must not mint itself an unrestricted one. Another user's key id is a 404.

A key's secret is returned once, by the call that creates it; lists show ``key_hint``
(``sk-abcd…wxyz``) to recognise it, never the secret or its hash.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.deps import authenticate, services_of
from imagerelay.api.parsing import read_json_object
from imagerelay.api.responses import json_response
from imagerelay.domain.accountrules import TOKEN_FIELDS, label, refuse_unknown, token_changes
from imagerelay.domain.accounts import TOKEN_STATUSES, TokenFilter, TokenInfo, TokenLimits, TokenView, UserInfo
from imagerelay.domain.money import format_amount
from imagerelay.errors import InvalidRequest, NotFound, PermissionDenied
from imagerelay.services import Services

MAX_PAGE = 500
_MAX_ROW_ID = 2**31 - 1  # an INTEGER primary key: past it PostgreSQL refuses the query
BODY_LIMIT = 64 * 1024


def _usd(micros: int | None) -> str | None:
    return None if micros is None else format_amount(micros)


def token_json(view: TokenView, now: float) -> dict[str, Any]:
    return {
        "id": view.id,
        "object": "api_key",
        "name": view.name,
        "user": view.user_name,
        "group": view.group,
        "key_hint": view.hint,
        "status": view.status(now),
        "created_at": int(view.created_at),
        "expires_at": view.expires_at,
        "limits": {
            "rpm": view.rpm_limit,
            "concurrency": view.concurrency_limit,
            "spend_cap_usd": _usd(view.spend_cap_micros),
            "allowed_models": list(view.allowed_models) if view.allowed_models is not None else None,
        },
        "spent_usd": _usd(view.spent_micros),
        "held_usd": _usd(view.held_micros),
    }


def user_json(user: UserInfo) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "is_admin": user.is_admin,
        "disabled": user.disabled,
        "allowed_groups": list(user.allowed_groups) if user.allowed_groups is not None else None,
        "balance_micros": user.balance_micros,
        "held_micros": user.held_micros,
        "balance_usd": _usd(user.balance_micros),
    }


def _token_filter(request: Request, user_id: int | None) -> TokenFilter:
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in TOKEN_STATUSES:
        raise InvalidRequest(f"status must be one of: {', '.join(TOKEN_STATUSES)}.", param="status")
    limit = _small_int(params.get("limit"), "limit", 100)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
    before = params.get("before")
    group = params.get("group") or None
    if group is not None and label(group) is None:  # PostgreSQL refuses NUL in a text parameter
        raise InvalidRequest("group must be a group name.", param="group")
    return TokenFilter(
        user_id=user_id,
        group=group,
        status=status,
        limit=limit,
        before_id=_small_int(before, "before", 0) if before else None,
    )


def _small_int(raw: str | None, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= _MAX_ROW_ID):
        raise InvalidRequest(f"{name} must be a whole number.", param=name)
    return int(raw)


async def token_page(request: Request, user_id: int | None) -> Response:
    views, more = await services_of(request).accounts.list_tokens(_token_filter(request, user_id))
    now = time.time()
    data = [token_json(v, now) for v in views]
    return json_response(
        {"object": "list", "data": data, "has_more": more, "next_before": data[-1]["id"] if more and data else None}
    )


async def token_named(request: Request, owner_id: int | None) -> TokenView:
    """The token named by the path, if ``owner_id`` (None: anyone's) holds it; else 404,
    the same for a key that does not exist and for another user's."""
    raw = request.path_params["token_id"]
    view = None
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= _MAX_ROW_ID:
        view = await services_of(request).accounts.view_token(int(raw))
    if view is None or (owner_id is not None and view.user_id != owner_id):
        raise NotFound(f"No API key {raw!r}.", param="token_id")
    return view


async def create_token_for(
    services: Services, user: UserInfo, group: str, body: dict[str, Any]
) -> tuple[str, TokenView]:
    """Create a key in ``group`` with ``body``'s name and limits (``TOKEN_FIELDS``);
    returns the secret (shown once: only its hash is kept) and the key as lists show it.
    Shared by the admin API, the self-service API and the console."""
    changes = token_changes(body, models=services.catalog.models_by_group.get(group, ()))
    plain = await services.accounts.create_token(
        user.id,
        group,
        name=str(changes.get("name") or "default"),
        expires_at=changes.get("expires_at"),  # type: ignore[arg-type]
        limits=TokenLimits(
            spend_cap_micros=changes.get("spend_cap_micros"),  # type: ignore[arg-type]
            allowed_models=changes.get("allowed_models"),  # type: ignore[arg-type]
            rpm_limit=changes.get("rpm_limit"),  # type: ignore[arg-type]
            concurrency_limit=changes.get("concurrency_limit"),  # type: ignore[arg-type]
        ),
    )
    view = await services.accounts.view_token_by_secret(plain)
    assert view is not None
    return plain, view


async def create_response(services: Services, user: UserInfo, group: str, body: dict[str, Any]) -> Response:
    plain, view = await create_token_for(services, user, group, body)
    # The only answer that carries the secret: it is stored as a hash.
    return json_response({**token_json(view, time.time()), "token": plain}, status=201)


async def usable_groups(services: Services, user: UserInfo) -> tuple[str, ...]:
    """The catalog groups ``user`` may create keys in: the administrator's list, else the
    groups of the keys they were given."""
    allowed = set(
        user.allowed_groups if user.allowed_groups is not None else await services.accounts.token_groups(user.id)
    )
    return tuple(g for g in services.catalog.groups if g in allowed)  # in the catalog's order


async def check_group_allowed(services: Services, user: UserInfo, group: str) -> None:
    usable = await usable_groups(services, user)
    if group not in usable:
        raise PermissionDenied(
            f"This account may not create keys in group {group!r}; it may use: {', '.join(usable) or 'none'}.",
            param="group",
            code="group_not_allowed",
        )


async def update_token_of(services: Services, view: TokenView, body: dict[str, Any]) -> TokenView:
    """Apply ``body``'s name and limits (``TOKEN_FIELDS``) to a key; shared with the console."""
    refuse_unknown(body, TOKEN_FIELDS)
    changes = token_changes(body, models=services.catalog.models_by_group.get(view.group, ()))
    await services.accounts.update_token(view.id, changes)
    updated = await services.accounts.view_token(view.id)
    assert updated is not None
    return updated


async def update_response(request: Request, view: TokenView) -> Response:
    services = services_of(request)
    body = await read_json_object(request, BODY_LIMIT)
    return json_response(token_json(await update_token_of(services, view, body), time.time()))


async def revoke_response(request: Request, view: TokenView) -> Response:
    services = services_of(request)
    await services.accounts.revoke_token(view.id)
    revoked = await services.accounts.view_token(view.id)
    assert revoked is not None
    return json_response(token_json(revoked, time.time()))


# -- a user's own keys -----------------------------------------------------------------


async def _manager(request: Request) -> TokenInfo:
    token = await authenticate(request)
    if token.restricted:
        raise PermissionDenied(
            "This API key has a spend cap or a model list, so it cannot manage keys; "
            "use an unrestricted key of this account.",
            code="restricted_api_key",
        )
    return token


async def my_tokens(request: Request) -> Response:
    token = await authenticate(request)
    return await token_page(request, token.user_id)


async def my_create_token(request: Request) -> Response:
    token = await _manager(request)
    services = services_of(request)
    body = await read_json_object(request, BODY_LIMIT)
    refuse_unknown(body, ("group", *TOKEN_FIELDS))
    group = body.pop("group", None) or token.group
    if not isinstance(group, str):
        raise InvalidRequest("group must be the name of a group, as a string.", param="group")
    user = await services.accounts.get_user(token.user_id)
    assert user is not None
    await check_group_allowed(services, user, group)
    return await create_response(services, user, group, body)


async def my_update_token(request: Request) -> Response:
    token = await _manager(request)
    return await update_response(request, await token_named(request, token.user_id))


async def my_revoke_token(request: Request) -> Response:
    token = await _manager(request)
    return await revoke_response(request, await token_named(request, token.user_id))


routes = [
    Route("/v1/account/tokens", my_tokens, methods=["GET"]),
    Route("/v1/account/tokens", my_create_token, methods=["POST"]),
    Route("/v1/account/tokens/{token_id}", my_update_token, methods=["PATCH"]),
    Route("/v1/account/tokens/{token_id}", my_revoke_token, methods=["DELETE"]),
]
