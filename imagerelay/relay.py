"""The relay service: auth'd request -> route -> validate -> quote -> hold -> call -> settle.

This is the only place that orchestrates a call; the HTTP layer parses and shapes,
the domain functions decide, the pool talks upstream, ``Billing`` moves money. Every
call that reaches here leaves exactly one usage record, whatever happens.

Its surface:
- :meth:`Relay.begin` takes a synchronous call through its Idempotency-Key claim,
  keep-alive decision, routing, validation and hold; the :class:`SyncCall` it returns
  runs the call (:meth:`SyncCall.answer`, or :meth:`SyncCall.kept_alive` as a body);
- :meth:`Relay.stream` runs a streamed call and returns its events;
- jobs (:mod:`imagerelay.jobs`) :meth:`Relay.prepare` at submit and :meth:`Relay.call`
  from a worker, the plain call that returns the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from imagerelay import keepalive
from imagerelay.admission import AdmissionGate
from imagerelay.catalog.loader import Catalog, ResolvedRoute
from imagerelay.domain import money, pricing
from imagerelay.domain import usage as token_rules
from imagerelay.domain.accounts import TokenInfo
from imagerelay.domain.records import UsageRecord
from imagerelay.domain.sizes import dimensions_for
from imagerelay.domain.types import ImageRequest, InputImage, Usage
from imagerelay.domain.validation import RouteHints, build_hints, validate_edit, validate_generation
from imagerelay.errors import (
    ApiError,
    InsufficientQuota,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    UpstreamError,
)
from imagerelay.imagestore import ImageStore
from imagerelay.logs import request_id_var
from imagerelay.storage.billing import Billing
from imagerelay.storage.channels import ChannelDirectory
from imagerelay.storage.idempotency import IdempotencyStore, Replay
from imagerelay.upstreams.base import StreamEvent, UpstreamFailure, UpstreamResult
from imagerelay.upstreams.pool import ChannelPool

log = logging.getLogger("imagerelay.relay")
_UNPACED = contextlib.nullcontext()

# A hold outlives the slowest legitimate call (pool deadline) with margin; past it the
# reconciler may release it.
HOLD_MARGIN_S = 120.0


@dataclass(slots=True)
class CallContext:
    """Everything known about one call, built once by the HTTP layer."""

    request_id: str
    token: TokenInfo
    endpoint: str  # generations | edits
    base_url: str  # for signed image URLs
    started: float
    # A job's call: its images are the job's results, kept until the job expires.
    images_until: float | None = None


@dataclass(frozen=True, slots=True)
class Interruption:
    """Why a running call was cancelled when its client did not leave: a job ended from
    outside (its caller's cancel, a revoked key, a disabled user, its expiry). Given as
    the cancellation's message (``task.cancel(msg=Interruption(...))``) so that the call's
    usage record says so, as it does for a job ended before it ran, instead of 499
    ``client_disconnected``."""

    status: int
    code: str


@dataclass(slots=True)
class ParsedCall:
    """A request body as the HTTP layer parsed it, before any route rule applies."""

    endpoint: str  # generations | edits
    fields: dict[str, Any]
    images: Sequence[InputImage] = ()
    mask: InputImage | None = None
    from_multipart: bool = False


@dataclass(slots=True)
class PreparedCall:
    """A call that passed routing and validation and holds its worst-case cost."""

    ctx: CallContext
    route: ResolvedRoute
    request: ImageRequest
    record: UsageRecord


@dataclass(slots=True)
class RelayAnswer:
    body: dict[str, Any]
    headers: dict[str, str]
    # The body as rendered for an Idempotency-Key's replays (sent as is), if it was.
    raw: bytes | None = None


class Relay:
    def __init__(
        self,
        catalog: Catalog,
        directory: ChannelDirectory,
        pool: ChannelPool,
        billing: Billing,
        store: ImageStore,
        idempotency: IdempotencyStore,
        observe: Callable[[UsageRecord], None] | None = None,
        admission: AdmissionGate | None = None,
    ) -> None:
        self.catalog = catalog
        # Paces the CPU-heavy phases (prepare; shaping an answer) of many calls at once.
        self.admission = admission or AdmissionGate(64)
        self.idempotency = idempotency
        # Told every finished usage record (metrics); must be cheap and never raise.
        self._observe = observe
        self.directory = directory
        self.pool = pool
        self.billing = billing
        self.store = store
        self.hints: dict[tuple[str, str], RouteHints] = build_hints(
            [r.spec for r in catalog.routes.values()], catalog.file.param_profiles
        )

    # -- routing ---------------------------------------------------------------------

    def resolve_route(
        self, group: str, model: Any, endpoint: str, allowed: Sequence[str] | None = None
    ) -> ResolvedRoute:
        offered = self.catalog.models_by_group.get(group, ())
        if model is None or model == "":
            raise InvalidRequest(
                f"model is required; group {group} offers: {', '.join(offered) or 'no models'}",
                param="model",
                code="missing_required_parameter",
            )
        if not isinstance(model, str):
            raise InvalidRequest("model must be a string", param="model", code="invalid_type")
        if allowed is not None and model not in allowed:
            raise PermissionDenied(
                f"This API key may not use model {model}; it is limited to: {', '.join(allowed)}.",
                param="model",
                code="model_not_allowed",
            )
        route = self.offered_route(group, model)
        if endpoint not in route.spec.endpoints:
            raise InvalidRequest(
                f"model {model} in group {group} does not support images/{endpoint}",
                param="model",
                code="unsupported_endpoint",
            )
        return route

    def offered_route(self, group: str, model: str) -> ResolvedRoute:
        """The route for ``model`` in ``group``, or a 404 that lists the group's models."""
        route = self.catalog.route(group, model)
        if route is None:
            offered = self.catalog.models_by_group.get(group, ())
            raise ModelNotFound(
                f"The model '{model}' is not offered in group {group}. "
                f"Models in this group: {', '.join(offered) or 'none'}.",
                param="model",
            )
        return route

    def models_for(self, group: str) -> Sequence[str]:
        return self.catalog.models_by_group.get(group, ())

    # -- entry points ------------------------------------------------------------------

    def validator(self, call: ParsedCall) -> Callable[[ResolvedRoute], ImageRequest]:
        """The route-aware validation for a parsed call (pure; run once the route is known)."""
        if call.endpoint == "generations":
            return lambda route: validate_generation(
                call.fields, route.spec, route.profile, self.hints[(route.spec.group, route.spec.model)]
            )
        return lambda route: validate_edit(
            call.fields,
            call.images,
            call.mask,
            route.spec,
            route.profile,
            self.hints[(route.spec.group, route.spec.model)],
            from_multipart=call.from_multipart,
        )

    async def begin(
        self,
        ctx: CallContext,
        call: ParsedCall,
        *,
        idempotency_key: str | None,
        keepalive_s: float | None,
        render: Callable[[dict[str, Any]], bytes],
    ) -> SyncCall:
        """A synchronous call up to its upstream call: its keep-alive interval (the
        caller's ``keepalive_s`` or the route's), its Idempotency-Key claim (a retry of
        a finished call is answered from the first call's ``replay``), then routing,
        validation and the hold, all before any byte is sent, so their errors keep
        their real status even with keep-alive on. ``render`` turns an answer into the
        bytes kept for replays (the HTTP layer's JSON rendering)."""
        model = call.fields.get("model")
        if keepalive_s is None and isinstance(model, str):
            interval = keepalive.interval(None, self.catalog.route(ctx.token.group, model))
        else:
            interval = keepalive.interval(keepalive_s, None)
        key = idempotency_key
        if key is not None:
            replay = await self.idempotency.claim(ctx.token.user_id, key, _fingerprint(call))
            if replay is not None:
                return SyncCall(self, ctx, None, None, interval, render, replay)
        try:
            prepared = await self.prepare(ctx, model, self.validator(call))
        except BaseException:
            if key is not None:
                await asyncio.shield(self.idempotency.abandon(ctx.token.user_id, key))
            raise
        return SyncCall(self, ctx, prepared, key, interval, render)

    async def stream(self, ctx: CallContext, call: ParsedCall) -> AsyncGenerator[bytes, None]:
        """Route, validate, hold and open a streamed call; its events, SSE-encoded
        (``event: ...``, ending with ``data: [DONE]`` or an ``error`` event). The caller
        closes it (``aclose``) however it stops reading: closing is what settles or
        releases the call and abandons the upstream stream."""
        prepared = await self.prepare(ctx, call.fields.get("model"), self.validator(call))
        return await self._stream(prepared.ctx, prepared.route, prepared.request, prepared.record)

    # -- the call ------------------------------------------------------------------------

    async def prepare(
        self,
        ctx: CallContext,
        model: Any,
        validate: Callable[[ResolvedRoute], ImageRequest],
        *,
        hold_ttl_s: float | None = None,
    ) -> PreparedCall:
        """Route, validate and hold; a refusal is recorded and raised.

        Jobs call this at submit time with a long ``hold_ttl_s`` and :meth:`call`
        later from a worker; synchronous calls do both at once.
        """
        record = self._record(ctx, None, model)
        try:
            async with self.admission.through(ctx.started, self.pool.policy.deadline_s):
                route = self.resolve_route(ctx.token.group, model, ctx.endpoint, ctx.token.allowed_models)
                record.route = route.spec.name
                record.billing_mode = route.spec.billing.mode
                request = validate(route)
                # A synchronous call's hold names this process (a peer releases it as
                # interrupted if the process dies); a job's names none: the job outlives
                # the process, and its re-run after a restart settles the same hold.
                await self._hold(ctx, route, request, hold_ttl_s, record if hold_ttl_s is None else None)
        except ApiError as err:
            record.status, record.error_code = err.status, err.code
            record.latency_ms = _ms_since(ctx.started)
            self._finished(record)
            await self.billing.record_only(record)
            raise
        return PreparedCall(ctx, route, request, record)

    async def _hold(
        self,
        ctx: CallContext,
        route: ResolvedRoute,
        request: ImageRequest,
        hold_ttl_s: float | None,
        call: UsageRecord | None = None,
    ) -> None:
        quote = self._worst_case(route, request)
        ttl = hold_ttl_s if hold_ttl_s is not None else self.pool.policy.deadline_s + HOLD_MARGIN_S
        held = await self.billing.place_hold(
            ctx.request_id, ctx.token.user_id, quote.micros, ttl, token_id=ctx.token.id, call=call
        )
        if held == "balance":
            raise InsufficientQuota(
                f"Your balance does not cover this call (up to {money.format_usd(quote.micros)}). "
                "Top up your account, or lower n, size or quality.",
            )
        if held == "spend_cap":
            raise InsufficientQuota(
                f"This call may cost up to {money.format_usd(quote.micros)}, which exceeds what remains "
                "of this API key's spend cap (the worst case is held until the call settles). Raise the key's "
                "spend cap, lower n, size or quality, or use another key.",
            )

    def restore(self, ctx: CallContext, request: ImageRequest, model: str) -> PreparedCall | None:
        """Rebuild a prepared call (a queued job) whose hold is already in place."""
        route = self.catalog.route(ctx.token.group, model)
        if route is None:
            return None
        return PreparedCall(ctx, route, request, self._record(ctx, route, model))

    async def rehold(self, prepared: PreparedCall, hold_ttl_s: float) -> None:
        """Place a fresh hold (under ``prepared.ctx.request_id``) for another attempt."""
        await self._hold(prepared.ctx, prepared.route, prepared.request, hold_ttl_s)

    async def call(self, prepared: PreparedCall) -> RelayAnswer:
        """Call upstream and settle (or release) the hold placed by :meth:`prepare`;
        the answer, never streamed (a job's call, or a synchronous one)."""
        # Job workers run calls outside any request: give their log lines the call's id.
        logged_as = request_id_var.set(prepared.ctx.request_id)
        try:
            return await self._call(prepared.ctx, prepared.route, prepared.request, prepared.record)
        finally:
            request_id_var.reset(logged_as)

    async def abandon(self, prepared: PreparedCall, status: int, code: str) -> None:
        """Release a prepared call's hold without calling upstream (e.g. a canceled job)."""
        prepared.record.status, prepared.record.error_code = status, code
        prepared.record.latency_ms = _ms_since(prepared.ctx.started)
        self._finished(prepared.record)
        await _shielded(self.billing.release(prepared.record))

    def _worst_case(self, route: ResolvedRoute, request: ImageRequest) -> pricing.PriceQuote:
        dims = dimensions_for(request.size, route.profile.default_size)
        width, height = dims if dims else (None, None)
        return pricing.worst_case_quote(request, route.spec, route.prices, route.group.multiplier, width, height)

    def _final_quote(self, route: ResolvedRoute, request: ImageRequest, usage: Usage | None) -> pricing.PriceQuote:
        dims = dimensions_for(request.size, route.profile.default_size)
        width, height = dims if dims else (None, None)
        return pricing.final_quote(request, route.spec, route.prices, route.group.multiplier, usage, width, height)

    async def _call(
        self, ctx: CallContext, route: ResolvedRoute, request: ImageRequest, record: UsageRecord
    ) -> RelayAnswer:
        try:
            outcome = await self.pool.call(
                self.directory.channels_for(route.spec.pool),
                route.upstream_model,
                route.profile.default_size,
                request,
                max_attempts=route.spec.max_attempts,
            )
            record.channel, record.attempts = outcome.channel, outcome.attempts
            record.upstream_latency_ms = outcome.upstream_latency_ms
            # url answers are written to the image store (S3: the network) while
            # shaped: not paced, so a slow store never holds other calls' turns.
            async with self.admission.answering() if request.response_format != "url" else _UNPACED:
                body = await self._shape(ctx, request, outcome.result)
                quote = self._final_quote(route, request, outcome.result.usage)
        except BaseException as exc:
            await self._release(ctx, record, exc)
            raise
        record.status = 200
        record.usage = quote.usage or outcome.result.usage
        record.cost_micros = quote.micros
        record.price_basis = dict(quote.basis)
        record.latency_ms = _ms_since(ctx.started)
        self._finished(record)
        await _shielded(self.billing.settle(record))
        return RelayAnswer(body=body, headers={"x-request-id": ctx.request_id})

    async def _release(self, ctx: CallContext, record: UsageRecord, exc: BaseException) -> None:
        self._note_failure(record, exc)
        record.latency_ms = _ms_since(ctx.started)
        self._finished(record)
        await _shielded(self.billing.release(record))

    def _finished(self, record: UsageRecord) -> None:
        """Report a final record, before its write: a client leaving during the write
        cancels the awaiting task, and the call must still be counted."""
        if self._observe is not None:
            self._observe(record)

    @staticmethod
    def _note_failure(record: UsageRecord, exc: BaseException) -> None:
        if isinstance(exc, ApiError):
            record.status, record.error_code = exc.status, exc.code
            record.attempts = record.attempts or exc.attempts
            record.channel = record.channel or exc.channel
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], Interruption) else None
            record.status, record.error_code = (reason.status, reason.code) if reason else (499, "client_disconnected")
        else:
            record.status, record.error_code = 500, "internal_error"

    async def _shape(self, ctx: CallContext, request: ImageRequest, result: UpstreamResult) -> dict[str, Any]:
        data = [await self._shape_item(ctx, request, item) for item in result.items]
        if not data:
            raise UpstreamError("The upstream returned no image; retry the request.", code="upstream_bad_response")
        body: dict[str, Any] = {"created": result.created or int(time.time()), "data": data}
        for key in ("background", "output_format", "size", "quality"):
            if result.meta.get(key) is not None:
                body[key] = result.meta[key]
        if result.usage is not None:
            body["usage"] = result.usage.to_official()
        return body

    async def _shape_item(self, ctx: CallContext, request: ImageRequest, item: Mapping[str, Any]) -> dict[str, Any]:
        # The pool has already normalised and checked every image (clean_items).
        out: dict[str, Any] = {}
        if request.response_format == "url":
            name = await self.store.put_b64(item["b64_json"], until=ctx.images_until)
            out["url"] = await self.store.url(ctx.base_url, name, not_after=ctx.images_until)
        else:
            out["b64_json"] = item["b64_json"]
        if isinstance(item.get("revised_prompt"), str):
            out["revised_prompt"] = item["revised_prompt"]
        return out

    async def _stream(
        self, ctx: CallContext, route: ResolvedRoute, request: ImageRequest, record: UsageRecord
    ) -> AsyncGenerator[bytes, None]:
        try:
            opened = await self.pool.open_stream(
                self.directory.channels_for(route.spec.pool),
                route.upstream_model,
                route.profile.default_size,
                request,
                max_attempts=route.spec.max_attempts,
            )
        except BaseException as exc:
            await self._release(ctx, record, exc)
            raise
        record.channel, record.attempts = opened.channel, opened.attempts

        async def frames() -> AsyncGenerator[bytes, None]:
            # Images the client has been sent in full: what the call is charged for,
            # however the stream ends (the upstream bills us for them all the same).
            delivered = 0
            usage: Usage | None = None
            try:
                event: StreamEvent | None = opened.first
                while event is not None:
                    yield _sse(event)
                    if event.type.endswith(".completed"):
                        delivered += 1
                        usage = usage or token_rules.reported_usage(event.payload.get("usage"))
                    event = await anext(opened.rest, None)
                if delivered == 0:
                    raise UpstreamError(
                        "The upstream stream ended before the image was complete; retry the request.",
                        code="upstream_stream_failed",
                    )
            except BaseException as exc:
                failure = _stream_failure(exc)
                # An upstream failure is recorded as the upstream's; anything else as itself.
                recorded = failure if failure is not None and isinstance(exc, UpstreamFailure) else exc
                if delivered:
                    await self._settle_delivered(ctx, route, request, record, usage, delivered, recorded)
                else:
                    await self._release(ctx, record, recorded)
                if failure is not None:
                    yield _sse_error(failure)
                    return
                raise
            finally:
                await opened.rest.aclose()
            await self._settle_delivered(ctx, route, request, record, usage, delivered, None)
            yield b"data: [DONE]\n\n"

        return frames()

    async def _settle_delivered(
        self,
        ctx: CallContext,
        route: ResolvedRoute,
        request: ImageRequest,
        record: UsageRecord,
        usage: Usage | None,
        delivered: int,
        failure: BaseException | None,
    ) -> None:
        """Settle a stream for the ``delivered`` images the client received: all of
        them on a clean end, a share after a cut (recorded with what cut it)."""
        if delivered < request.n and usage is not None:
            usage = token_rules.delivered_usage(usage, delivered, request.n)
        estimate_for = request if usage is not None or delivered >= request.n else replace(request, n=delivered)
        quote = self._final_quote(route, estimate_for, usage)
        if failure is None:
            record.status = 200
        else:
            self._note_failure(record, failure)
        record.usage = quote.usage or usage
        record.cost_micros = quote.micros
        record.price_basis = dict(quote.basis)
        if delivered < request.n:
            record.price_basis.update(images_delivered=delivered, images_requested=request.n)
        record.latency_ms = _ms_since(ctx.started)
        self._finished(record)
        await _shielded(self.billing.settle(record))

    def _record(self, ctx: CallContext, route: ResolvedRoute | None, model: Any) -> UsageRecord:
        return UsageRecord(
            request_id=ctx.request_id,
            user_id=ctx.token.user_id,
            token_id=ctx.token.id,
            group=ctx.token.group,
            model=model if isinstance(model, str) else "",
            route=route.spec.name if route else "",
            endpoint=ctx.endpoint,
            status=0,
            billing_mode=route.spec.billing.mode if route else "",
            latency_ms=0,
        )


class SyncCall:
    """A synchronous call past :meth:`Relay.begin`: answered already (``replay``, from
    an earlier call with the same Idempotency-Key) or ready to run once."""

    __slots__ = ("_relay", "_ctx", "_prepared", "_key", "keepalive_s", "_render", "replay")

    def __init__(
        self,
        relay: Relay,
        ctx: CallContext,
        prepared: PreparedCall | None,
        key: str | None,
        keepalive_s: float | None,
        render: Callable[[dict[str, Any]], bytes],
        replay: Replay | None = None,
    ) -> None:
        self._relay, self._ctx, self._prepared, self._key = relay, ctx, prepared, key
        self.keepalive_s = keepalive_s  # None: answer plainly; else send a space this often (kept_alive)
        self._render = render
        self.replay = replay

    async def answer(self) -> RelayAnswer:
        """Run the call; with an Idempotency-Key, store its rendered answer for retries
        (``raw``) or give the key back if it fails, so a retry runs afresh."""
        assert self._prepared is not None, "a replayed call has nothing to run"
        relay, key, user_id = self._relay, self._key, self._ctx.token.user_id
        try:
            answer = await relay.call(self._prepared)
        except BaseException:
            if key is not None:
                await asyncio.shield(relay.idempotency.abandon(user_id, key))
            raise
        if key is not None:
            answer.raw = self._render(answer.body)
            await asyncio.shield(relay.idempotency.finish(user_id, key, 200, answer.raw))
        return answer

    def kept_alive(self) -> AsyncGenerator[bytes, None]:
        """The call as a kept-alive body (:func:`imagerelay.keepalive.kept_alive`); it
        starts running now. Only for a call whose ``keepalive_s`` is set."""
        assert self.keepalive_s is not None

        async def produce() -> bytes:
            answer = await self.answer()
            return answer.raw if answer.raw is not None else self._render(answer.body)

        return keepalive.kept_alive(produce(), self.keepalive_s, self._ctx.request_id)


def _fingerprint(call: ParsedCall) -> str:
    """What makes two calls under one Idempotency-Key the same call: endpoint, fields, images."""
    digest = hashlib.sha256(call.endpoint.encode() + b"\0")
    digest.update(orjson.dumps(call.fields, option=orjson.OPT_SORT_KEYS, default=str))
    for image in [*call.images, *([call.mask] if call.mask else [])]:
        digest.update(image.part.encode() + b"\0" + hashlib.sha256(image.data).digest())
    return digest.hexdigest()


def new_request_id() -> str:
    """``req_`` and 32 hex digits: the milliseconds since the epoch (12), then 80 random bits.

    Why time first: the request id is the key of a hold and of the unique index of the
    usage records and the ledger. Random keys land on a random page of each index, so
    every call dirtied pages of its own in every commit; keys that grow with time are
    appended on the index's last pages, which the calls of one group commit share."""
    return f"req_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def _ms_since(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


async def _shielded(aw: Awaitable[Any]) -> Any:
    """Money movements finish even if the client goes away mid-write."""
    task = asyncio.ensure_future(aw)
    task.add_done_callback(_retrieved)
    return await asyncio.shield(task)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Retrieve a shielded task's outcome, which nobody awaits once its caller is cancelled."""
    if not task.cancelled() and task.exception() is not None:
        log.error("a money movement failed after its caller left: %s", type(task.exception()).__name__)


def _sse(event: StreamEvent) -> bytes:
    return b"event: " + event.type.encode() + b"\ndata: " + orjson.dumps(event.payload) + b"\n\n"


def _stream_failure(exc: BaseException) -> ApiError | None:
    """What to tell a streaming client about ``exc`` (None: the client is gone, re-raise).

    An upstream failure mid-stream is the upstream's (502, recorded as such), never an
    internal error; its detail stays in the channel's health, already scrubbed.
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UpstreamFailure):
        return UpstreamError(
            "The upstream stream failed before every image was delivered; retry the request.",
            code="upstream_stream_failed",
        )
    if isinstance(exc, Exception):
        return UpstreamError("The upstream stream failed; retry the request.")
    return None


def _sse_error(err: ApiError) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(err.to_body()) + b"\n\n"
