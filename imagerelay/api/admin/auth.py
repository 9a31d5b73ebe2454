"""Who may use the admin API, and the user an admin request names."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from imagerelay.api.deps import authenticate, bearer, services_of
from imagerelay.domain.accountrules import label
from imagerelay.domain.accounts import UserInfo
from imagerelay.errors import NotFound, PermissionDenied


async def require_admin(request: Request) -> None:
    """The configured admin token, or a user token that passes :func:`authenticate` (so
    every check on a token applies here too: unknown, revoked, expired) and is an admin's."""
    token = bearer(request)
    configured = services_of(request).settings.admin_token
    if token is not None and configured and hmac.compare_digest(configured.encode(), token.encode()):
        return
    info = await authenticate(request)
    if not info.is_admin:
        raise PermissionDenied("This token does not belong to an administrator.")


async def user_named(request: Request) -> UserInfo:
    """The user the path's ``{name}`` names; a name no user has (or could have) is a 404."""
    name = label(request.path_params["name"])
    user = await services_of(request).accounts.find_user(name) if name else None
    if user is None:
        raise NotFound(f"No user named {request.path_params['name']!r}.")
    return user


async def user_filter(request: Request) -> int | None:
    """The id of the user an admin listing's ``?user=NAME`` names (None: every user);
    a name no user has is a 404."""
    name = request.query_params.get("user")
    if not name:
        return None
    user = await services_of(request).accounts.find_user(name) if label(name) else None
    if user is None:
        raise NotFound(f"No user named {name!r}.", param="user")
    return user.id
