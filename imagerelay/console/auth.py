"""Who is signed in to the console: sessions from the cookie, and the guards pages use.

A session is a random id in an ``HttpOnly; SameSite=Lax`` cookie (``Secure`` over HTTPS,
including HTTPS a trusted proxy terminated: ``IMAGERELAY_FORWARDED_ALLOW_IPS``), stored
server-side as a hash with its own CSRF token (storage/logins.py). Sign-in always opens a
new session and closes the one the browser brought, so a planted id is worth nothing.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from imagerelay.api.account.keys import usable_groups
from imagerelay.api.deps import services_of
from imagerelay.storage.logins import Logins

SESSION_COOKIE = "imagerelay_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    id: int
    name: str
    is_admin: bool
    allowed_groups: tuple[str, ...]  # groups this user may create tokens in (catalog groups only)
    session_id: str  # the session row's key (a hash; never the cookie value)
    csrf_token: str


class SignInRequired(Exception):
    """A page needs a signed-in user: answered with a redirect to the sign-in page."""


class PageDenied(Exception):
    """A signed-in user may not see this page (or a CSRF check failed): a 403 page."""

    def __init__(self, message: str = "You may not open this page.") -> None:
        super().__init__(message)
        self.message = message


def logins_of(request: Request) -> Logins:
    return services_of(request).logins


async def console_user(request: Request) -> ConsoleUser | None:
    if "console_user" in request.scope.get("state", {}):
        return request.state.console_user  # type: ignore[no-any-return]
    user = None
    sid = request.cookies.get(SESSION_COOKIE)
    if sid and len(sid) <= 128:
        settings = services_of(request).settings
        row = await logins_of(request).session(sid, idle_s=settings.session_idle_s, max_s=settings.session_max_s)
        if row is not None:
            info = await services_of(request).accounts.get_user(row.user_id)
            if info is not None and not info.disabled:
                user = ConsoleUser(
                    info.id,
                    info.name,
                    info.is_admin,
                    await usable_groups(services_of(request), info),
                    row.id_hash,
                    row.csrf_token,
                )
    request.state.console_user = user
    return user


async def require_user(request: Request) -> ConsoleUser:
    user = await console_user(request)
    if user is None:
        raise SignInRequired()
    return user


async def require_admin(request: Request) -> ConsoleUser:
    user = await require_user(request)
    if not user.is_admin:
        raise PageDenied("This page is for administrators.")
    return user


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected).encode(), str(given).encode())


async def require_json_user(request: Request) -> ConsoleUser:
    """For JSON endpoints called by page scripts: the session cookie AND the session's
    CSRF token in ``X-CSRF-Token``. Failures raise ``PermissionDenied``/``AuthenticationFailed``
    (the API's error shape)."""
    from imagerelay.errors import AuthenticationFailed, PermissionDenied

    user = await console_user(request)
    if user is None:
        raise AuthenticationFailed("Sign in to the console first.", code="not_signed_in")
    if not csrf_matches(user.csrf_token, request.headers.get(CSRF_HEADER)):
        raise PermissionDenied("Missing or wrong X-CSRF-Token header; reload the page.", code="csrf_failed")
    return user


def cookie_path(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/") + "/console"


def set_session_cookie(request: Request, response: Response, sid: str) -> None:
    settings = services_of(request).settings
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=int(settings.session_max_s),
        path=cookie_path(request),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=cookie_path(request), httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )
