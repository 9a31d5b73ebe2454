"""The playground ("online test"): a page whose script calls the PUBLIC API like the SDK.

The page itself holds no secrets: it lists the user's tokens (the browser supplies a key
it kept when the token was created, or the user pastes it) and offers a *session test
key*: ``POST /console/playground/test-key`` mints a real token in a group the user may
use, named after the console session and expiring with it, and returns its key once.
Everything after that (models and their capabilities, generations, edits, jobs, usage)
goes through ``/v1`` with ``Authorization: Bearer``, so what works here works in code.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.deps import services_of
from imagerelay.api.parsing import read_json_object
from imagerelay.api.responses import json_response
from imagerelay.console.auth import ConsoleUser, require_json_user, require_user
from imagerelay.console.web import render, url
from imagerelay.domain.accounts import TokenFilter
from imagerelay.errors import InvalidRequest, PermissionDenied
from imagerelay.services import Services

TEST_KEY_PREFIX = "playground session "
MAX_TOKENS_LISTED = 100


def test_key_name(user: ConsoleUser) -> str:
    """The name that ties a test key to one console session (a prefix of the session
    row's hash: it identifies the row for revocation and reveals nothing of the cookie)."""
    return TEST_KEY_PREFIX + user.session_id[:12]


async def _session_ends(request: Request, user: ConsoleUser) -> float:
    """When the key stops working: when the session would end if left idle from now, and
    never after the session's absolute end. (Sign-out revokes it at once:
    :func:`revoke_session_keys`; a session kept busy past the idle span mints a new key.)"""
    services = services_of(request)
    settings = services.settings
    created = await services.logins.session_created_at(user.session_id)
    now = time.time()
    return min(now + settings.session_idle_s, (created if created is not None else now) + settings.session_max_s)


async def _session_keys(services: Services, user_id: int, name: str, group: str | None = None) -> list[int]:
    views, _ = await services.accounts.list_tokens(
        TokenFilter(user_id=user_id, group=group, status="active", limit=MAX_TOKENS_LISTED)
    )
    return [v.id for v in views if v.name == name]


async def revoke_session_keys(request: Request, user: ConsoleUser) -> None:
    """Sign-out calls this: the session's test keys stop working with the session."""
    services = services_of(request)
    for token_id in await _session_keys(services, user.id, test_key_name(user)):
        await services.accounts.revoke_token(token_id)


async def revoke_all_test_keys(services: Services, user_id: int) -> None:
    """A password change ends every session of the user, so every session's test keys end
    with them (a stolen session's key must not outlive the change that locked it out)."""
    views, _ = await services.accounts.list_tokens(
        TokenFilter(user_id=user_id, status="active", limit=MAX_TOKENS_LISTED)
    )
    for view in views:
        if view.name.startswith(TEST_KEY_PREFIX):
            await services.accounts.revoke_token(view.id)


async def page(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    views, _ = await services.accounts.list_tokens(
        TokenFilter(user_id=user.id, status="active", limit=MAX_TOKENS_LISTED)
    )
    # Test keys are offered by group (the session's own, kept by the page), not as tokens.
    tokens = [
        {"id": v.id, "name": v.name, "group": v.group, "hint": v.hint}
        for v in views
        if v.group in services.catalog.groups and not v.name.startswith(TEST_KEY_PREFIX)
    ]
    return await render(
        request,
        "playground.html",
        {
            "tokens": tokens,
            "groups": list(user.allowed_groups),
            "api_base": url(request, "/v1"),
            "test_key_url": url(request, "/console/playground/test-key"),
            "test_key_name": test_key_name(user),
        },
    )


async def test_key(request: Request) -> Response:
    """Mint the session's test key for one group; the key is in this answer only."""
    user = await require_json_user(request)
    services = services_of(request)
    body = await read_json_object(request, 4096)
    group = body.get("group")
    if not isinstance(group, str) or group not in services.catalog.groups:
        raise InvalidRequest(f"group must be one of: {', '.join(user.allowed_groups) or 'none'}.", param="group")
    if group not in user.allowed_groups:
        raise PermissionDenied(
            f"This account may not use group {group!r}; it may use: {', '.join(user.allowed_groups) or 'none'}.",
            param="group",
            code="group_not_allowed",
        )
    name = test_key_name(user)
    for token_id in await _session_keys(services, user.id, name, group):  # one live test key per group
        await services.accounts.revoke_token(token_id)
    expires_at = await _session_ends(request, user)
    key = await services.accounts.create_token(user.id, group, name=name, expires_at=expires_at)
    created = await services.accounts.view_token_by_secret(key)
    assert created is not None
    return json_response(
        {
            "id": created.id,
            "object": "api_key",
            "name": name,
            "group": group,
            "hint": created.hint,
            "expires_at": expires_at,
            "key": key,
        },
        status=201,
    )


routes = [
    Route("/console/playground", page, methods=["GET"]),
    Route("/console/playground/test-key", test_key, methods=["POST"]),
]


__all__ = ["routes", "revoke_session_keys", "test_key_name"]
