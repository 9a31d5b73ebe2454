"""The HTTP application: routes are one line each, handlers parse, call, shape."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imagerelay import console
from imagerelay.allocator import tune_gc, tune_malloc
from imagerelay.api import apidoc, observe
from imagerelay.api.account import keys, usage
from imagerelay.api.admin import channels, users
from imagerelay.api.bodyguard import BodyBudget, BodyGuard
from imagerelay.api.errors import (
    api_error_handler,
    error_response,
    http_error_handler,
    unexpected_error_handler,
)
from imagerelay.api.observe import MetricsMiddleware
from imagerelay.api.relay import images, models
from imagerelay.api.responses import json_response
from imagerelay.config import Settings
from imagerelay.errors import ApiError
from imagerelay.logs import configure_logging, request_id_var
from imagerelay.relay import new_request_id
from imagerelay.services import Services

log = logging.getLogger("imagerelay.api")


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


class EdgeMiddleware:
    """Give every request an id before anything can fail, and turn any unexpected
    exception into the official error shape.

    Starlette's own ``Exception`` handler re-raises after answering, so the server
    would log a traceback; here nothing is re-raised and only the type is logged.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_var.set(request_id)  # for log lines (imagerelay/logs.py)
        started = False

        header = (b"x-request-id", request_id.encode())

        async def send_tracking(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:  # noqa: BLE001 - this is the last line of defence
            if started:
                log.error("unexpected %s after the response began (request %s)", type(exc).__name__, request_id)
                return
            response = await unexpected_error_handler(Request(scope), exc)
            await response(scope, receive, send_tracking)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Starlette:
    tune_malloc()
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    svc = services or Services.build(settings)
    # Uploaded images are decoded here, off the event loop; the pool's size bounds how
    # many decodes run at once in this process.
    image_pool = ThreadPoolExecutor(settings.image_check_threads, thread_name_prefix="imagerelay-imagecheck")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await svc.start()
        tune_gc()
        try:
            yield
        finally:
            image_pool.shutdown(wait=False, cancel_futures=True)
            await svc.stop()
            if svc.metrics is not None:
                svc.metrics.process_exiting()

    routes: list[BaseRoute] = [
        # the public relay API
        *images.routes,
        *models.routes,
        # a key owner's own account
        *usage.routes,
        *keys.routes,
        # administrators
        *channels.routes,
        *users.routes,
        # operations and documentation
        Route("/healthz", healthz, methods=["GET"]),
        *observe.routes,
        *apidoc.routes,
    ]
    handlers: dict[Any, Any] = {ApiError: api_error_handler, HTTPException: http_error_handler}
    if settings.console:  # off: every console URL is a 404 like any unknown path
        routes += console.console_routes(settings)
        handlers.update(console.exception_handlers())
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.services = svc
    app.state.image_pool = image_pool
    app.add_middleware(
        BodyGuard,
        timeout_s=settings.body_timeout_s,
        min_rate=settings.body_min_rate,
        budget=BodyBudget(settings.max_body_bytes_in_flight),
    )
    if settings.console:
        app.add_middleware(console.ConsoleHeaders)
    app.add_middleware(EdgeMiddleware)
    if svc.metrics is not None:
        paths = {route.endpoint: route.path for route in routes if isinstance(route, Route)}
        app.add_middleware(MetricsMiddleware, metrics=svc.metrics, paths=paths)
    return app


__all__ = ["create_app", "error_response"]
