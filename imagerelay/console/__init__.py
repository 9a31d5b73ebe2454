"""The web console: pages served by the gateway itself (docs/console.md).

``console_routes`` is mounted by ``api/app.py`` only when ``IMAGERELAY_CONSOLE`` is on;
``ConsoleHeaders`` puts the strict Content-Security-Policy on every console answer.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from imagerelay.config import Settings
from imagerelay.console.auth import PageDenied, SignInRequired
from imagerelay.console.web import FormTooLarge

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class StaticAssets(StaticFiles):
    """The console's own files; URLs carry a content hash (``web.static``), so long caching is safe."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["cache-control"] = "public, max-age=31536000, immutable"
        return response


def console_routes(settings: Settings) -> list[BaseRoute]:
    from imagerelay.console import admin_pages, pages, playground

    return [
        Mount("/console/static", app=StaticAssets(packages=[("imagerelay.console", "static")]), name="console-static"),
        *pages.routes,
        *playground.routes,
        *admin_pages.routes,
        Route("/console/{rest:path}", not_found, methods=["GET"]),  # last: an HTML 404 for people
    ]


async def not_found(request: Any) -> Response:
    """A mistyped console address gets a console page (title, landmarks, a way home), not
    the API's JSON error: browsers land here, not SDKs."""
    from imagerelay.console.web import render

    return await render(
        request,
        "error.html",
        {"title": "No such page", "message": "There is no console page at this address."},
        status=404,
    )


def exception_handlers() -> dict[Any, Any]:
    from imagerelay.console import pages
    from imagerelay.console.passwords import HashingBusy

    return {
        SignInRequired: pages.sign_in_required,
        PageDenied: pages.page_denied,
        FormTooLarge: pages.form_too_large,
        HashingBusy: pages.hashing_busy,
    }


def is_console_path(scope: Any) -> bool:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path in ("/", "/playground") or path == "/console" or path.startswith("/console/")


class ConsoleHeaders:
    """Security headers on every console response (pages, redirects, static files, errors)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not is_console_path(scope):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
