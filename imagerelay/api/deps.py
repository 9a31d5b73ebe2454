"""Request dependencies shared by the route modules: services and authentication."""

from __future__ import annotations

import time
from concurrent.futures import Executor

from starlette.requests import Request

from imagerelay.domain.accounts import TokenInfo
from imagerelay.errors import AuthenticationFailed
from imagerelay.services import Services


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def image_pool_of(request: Request) -> Executor:
    """The thread pool that decodes uploaded images (bounded: see ``create_app``)."""
    return request.app.state.image_pool  # type: ignore[no-any-return]


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: Request) -> TokenInfo:
    """The caller's identity from ``Authorization: Bearer``: every route that takes a key
    comes here (``require_admin`` too), and this asks :meth:`Accounts.identify`, the one
    place a key becomes an identity (unknown, revoked, expired, user disabled: 401)."""
    token = bearer(request)
    if token is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'; "
            "create one on the console's token page: /console/tokens.",
            code="missing_api_key",
        )
    return await services_of(request).accounts.identify(token, time.time())
