"""Rendering, forms and redirects for console pages.

Every URL a page emits is built from the request's ``root_path`` (``url()``), so the
console works under a proxy's path prefix. Forms are small and urlencoded; each carries a
CSRF token: the session's own when signed in, else a random one in a cookie the form must
echo (double submit), which also covers the sign-in and sign-up forms.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import urllib.parse
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from imagerelay.console.auth import ConsoleUser, PageDenied, console_user, cookie_path, csrf_matches
from imagerelay.domain.money import format_usd

ANON_CSRF_COOKIE = "imagerelay_csrf"
FLASH_COOKIE = "imagerelay_flash"
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 200

templates = Environment(
    loader=PackageLoader("imagerelay.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def money(micros: int) -> str:
    """Exact dollars, trailing zeros trimmed to cents: ``$0.03``, ``$0.001234``, ``-$2.50``."""
    text = format_usd(int(micros))
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{whole}.{frac.ljust(2, '0')}"


templates.globals["money"] = money


class FormTooLarge(Exception):
    """A console form past ``MAX_FORM_BYTES``: a 413 page."""


def url(request: Request, path: str) -> str:
    """``path`` (absolute within the gateway, e.g. ``/console/tokens``) under the root path."""
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/") + path


def static(request: Request, name: str) -> str:
    """A static file's URL with its content hash, so it can be cached for long."""
    return url(request, f"/console/static/{name}?v={_static_version(name)}")


@functools.lru_cache(maxsize=256)
def _static_version(name: str) -> str:
    try:
        data = resources.files("imagerelay.console").joinpath("static", name).read_bytes()
    except (OSError, ValueError):
        return "0"
    return hashlib.sha256(data).hexdigest()[:12]


def _anon_csrf(request: Request) -> tuple[str, bool]:
    """The anonymous CSRF token and whether it is new (then a cookie must carry it)."""
    existing = request.cookies.get(ANON_CSRF_COOKIE)
    if existing and 20 <= len(existing) <= 64:
        return existing, False
    cached = getattr(request.state, "new_anon_csrf", None)
    if cached is None:
        cached = request.state.new_anon_csrf = secrets.token_urlsafe(32)
    return cached, True


async def csrf_token(request: Request) -> str:
    user = await console_user(request)
    return user.csrf_token if user is not None else _anon_csrf(request)[0]


NAV = [
    ("/console/", "Home"),
    ("/console/tokens", "Tokens"),
    ("/console/playground", "Playground"),
    ("/console/usage", "Usage"),
    ("/console/pricing", "Pricing"),
]
ADMIN_NAV = [
    ("/console/admin/", "Dashboard"),
    ("/console/admin/users", "Users"),
    ("/console/admin/tokens", "All tokens"),
    ("/console/admin/channels", "Channels"),
    ("/console/admin/catalog", "Catalog"),
    ("/console/admin/usage", "All usage"),
]


async def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    user: ConsoleUser | None = await console_user(request)
    token = await csrf_token(request)
    flash = request.cookies.get(FLASH_COOKIE)
    here = request.url.path
    values = {
        "request": request,
        "user": user,
        "csrf_token": token,
        "url": lambda path: url(request, path),
        "static": lambda name: static(request, name),
        "nav": NAV if user else [],
        "admin_nav": ADMIN_NAV if user and user.is_admin else [],
        "current": here[len(request.scope.get("root_path", "").rstrip("/")) :] if here else "",
        "flash": urllib.parse.unquote(flash)[:500] if flash else None,
        **(context or {}),
    }
    response = HTMLResponse(
        templates.get_template(template).render(values), status_code=status, headers={"cache-control": "no-store"}
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path=cookie_path(request))
    if user is None:
        value, new = _anon_csrf(request)
        if new:
            response.set_cookie(
                ANON_CSRF_COOKIE,
                value,
                path=cookie_path(request),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
    return response


async def read_form(request: Request) -> FormData:
    """The request's urlencoded form, at most ``MAX_FORM_BYTES``; a missing or wrong CSRF
    token is refused (``PageDenied``: a 403 page) before the caller sees any field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise PageDenied("This form must be sent as application/x-www-form-urlencoded.")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise FormTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge()
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError):
        raise PageDenied("This form could not be read.") from None
    fields: list[tuple[str, str | UploadFile]] = list(pairs)
    form = FormData(fields)
    if not csrf_matches(await csrf_token(request), form.get("csrf_token")):  # type: ignore[arg-type]
        raise PageDenied("The form's security token is missing or stale: reload the page and try again.")
    return form


def redirect(request: Request, path: str, flash: str | None = None) -> Response:
    """A 303 to ``path`` (within the gateway) under the root path, with an optional
    one-time message shown by the next page."""
    response = RedirectResponse(url(request, path), status_code=303)
    if flash:
        response.set_cookie(
            FLASH_COOKIE,
            urllib.parse.quote(flash[:500]),
            path=cookie_path(request),
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response
