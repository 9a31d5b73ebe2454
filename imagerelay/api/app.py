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
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from imagerelay import console
from imagerelay.api import account, admin, apidoc, images, observe, tokens
from imagerelay.api.bodyguard import BodyBudget, BodyGuard
from imagerelay.api.deps import authenticate, services_of
from imagerelay.api.errors import (
    api_error_handler,
    error_response,
    http_error_handler,
    unexpected_error_handler,
)
from imagerelay.api.observe import MetricsMiddleware
from imagerelay.api.responses import json_response
from imagerelay.config import Settings
from imagerelay.domain.capabilities import model_object
from imagerelay.errors import ApiError, NotFound
from imagerelay.blobs import BlobMissing
from imagerelay.imagestore import media_type
from imagerelay.logs import configure_logging, request_id_var
from imagerelay.allocator import tune_gc, tune_malloc
from imagerelay.relay import new_request_id
from imagerelay.services import Services

log = logging.getLogger("imagerelay.api")


async def list_models(request: Request) -> Response:
    token = await authenticate(request)
    services = services_of(request)
    relay = services.relay
    data = [model_object(relay.offered_route(token.group, model)) for model in relay.models_for(token.group)
            if token.allowed_models is None or model in token.allowed_models]  # what this key may call
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """The SDK's ``models.retrieve``; the ``imagerelay`` field is what the route accepts."""
    token = await authenticate(request)
    route = services_of(request).relay.offered_route(token.group, request.path_params["model"])
    return json_response(model_object(route))


async def image_file(request: Request) -> Response:
    name = request.path_params["name"]
    store = services_of(request).store
    gone = NotFound("This image link is invalid or has expired; request the image again.")
    if store.resolve(name, request.query_params.get("expires", ""), request.query_params.get("sig", "")) is None:
        raise gone
    try:
        blob = await store.open(name)  # a store failure is a 503 (StoreUnavailable)
    except BlobMissing:
        raise gone from None
    headers = {"cache-control": "private, max-age=3600"}
    if blob.path is not None:  # a local file: sendfile, ranges and validators
        await blob.aclose()
        return FileResponse(blob.path, media_type=media_type(name), headers=headers)
    if blob.size is not None:
        headers["content-length"] = str(blob.size)
    return StreamingResponse(blob.chunks, media_type=media_type(name), headers=headers)


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
        *images.routes,
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        Route("/v1/files/images/{name}", image_file, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        *observe.routes,
        *apidoc.routes,
        *admin.routes,
        *account.routes,
        *tokens.routes,
    ]
    handlers: dict[Any, Any] = {ApiError: api_error_handler, HTTPException: http_error_handler}
    if settings.console:  # off: every console URL is a 404 like any unknown path
        routes += console.console_routes(settings)
        handlers.update(console.exception_handlers())
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.services = svc
    app.state.image_pool = image_pool
    app.add_middleware(BodyGuard, timeout_s=settings.body_timeout_s, min_rate=settings.body_min_rate,
                       budget=BodyBudget(settings.max_body_bytes_in_flight))
    if settings.console:
        app.add_middleware(console.ConsoleHeaders)
    app.add_middleware(EdgeMiddleware)
    if svc.metrics is not None:
        paths = {route.endpoint: route.path for route in routes if isinstance(route, Route)}
        app.add_middleware(MetricsMiddleware, metrics=svc.metrics, paths=paths)
    return app


__all__ = ["create_app", "error_response"]
