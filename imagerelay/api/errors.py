"""Map every failure to the official error shape at the edge, and only here."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from imagerelay.api.responses import json_response
from imagerelay.errors import ApiError

log = logging.getLogger("imagerelay.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def error_response(err: ApiError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return json_response(err.to_body(), status=err.status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, getattr(request.state, "request_id", None))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"Unknown path {request.url.path}; the gateway serves /v1/images/generations, /v1/images/edits and /v1/models.",
        405: f"Method {request.method} is not allowed on {request.url.path}.",
    }.get(exc.status_code, str(exc.detail))
    return error_response(
        ApiError(message, status=exc.status_code, code=_HTTP_CODES.get(exc.status_code, "http_error"))
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.state, "request_id", None)
    # Only the exception's type: its text or traceback could carry a key or an address.
    log.error("unexpected %s while serving %s (request %s)", type(exc).__name__, request.url.path, request_id)
    return error_response(
        ApiError(
            f"The gateway hit an internal error; retry the request, and quote request id {request_id} if it persists.",
            status=500,
            type="server_error",
            code="internal_error",
        ),
        request_id,
    )
