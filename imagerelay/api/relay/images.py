"""Image endpoints: generations, edits, and their async job form.

Each handler: authenticate, admit (per-token limits), parse, then one call to the
relay service and the HTTP shape of its outcome:
- a synchronous call (``Relay.begin``: optionally idempotent, optionally behind a keep-alive),
- a stream (``Relay.stream``: SSE relayed event by event),
- a job (``Prefer: respond-async`` or ``POST /v1/images/jobs``; ``JobService.create``): 202 + Location.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imagerelay import keepalive
from imagerelay.api.connections import WHEN_GONE
from imagerelay.api.deps import authenticate, image_pool_of, services_of
from imagerelay.api.parsing import (
    ClientGone,
    images_from_json,
    json_edit_limit,
    media_type,
    read_image_json,
    read_multipart_edit,
)
from imagerelay.api.responses import images_response, json_response, render_images
from imagerelay.errors import InvalidRequest
from imagerelay.limits.local import rate_part
from imagerelay.relay import CallContext, ParsedCall
from imagerelay.services import Services

MAX_IMAGE_BYTES = 50 * 1024 * 1024


async def generations(request: Request) -> Response:
    return await _handle(request, "generations")


async def edits(request: Request) -> Response:
    return await _handle(request, "edits")


async def create_job(request: Request) -> Response:
    return await _handle(request, None)


async def get_job(request: Request) -> Response:
    token = await authenticate(request)
    services = services_of(request)
    include = request.query_params.get("include")
    body = await services.jobs.get(
        request.path_params["job_id"],
        token.user_id,
        _base_url(request, services),
        include_b64=True if include == "b64_json" else None,
    )
    return json_response(body)


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
MAX_JOB_PAGE = 100


async def list_jobs(request: Request) -> Response:
    token = await authenticate(request)
    services = services_of(request)
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise InvalidRequest(f"status must be one of: {', '.join(JOB_STATUSES)}.", param="status")
    raw_limit = params.get("limit") or "20"
    if not (
        raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit[:4]) <= MAX_JOB_PAGE and len(raw_limit) <= 3
    ):
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_JOB_PAGE}.", param="limit")
    before = params.get("before") or None
    if before is not None and (len(before) > 64 or not before.isprintable()):
        raise InvalidRequest("before must be a job id.", param="before")
    data, more = await services.jobs.page(
        token.user_id, _base_url(request, services), status=status, limit=int(raw_limit), before=before
    )
    return json_response(
        {"object": "list", "data": data, "has_more": more, "next_before": data[-1]["id"] if more and data else None}
    )


async def cancel_job(request: Request) -> Response:
    token = await authenticate(request)
    services = services_of(request)
    body = await services.jobs.cancel(request.path_params["job_id"], token.user_id, _base_url(request, services))
    return json_response(body)


async def webhook_secret(request: Request) -> Response:
    token = await authenticate(request)
    return json_response(
        {
            "secret": services_of(request).jobs.webhook_secret_for(token.user_id),
            "header": "X-Imagerelay-Signature",
            "scheme": "t=<unix time>,v1=<hex HMAC-SHA256(secret, '<t>.' + body)>",
        }
    )


routes = [
    Route("/v1/images/generations", generations, methods=["POST"]),
    Route("/v1/images/edits", edits, methods=["POST"]),
    Route("/v1/images/jobs", create_job, methods=["POST"]),
    Route("/v1/images/jobs", list_jobs, methods=["GET"]),
    Route("/v1/images/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/images/jobs/{job_id}", cancel_job, methods=["DELETE"]),
    Route("/v1/account/webhook-secret", webhook_secret, methods=["GET"]),
]


# -- the pipeline ---------------------------------------------------------------------------


def _base_url(request: Request, services: Services) -> str:
    return services.settings.public_base_url or str(request.base_url)


async def _handle(request: Request, endpoint: str | None) -> Response:
    token = await authenticate(request)
    services = services_of(request)
    async with AsyncExitStack() as admitted:
        as_job = endpoint is None or "respond-async" in request.headers.get("prefer", "").lower()
        # A job counts against rpm now and takes a concurrency slot only while it runs.
        await admitted.enter_async_context(services.limiter.admit(rate_part(token) if as_job else token))
        call = await _parse(request, services, endpoint)
        ctx = CallContext(
            request_id=request.state.request_id,
            token=token,
            endpoint=call.endpoint,
            base_url=_base_url(request, services),
            started=time.monotonic(),
        )
        if as_job:
            return await _submit_job(services, ctx, call)
        if _truthy(call.fields.get("stream")):
            return _stream_response(await services.relay.stream(ctx, call), ctx.request_id, admitted)
        return await _sync(request, services, ctx, call, admitted)


async def _parse(request: Request, services: Services, endpoint: str | None) -> ParsedCall:
    kind = media_type(request)
    settings = services.settings
    pool = image_pool_of(request)
    if kind == "multipart/form-data":
        if endpoint == "generations":
            raise InvalidRequest(
                "images/generations takes a JSON body (Content-Type: application/json).",
                code="unsupported_content_type",
            )
        fields, images, mask = await read_multipart_edit(request, settings.max_body_bytes, MAX_IMAGE_BYTES, pool)
        if endpoint is None:
            _pop_job_endpoint(fields, default="edits", allowed=("edits",))
        return ParsedCall("edits", dict(fields), images, mask, from_multipart=True)
    if kind == "application/json" or (endpoint == "generations" and not kind):
        limit = settings.max_json_body_bytes if endpoint == "generations" else json_edit_limit(settings.max_body_bytes)
        body, large = await read_image_json(request, limit, pool)
        if endpoint is None:
            endpoint = _pop_job_endpoint(body, default=None, allowed=("generations", "edits"))
        if endpoint == "generations":
            large.check_all_taken(body)
            return ParsedCall("generations", body)
        fields, images, mask = await images_from_json(body, large, MAX_IMAGE_BYTES, pool)
        return ParsedCall("edits", fields, images, mask)
    raise InvalidRequest(
        "Send JSON (Content-Type: application/json), or multipart/form-data for edits "
        "(curl -F image=@file.png -F prompt=...).",
        code="unsupported_content_type",
    )


def _pop_job_endpoint(fields: dict[str, Any], *, default: str | None, allowed: tuple[str, ...]) -> str:
    value = fields.pop("endpoint", default)
    if value not in allowed:
        raise InvalidRequest(
            f"endpoint must be one of {', '.join(allowed)} (the image call this job runs).", param="endpoint"
        )
    return str(value)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


async def _submit_job(services: Services, ctx: CallContext, call: ParsedCall) -> Response:
    if _truthy(call.fields.get("stream")):
        raise InvalidRequest("A job cannot stream; drop stream (poll the job, or use a webhook).", param="stream")
    job = await services.jobs.create(ctx, call, webhook_url=call.fields.pop("webhook_url", None))
    location = f"{ctx.base_url.rstrip('/')}/v1/images/jobs/{job['id']}"
    return json_response(job, status=202, headers={"location": location, "x-request-id": ctx.request_id})


def _stream_response(events: AsyncGenerator[bytes, None], request_id: str, admitted: AsyncExitStack) -> Response:
    slot = admitted.pop_all()  # a stream keeps its concurrency slot until its last byte
    return _HoldingSlot(
        events,
        slot,
        media_type="text/event-stream",
        headers={"x-request-id": request_id, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


class _HoldingSlot(StreamingResponse):
    """A streamed answer that keeps the call's concurrency slot until it is done, and
    whose body is ended and closed the moment its client leaves.

    The slot is released around the whole response, not inside the body generator:
    a client that leaves before the first chunk cancels the response without ever
    starting the generator, and the slot would then never come back.

    Starlette's own streaming (read at 1.10, under uvicorn's ASGI 2.3) is not used: it
    cancels the body through an anyio cancel scope, which passes over a task whose
    awaited future is already done and tries again on the next turn of the loop. While
    an upstream event of megabytes arrives, a chunk lands on every turn, so the cancel
    only took once the event was whole and relayed, in ``send``, outside the body
    generator; and Starlette never closes a body it stops reading. The generator's
    ``except``/``finally`` then waited for the garbage collector (rare, see
    allocator.tune_gc): no usage record, the hold kept, the upstream still streaming.
    """

    def __init__(self, content: AsyncGenerator[bytes, None], slot: AsyncExitStack, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._body = content
        self._slot = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = self._body
        async with self._slot:
            try:
                await _unless_disconnected(scope, self._send_body(body, send), receive)
            except ClientGone:
                pass  # the relay records the call as 499 when its body ends or is closed below
            finally:
                # A body left suspended at a ``yield`` (the client left while it was
                # being sent) runs its release and closes its upstream only when closed.
                await body.aclose()

    async def _send_body(self, body: AsyncIterator[bytes], send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            # uvicorn drops sends to a client that is gone without a word, and events the
            # upstream already delivered are relayed without awaiting anything else: one
            # turn of the loop per event lets the server see the connection lost (and
            # cancel this task, WHEN_GONE), so the call is recorded as 499 instead of
            # completing for nobody.
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _sync(
    request: Request, services: Services, ctx: CallContext, call: ParsedCall, admitted: AsyncExitStack
) -> Response:
    """A synchronous call: idempotent when the caller sent Idempotency-Key, behind a
    whitespace keep-alive when the caller or the route asks for one (the relay decides)."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
    sync = await services.relay.begin(
        ctx, call, idempotency_key=key, keepalive_s=_keepalive_header(request), render=render_images
    )
    if sync.replay is not None:
        return Response(
            sync.replay.body,
            status_code=sync.replay.status,
            media_type="application/json",
            headers={"x-request-id": ctx.request_id, "idempotent-replayed": "true"},
        )
    if sync.keepalive_s is not None:
        return _HoldingSlot(
            sync.kept_alive(),
            admitted.pop_all(),
            media_type="application/json",
            headers={"x-request-id": ctx.request_id, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    answer = await _unless_disconnected(request.scope, sync.answer(), request.receive)
    if answer.raw is not None:
        return Response(answer.raw, media_type="application/json", headers=answer.headers)
    return images_response(answer.body, answer.headers)


def _keepalive_header(request: Request) -> float | None:
    """The keep-alive interval the caller asked for (NaN if not a number: the relay refuses it)."""
    raw = request.headers.get(keepalive.HEADER)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return float("nan")


async def _unless_disconnected(scope: Any, work: Awaitable[Any], receive: Any) -> Any:
    """Run ``work`` but cancel it if the client of the request (``scope``) goes away first.

    Starlette does not interrupt a plain handler when its client disconnects; an image
    call would run to the end and be charged for an answer nobody receives. Cancelling
    makes the relay release the hold and record the call as ``client_disconnected``.
    The server's protocol calls back when the connection is lost (``WHEN_GONE``,
    api/connections.py), so the work runs in the handler's own task and nothing else
    waits: a watcher task awaiting ``receive()``, created and then cancelled by every
    call, cost ~2% of a small call's CPU (cancelling it unwound four frames). The
    callback cancels with ``Task.cancel``, which lands whatever the task awaits (an
    anyio cancel scope can pass over it, see :class:`_HoldingSlot`).

    Under another ASGI server (``uvicorn --factory imagerelay.api.app:create_app``,
    gunicorn's uvicorn worker) there is no such callback, and a task watching the
    request's ``receive`` for ``http.disconnect`` does the same at that ~2% cost: an
    answer nobody receives is never charged, whatever serves the app.
    """
    handler = asyncio.current_task()
    assert handler is not None
    gone = False

    def on_gone() -> None:
        nonlocal gone
        gone = True
        handler.cancel()

    callbacks: dict[Callable[[], None], None] | None = scope.get("extensions", {}).get(WHEN_GONE)
    watcher: asyncio.Task[None] | None = None
    if callbacks is not None:  # served by `imagerelay serve`
        callbacks[on_gone] = None
    else:
        watcher = asyncio.ensure_future(_watch_for_disconnect(receive, on_gone))
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        handler.uncancel()
        raise ClientGone("The client disconnected before the answer was ready.") from None
    finally:
        if callbacks is not None:
            callbacks.pop(on_gone, None)
        if watcher is not None:
            watcher.cancel()


async def _watch_for_disconnect(receive: Any, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` when the server reports the client gone. The request's body is
    already read, so ``receive`` has nothing else to deliver. Body that still streams in
    is skipped; any other message (a server that answers at once, again and again)
    ends the watch: a loop over it would never yield to the event loop."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_gone()
            return
        if not (message["type"] == "http.request" and message.get("more_body", False)):
            return
