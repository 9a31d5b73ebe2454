"""Console pages for every user: sign-in/up/out, password, home, tokens, usage, pricing.

Handlers parse, call the shared services (storage/accounts.py, storage/billing.py, the
catalog) and render; the data shaping lives in ``console/views.py``.
"""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from imagerelay.api.deps import services_of
from imagerelay.console import accounts, playground, token_pages, usage_pages
from imagerelay.console.auth import (
    SESSION_COOKIE,
    PageDenied,
    SignInRequired,
    clear_session_cookie,
    console_user,
    logins_of,
    require_user,
    set_session_cookie,
)
from imagerelay.console.passwords import HashingBusy
from imagerelay.console.web import FormTooLarge, read_form, redirect, render, url
from imagerelay.domain.accounts import TokenFilter

# -- errors -----------------------------------------------------------------------------


async def sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    here = request.url.path[len(request.scope.get("root_path", "").rstrip("/")) :]
    target = "/console/signin"
    if request.method == "GET" and here not in ("/console/", "/console"):
        target += "?" + urllib.parse.urlencode({"next": here})
    return RedirectResponse(url(request, target), status_code=303)


async def page_denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageDenied)
    return await render(request, "error.html", {"title": "Not allowed", "message": exc.message}, status=403)


async def form_too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormTooLarge)
    return await render(
        request,
        "error.html",
        {"title": "Form too large", "message": "This form is larger than the console accepts."},
        status=413,
    )


async def hashing_busy(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HashingBusy)
    response = await render(
        request,
        "error.html",
        {"title": "Busy", "message": "Too many sign-ins at once. Try again in a moment."},
        status=503,
    )
    response.headers.update(exc.headers)
    return response


def _next_path(raw: str | None) -> str:
    """Where to go after signing in: only a console path of this gateway (no open redirect)."""
    if raw and raw.startswith("/console/") and not raw.startswith("//") and "\\" not in raw and len(raw) < 300:
        return raw
    return "/console/"


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# -- accounts ---------------------------------------------------------------------------


async def root(request: Request) -> Response:
    return RedirectResponse(url(request, "/console/"), status_code=302)


async def playground_redirect(request: Request) -> Response:
    return RedirectResponse(url(request, "/console/playground"), status_code=302)


async def console_bare(request: Request) -> Response:
    return RedirectResponse(url(request, "/console/"), status_code=302)


async def signin_page(request: Request) -> Response:
    if await console_user(request) is not None:
        return redirect(request, "/console/")
    return await render(
        request,
        "signin.html",
        {
            "next": _next_path(request.query_params.get("next")),
            "signup": accounts.signup_mode(services_of(request)) != "off",
        },
    )


async def signin_submit(request: Request) -> Response:
    services = services_of(request)
    form = await read_form(request)
    name, password = str(form.get("name") or "").strip(), str(form.get("password") or "")
    next_path = _next_path(str(form.get("next") or ""))
    try:
        signed = await accounts.sign_in(services, logins_of(request), name, password, _client_address(request))
    except accounts.SignInRefused as refused:
        return await render(
            request,
            "signin.html",
            {
                "next": next_path,
                "name": name,
                "error": refused.message,
                "signup": accounts.signup_mode(services) != "off",
            },
            status=429 if refused.throttled else 400,
        )
    # A new id at every sign-in; the id the browser came with is closed (no fixation).
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await logins_of(request).close_session(old)
    response = redirect(request, next_path)
    set_session_cookie(request, response, signed.session)
    return response


async def signup_page(request: Request) -> Response:
    services = services_of(request)
    mode = accounts.signup_mode(services)
    if mode == "off":
        return await render(
            request,
            "error.html",
            {
                "title": "Sign-up is closed",
                "message": "This gateway does not take sign-ups; ask its administrator for an account.",
            },
            status=404,
        )
    return await render(
        request,
        "signup.html",
        {"mode": mode, "invite": request.query_params.get("invite", "")[:100], "name_help": accounts.NAME_HELP},
    )


async def signup_submit(request: Request) -> Response:
    services = services_of(request)
    form = await read_form(request)
    name = str(form.get("name") or "").strip()
    invite = str(form.get("invite") or "").strip() or None
    logins = logins_of(request)
    try:
        user_id = await accounts.sign_up(
            services, logins, name, str(form.get("password") or ""), str(form.get("confirm") or ""), invite
        )
    except accounts.SignUpRefused as refused:
        mode = accounts.signup_mode(services)
        return await render(
            request,
            "signup.html",
            {
                "mode": mode,
                "name": name,
                "invite": invite or "",
                "error": refused.message,
                "field": refused.field,
                "name_help": accounts.NAME_HELP,
            },
            status=404 if mode == "off" else 400,
        )
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await logins.close_session(old)
    response = redirect(request, "/console/tokens/new", flash=f"Welcome, {name}. Create your first API key.")
    set_session_cookie(request, response, await logins.open_session(user_id))
    return response


async def signout(request: Request) -> Response:
    user = await console_user(request)
    if user is None:  # already out (session expired): nothing to change
        return redirect(request, "/console/signin")
    await read_form(request)
    await playground.revoke_session_keys(request, user)  # the playground's test keys end with the session
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        await logins_of(request).close_session(sid)
    response = redirect(request, "/console/signin", flash="You are signed out.")
    clear_session_cookie(request, response)
    return response


async def password_page(request: Request) -> Response:
    await require_user(request)
    return await render(request, "password.html")


async def password_submit(request: Request) -> Response:
    user = await require_user(request)
    form = await read_form(request)
    logins = logins_of(request)
    services = services_of(request)
    current, new, confirm = (str(form.get(k) or "") for k in ("current", "password", "confirm"))
    error, field = None, None
    if not await services.passwords.verify(current, await logins.password_hash(user.id)):
        error, field = "The current password is wrong.", "current"
    elif new != confirm:
        error, field = "The two new passwords differ.", "confirm"
    else:
        try:
            await accounts.set_password(services, logins, user.id, user.name, new)
            await playground.revoke_all_test_keys(services, user.id)
        except ValueError as exc:
            error, field = str(exc), "password"
    if error:
        return await render(request, "password.html", {"error": error, "field": field}, status=400)
    # Every session ended with the change; this browser gets a fresh one.
    response = redirect(request, "/console/", flash="Your password is changed; other sessions are signed out.")
    set_session_cookie(request, response, await logins.open_session(user.id))
    return response


# -- user pages -------------------------------------------------------------------------


async def home(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    info = await services.accounts.get_user(user.id)
    assert info is not None
    tokens, _ = await services.accounts.list_tokens(TokenFilter(user_id=user.id, status="active", limit=5))
    return await render(request, "home.html", {"info": info, "tokens": tokens})


routes = [
    *token_pages.routes,
    *usage_pages.routes,
    Route("/", root, methods=["GET"]),
    Route("/playground", playground_redirect, methods=["GET"]),
    Route("/console", console_bare, methods=["GET"]),
    Route("/console/", home, methods=["GET"]),
    Route("/console/signin", signin_page, methods=["GET"]),
    Route("/console/signin", signin_submit, methods=["POST"]),
    Route("/console/signup", signup_page, methods=["GET"]),
    Route("/console/signup", signup_submit, methods=["POST"]),
    Route("/console/signout", signout, methods=["POST"]),
    Route("/console/password", password_page, methods=["GET"]),
    Route("/console/password", password_submit, methods=["POST"]),
]
