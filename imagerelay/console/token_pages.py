"""The user's API keys: list, create (with a group picker explained from the catalog),
quick start, limits, rename, revoke. The key rules are the API's (api/tokens.py)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.account.keys import check_group_allowed, create_token_for, token_json, update_token_of
from imagerelay.api.deps import services_of
from imagerelay.api.parsing import read_json_object
from imagerelay.api.responses import json_response
from imagerelay.console import views
from imagerelay.console.auth import ConsoleUser, require_json_user, require_user
from imagerelay.console.web import read_form, redirect, render
from imagerelay.domain.accounts import TokenFilter, TokenView
from imagerelay.errors import ApiError, NotFound

PAGE = 50


def api_base(request: Request) -> str:
    """The OpenAI-compatible base URL clients use: the configured public one, else this
    request's own (with the proxy's prefix)."""
    configured = services_of(request).settings.public_base_url
    base = configured.rstrip("/") if configured else str(request.base_url).rstrip("/")
    return base + "/v1"


async def _own_token(request: Request, user: ConsoleUser) -> TokenView | None:
    raw = request.path_params["token_id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        return None
    view = await services_of(request).accounts.view_token(int(raw))
    return view if view is not None and view.user_id == user.id else None


async def _not_found(request: Request) -> Response:
    return await render(
        request,
        "error.html",
        {"title": "No such key", "message": "This API key does not exist or is not yours."},
        status=404,
    )


async def token_list(request: Request) -> Response:
    user = await require_user(request)
    before = request.query_params.get("before", "")
    where = TokenFilter(
        user_id=user.id,
        limit=PAGE,
        before_id=int(before) if before.isascii() and before.isdigit() and len(before) <= 9 else None,
    )
    tokens, more = await services_of(request).accounts.list_tokens(where)
    return await render(
        request,
        "tokens.html",
        {
            "tokens": tokens,
            "now": time.time(),
            "more": more,
            "next_before": tokens[-1].id if more and tokens else None,
            "time_text": views.time_text,
        },
    )


async def _new_form(
    request: Request,
    user: ConsoleUser,
    *,
    error: str | None = None,
    field: str | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    services = services_of(request)
    return await render(
        request,
        "token_new.html",
        {
            "groups": views.group_summaries(services.catalog, user.allowed_groups),
            "error": error,
            "field": field,
            "values": values or {},
        },
        status=status,
    )


async def token_new(request: Request) -> Response:
    return await _new_form(request, await require_user(request))


async def token_create(request: Request) -> Response:
    user = await require_user(request)
    form = await read_form(request)
    services = services_of(request)
    values = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    group = str(form.get("group") or "")
    info = await services.accounts.get_user(user.id)
    assert info is not None
    try:
        if not group:
            return await _new_form(request, user, error="Choose a group.", field="group", values=values, status=400)
        await check_group_allowed(services, info, group)
        plain, view = await create_token_for(services, info, group, views.token_body(form, models=None))
    except ApiError as refused:
        return await _new_form(
            request, user, error=refused.message, field=refused.param, values=values, status=refused.status
        )
    # The secret is in this answer only (it is stored as a hash), never in a URL or cookie.
    return await _detail(request, user, view, plain=plain)


async def _detail(
    request: Request,
    user: ConsoleUser,
    view: TokenView,
    *,
    plain: str | None = None,
    error: str | None = None,
    field: str | None = None,
    status: int = 200,
) -> Response:
    services = services_of(request)
    models = services.catalog.models_by_group.get(view.group, ())
    return await render(
        request,
        "token.html",
        {
            "token": view,
            "plain": plain,
            "status": view.status(time.time()),
            "base_url": api_base(request),
            "group": views.group_summaries(services.catalog, (view.group,))[0]
            if view.group in services.catalog.groups
            else None,
            "snippets": views.snippets(services.catalog, view.group, api_base(request), plain),
            "placeholder": views.KEY_PLACEHOLDER,
            "models": models,
            "time_text": views.time_text,
            "day_text": views.day_text,
            "error": error,
            "field": field,
        },
        status=status,
    )


async def token_detail(request: Request) -> Response:
    user = await require_user(request)
    view = await _own_token(request, user)
    return await _detail(request, user, view) if view is not None else await _not_found(request)


async def token_update(request: Request) -> Response:
    user = await require_user(request)
    form = await read_form(request)
    view = await _own_token(request, user)
    if view is None:
        return await _not_found(request)
    services = services_of(request)
    try:
        body = views.token_body(form, models=services.catalog.models_by_group.get(view.group, ()))
        await update_token_of(services, view, body)
    except ApiError as refused:
        return await _detail(request, user, view, error=refused.message, field=refused.param, status=refused.status)
    return redirect(request, f"/console/tokens/{view.id}", flash="Saved.")


async def token_revoke(request: Request) -> Response:
    user = await require_user(request)
    await read_form(request)
    view = await _own_token(request, user)
    if view is None:
        return await _not_found(request)
    await services_of(request).accounts.revoke_token(view.id)
    return redirect(request, "/console/tokens", flash=f"Key {view.name!r} ({view.hint}) is revoked.")


async def token_patch_json(request: Request) -> Response:
    """Rename or re-limit a key from page script: JSON body as ``PATCH /v1/account/tokens/{id}``,
    authenticated by the session cookie plus the ``X-CSRF-Token`` header."""
    user = await require_json_user(request)
    view = await _own_token(request, user)
    if view is None:
        raise NotFound(f"No API key {request.path_params['token_id']!r}.", param="token_id")
    body = await read_json_object(request, 64 * 1024)
    updated = await update_token_of(services_of(request), view, body)
    return json_response(token_json(updated, time.time()))


routes = [
    Route("/console/tokens", token_list, methods=["GET"]),
    Route("/console/tokens/new", token_new, methods=["GET"]),
    Route("/console/tokens/new", token_create, methods=["POST"]),
    Route("/console/tokens/{token_id}", token_detail, methods=["GET"]),
    Route("/console/tokens/{token_id}", token_update, methods=["POST"]),
    Route("/console/tokens/{token_id}", token_patch_json, methods=["PATCH"]),
    Route("/console/tokens/{token_id}/revoke", token_revoke, methods=["POST"]),
]
