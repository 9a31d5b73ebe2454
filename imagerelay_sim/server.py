"""A standalone upstream simulator speaking the real OpenAI and Azure OpenAI wire protocols.

Tests and benchmarks run it as the stand-in for paid upstreams: the gateway's
``openai`` and ``azure`` connectors talk to it over real HTTP exactly as they would to
api.openai.com or an Azure resource, and the official ``openai`` SDK works against it
unchanged. It therefore reproduces what those services do *on the wire* - URLs,
authentication headers, multipart rules, parameter validation, error shapes, response
headers, server-sent events - and renders real images (see
:mod:`imagerelay.simulation.render`) with ``usage`` counted like the official API
(:func:`imagerelay.domain.usage.simulated_usage`).

Modules: this one holds the state, the handlers and the app factory;
:mod:`~imagerelay_sim.inbound` parses and validates requests as the real APIs
do, :mod:`~imagerelay_sim.faults` holds error shapes and fault rules, and
:mod:`~imagerelay_sim.wire` the responses that misbehave below HTTP.

Endpoints
---------
``openai``::

    POST /v1/images/generations          JSON
    POST /v1/images/edits                multipart (image | image[] | image[N], mask) or JSON (images[])
    GET  /v1/models
    auth: Authorization: Bearer KEY

``azure``::

    POST /openai/deployments/{deployment}/images/generations?api-version=...
    POST /openai/deployments/{deployment}/images/edits?api-version=...
    POST /openai/v1/images/generations   (model = deployment name; ?api-version=preview optional)
    POST /openai/v1/images/edits
    auth: api-key: KEY   (or Authorization: Bearer KEY, as with Entra tokens)

Control plane (both protocols, no auth; for tests)::

    GET|POST|DELETE /_sim/faults     fault rules (schema in :func:`parse_fault`)
    GET|DELETE      /_sim/requests   the last requests received (see :class:`SimState`)
    GET|POST        /_sim/config     {"cache", "incompressible", "latency_s"}
    GET             /_sim/health

Faults that must misbehave below HTTP (connection reset, a body shorter than its
``content-length``, a stream cut mid-way) need the server's socket. ASGI has no
"abort" message, so the app (a :class:`Starlette` subclass) remembers the server's
own ``send`` callable; uvicorn's ``send`` is a bound method of its per-request cycle
object, which holds the asyncio transport. If that is not reachable (another ASGI
server) those faults raise instead, which the server turns into a 500 or a closed
connection.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal, cast

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from imagerelay.simulation.render import render_image
from imagerelay_sim.faults import (
    FAULT_TYPES,
    FaultRule,
    SimError,
    azure_error,
    echo_key_error,
    faulty_usage,
    openai_error,
    parse_fault,
)
from imagerelay_sim.inbound import (
    _API_VERSION_RE,
    _AZURE_401,
    _AZURE_DEPLOYMENT_NOT_FOUND,
    _AZURE_SAFE,
    _BAD_JSON,
    _MIN_AZURE_API_VERSION,
    _V1_API_VERSIONS,
    DEFAULT_MODELS,
    _Body,
    _Call,
    _collect_inputs,
    _json_type,
    _read_body,
    _validate,
)
from imagerelay_sim.state import Endpoint, SimState
from imagerelay_sim.wire import (
    _SCOPE_SEND,
    DropResponse,
    ResetResponse,
    SSEResponse,
    TruncatedResponse,
    _json_response,
    _sse_frame,
)

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_TYPES",
    "FaultRule",
    "SimState",
    "create_upstream_app",
    "parse_fault",
    "run",
    "sim_state",
]

# =========================================================================== rendering


def _simulated_usage(call: _Call) -> dict[str, Any]:
    """``usage`` as the official API reports it.

    Imported lazily: :mod:`imagerelay.domain.usage` is the single place token counts
    are defined, and keeping the import out of module load keeps this server usable
    for protocol tests even while that module is being changed.
    """
    from imagerelay.domain.usage import simulated_usage

    return simulated_usage(call.request, call.model, call.width, call.height).to_official()


def _render_b64(state: SimState, call: _Call, index: int, partial: tuple[int, int] | None, pad_needed: bool) -> str:
    """Render one image (or preview) to base64, through the render cache when enabled."""
    sources = [i.data for i in call.inputs]
    incompressible = state.incompressible
    key: tuple[Any, ...] | None = None
    if state.cache:
        digest = hashlib.sha256(b"".join(hashlib.sha256(s).digest() for s in sources)).hexdigest()
        key = (
            call.prompt,
            call.width,
            call.height,
            call.output_format,
            call.background,
            call.output_compression,
            index,
            digest,
            partial,
            incompressible,
            pad_needed,
        )
        hit = state.cached(key)
        if hit is not None:
            return hit
    data = render_image(
        prompt=call.prompt,
        width=call.width,
        height=call.height,
        output_format=call.output_format,
        background=call.background,
        output_compression=call.output_compression,
        index=index,
        sources=sources,
        partial=partial,
        incompressible=incompressible,
    )
    if pad_needed and len(data) % 3 == 0:
        data += b"\x00"  # trailing byte after IEND/EOI: still decodable, and base64 now needs "="
    b64 = base64.b64encode(data).decode("ascii")
    if key is not None:
        state.store(key, b64)
    return b64


def _mangle(b64: str, fault: FaultRule | None, output_format: str) -> str:
    """Apply a base64-level fault to one ``b64_json`` value."""
    if fault is None:
        return b64
    if fault.type == "data_url_prefix":
        return f"data:image/{output_format};base64,{b64}"
    if fault.type == "no_padding":
        return b64.rstrip("=")
    if fault.type == "bad_base64":
        # '*' is outside the alphabet and shifts everything after it: neither strict nor
        # lenient decoders get an image out of this.
        return "*" + b64[1:]
    return b64


# =========================================================================== the app


class UpstreamSimulator(Starlette):
    """Starlette app that also remembers the server's own ``send`` per request.

    That callable leads to the connection's transport, which the reset, truncate and
    stream-cut faults need (see the module docstring).
    """

    sim: SimState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_SCOPE_SEND] = send
        await super().__call__(scope, receive, send)


def sim_state(app: Starlette) -> SimState:
    """The :class:`SimState` of an app made by :func:`create_upstream_app`."""
    return cast(SimState, app.state.sim)


class _Handler:
    """Request handling shared by both protocols."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    # ---- headers
    def _headers(self, started: float) -> dict[str, str]:
        if self.state.protocol == "azure":
            return {
                "apim-request-id": str(uuid.uuid4()),
                "x-ms-region": "Sweden Central",
                "x-ratelimit-limit-requests": "10",
                "x-ratelimit-remaining-requests": "9",
            }
        return {
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "openai-processing-ms": str(int((time.monotonic() - started) * 1000)),
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "50",
            "x-ratelimit-remaining-requests": "49",
            "x-ratelimit-reset-requests": "1.2s",
        }

    def error_response(self, err: SimError, started: float) -> Response:
        return _json_response(err.status, err.body, {**self._headers(started), **err.headers})

    # ---- auth
    def _check_auth(self, request: Request) -> None:
        keys = self.state.api_keys
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if self.state.protocol == "azure":
            given = request.headers.get("api-key") or bearer
            if given not in keys:
                raise azure_error(401, "401", _AZURE_401)
            return
        if not bearer:
            raise openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        if bearer not in keys:
            shown = bearer[:3] + "*" * 3 + bearer[-4:] if len(bearer) > 8 else "***"
            raise openai_error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    # ---- fault answers that replace the whole response
    def _fault_error(self, rule: FaultRule, call_model: str) -> SimError | None:
        azure = self.state.protocol == "azure"
        msg = rule.message
        headers = dict(rule.headers)
        if rule.type == "server_error":
            return openai_error(
                500,
                msg or "The server had an error while processing your request. Sorry about that!",
                type="server_error",
                headers=headers,
            )
        if rule.type == "overloaded":
            if azure:
                return azure_error(
                    503,
                    "ServiceUnavailable",
                    msg or "The service is temporarily unable to process your request. Please try again later.",
                    headers=headers,
                )
            return openai_error(
                503,
                msg or "The server is overloaded or not ready yet.",
                type="server_error",
                code="server_is_overloaded",
                headers=headers,
            )
        if rule.type == "rate_limit":
            seconds = rule.retry_after
            headers.setdefault("retry-after", str(int(seconds)) if float(seconds).is_integer() else str(seconds))
            if rule.retry_after_ms is not None:
                headers.setdefault("retry-after-ms", str(rule.retry_after_ms))
            if azure:
                return azure_error(
                    429,
                    "429",
                    msg
                    or (
                        "Requests to the ImageGenerations_Create Operation under Azure OpenAI API version "
                        "2025-04-01-preview have exceeded call rate limit of your current AIServices S0 pricing tier. "
                        f"Please retry after {int(seconds)} seconds."
                    ),
                    headers=headers,
                )
            return openai_error(
                429,
                msg
                or (
                    f"Rate limit reached for {call_model} in organization org-sim on images per minute (IPM): "
                    f"Limit 5, Used 5, Requested 1. Please try again in {seconds:g}s."
                ),
                type="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        if rule.type == "unauthorized":
            if azure:
                return azure_error(401, "401", msg or _AZURE_401, headers=headers)
            return openai_error(
                401,
                msg
                or "Incorrect API key provided: sk-***sim. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
                headers=headers,
            )
        if rule.type == "status":
            body = (
                rule.body
                if rule.body is not None
                else {
                    "error": {
                        "message": msg or f"Simulated HTTP {rule.status}.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            return SimError(rule.status, body, headers)
        if rule.type == "moderation":
            return openai_error(
                400,
                msg
                or (
                    "Your request was rejected by the safety system. If you believe this is an error, contact us at "
                    "help.openai.com and include the request ID."
                ),
                type="image_generation_user_error",
                code="moderation_blocked",
                headers=headers,
            )
        if rule.type == "content_filter":
            return azure_error(
                400,
                "contentFilter",
                msg
                or (
                    "Your request was rejected as a result of our safety system. Your prompt may contain text that "
                    "is not allowed by our safety system."
                ),
                extra={
                    "param": "prompt",
                    "type": None,
                    "inner_error": {
                        "code": "ResponsibleAIPolicyViolation",
                        "content_filter_results": {**_AZURE_SAFE, "violence": {"filtered": True, "severity": "high"}},
                    },
                },
                headers=headers,
            )
        return None

    # ---- main entry
    async def images(self, request: Request, endpoint: Endpoint, *, deployment: str | None, v1_azure: bool) -> Response:
        """Handle one image call in the service's order of checks.

        URL routing (Azure api-version, deployment) -> authentication -> injected
        fault -> body parsing and validation -> rendering. Latency (configured and
        injected) is spent first, like time on the wire and in queues.
        """
        started = time.monotonic()
        state = self.state
        try:
            body, entry = await _read_body(request)
        except SimError as err:
            return self.error_response(err, started)
        state.record(entry)
        verdict = state.judge(endpoint)
        delay = state.latency_s + verdict.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        fault = verdict.outcome
        try:
            self._check_url(request, deployment=deployment, v1_azure=v1_azure)
            self._check_auth(request)
            if fault is not None:
                if fault.type == "reset":
                    return ResetResponse()
                if fault.type == "drop":
                    return DropResponse()
                if fault.type == "echo_key":
                    auth = request.headers.get("authorization", "")
                    raise echo_key_error(request.headers.get("api-key") or auth[7:].strip(), str(request.url))
                if fault.type == "stream_error" and not _wants_stream(body):
                    fault = FaultRule(type="server_error", message=fault.message, headers=fault.headers)
                fault_error = self._fault_error(fault, self._model_hint(body, deployment))
                if fault_error is not None:
                    raise fault_error
            if body.values.get("__invalid__"):
                raise openai_error(400, _BAD_JSON)
            self._check_content_type(request, endpoint, body)
            model = self._resolve_model(body, deployment=deployment, v1_azure=v1_azure)
            inputs, mask = (await _collect_inputs(body)) if endpoint == "edits" else ([], None)
            call = _validate(
                state,
                body,
                endpoint,
                model=model,
                model_in_body_forbidden=state.protocol == "azure" and not v1_azure,
                inputs=inputs,
                mask=mask,
            )
        except SimError as err:
            return self.error_response(err, started)
        if call.stream:
            return self._stream(call, fault, started)
        return await self._plain(call, fault, started)

    def _model_hint(self, body: _Body, deployment: str | None) -> str:
        model = body.values.get("model")
        if isinstance(model, str) and model:
            return model
        return self.state.deployments.get(deployment or "", self.state.default_model)

    def _check_url(self, request: Request, *, deployment: str | None, v1_azure: bool) -> None:
        """Azure's URL-level checks, which come before authentication."""
        state = self.state
        if state.protocol != "azure":
            return
        version = request.query_params.get("api-version")
        if v1_azure:
            if version is not None and version not in _V1_API_VERSIONS:
                raise azure_error(400, "BadRequest", "API version not supported")
            return
        if version is None:
            # What real Azure answers when api-version is missing on a deployment URL.
            raise azure_error(404, "404", "Resource not found")
        m = _API_VERSION_RE.match(version)
        if not m or m.group(1) < _MIN_AZURE_API_VERSION:
            raise azure_error(400, "BadRequest", "API version not supported")
        if deployment not in state.deployments:
            raise azure_error(404, "DeploymentNotFound", _AZURE_DEPLOYMENT_NOT_FOUND)

    def _resolve_model(self, body: _Body, *, deployment: str | None, v1_azure: bool) -> str:
        """The model the call runs on (decides size rules and token counts)."""
        state = self.state
        model = body.values.get("model")
        if model is not None and not isinstance(model, str):
            raise openai_error(
                400,
                f"Invalid type for 'model': expected a string, but got {_json_type(model)} instead.",
                param="model",
                code="invalid_type",
            )
        if state.protocol == "openai":
            if model is None:
                return state.default_model
            if model not in state.models:
                raise openai_error(400, f"The model '{model}' does not exist.", param="model", code="invalid_value")
            return model
        if v1_azure:
            if not model:
                raise openai_error(
                    400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
                )
            if model not in state.deployments:
                raise azure_error(404, "DeploymentNotFound", _AZURE_DEPLOYMENT_NOT_FOUND)
            return state.deployments[model]
        assert deployment is not None
        return state.deployments[deployment]  # a body "model" is rejected in _validate

    @staticmethod
    def _check_content_type(request: Request, endpoint: Endpoint, body: _Body) -> None:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media in ("application/json", "") or (body.kind == "form" and endpoint == "edits"):
            return
        raise openai_error(
            400,
            f"Invalid Content-Type header ({media}), expected application/json"
            + (" or multipart/form-data." if endpoint == "edits" else "."),
        )

    # ---- answers
    def _item_extras(self) -> dict[str, Any]:
        if self.state.protocol == "azure":
            return {"content_filter_results": dict(_AZURE_SAFE), "prompt_filter_results": dict(_AZURE_SAFE)}
        return {}

    async def _plain(self, call: _Call, fault: FaultRule | None, started: float) -> Response:
        state = self.state
        pad = fault is not None and fault.type == "no_padding"

        def work() -> list[str]:
            return [_render_b64(state, call, i, None, pad) for i in range(call.n)]

        images = await anyio.to_thread.run_sync(work)
        usage = _simulated_usage(call)
        extras = self._item_extras()
        body = {
            "created": int(time.time()),
            "data": [{"b64_json": _mangle(b64, fault, call.output_format), **extras} for b64 in images],
            "background": call.background,
            "output_format": call.output_format,
            "quality": call.quality,
            "size": f"{call.width}x{call.height}",
            "usage": faulty_usage(fault, usage),
        }
        if body["usage"] is None:
            del body["usage"]
        payload = orjson.dumps(body)
        headers = self._headers(started)
        if fault is not None and fault.type in ("truncate", "stream_cut"):
            return TruncatedResponse(payload, headers=headers)
        if fault is not None and fault.type == "invalid_json":
            broken = payload[: min(len(payload) // 2, 200)] + b"\xff<html>"
            return Response(broken, status_code=200, headers=headers, media_type="application/json")
        return Response(payload, status_code=200, headers=headers, media_type="application/json")

    def _stream(self, call: _Call, fault: FaultRule | None, started: float) -> Response:
        state = self.state
        prefix = "image_generation" if call.endpoint == "generations" else "image_edit"
        pad = fault is not None and fault.type == "no_padding"
        meta = {
            "size": f"{call.width}x{call.height}",
            "quality": call.quality,
            "background": call.background,
            "output_format": call.output_format,
        }
        total_frames = call.partial_images + call.n
        fault_type = fault.type if fault is not None else None

        async def frames() -> AsyncIterator[bytes]:
            sent = 0
            for i in range(call.partial_images):
                b64 = await anyio.to_thread.run_sync(_render_b64, state, call, 0, (i, call.partial_images), pad)
                if fault_type == "invalid_json" and sent == 0:
                    yield f'event: {prefix}.partial_image\ndata: {{"type": "{prefix}.partial_image", "b64_\n\n'.encode()
                    sent += 1
                    continue
                yield _sse_frame(
                    f"{prefix}.partial_image",
                    {
                        "type": f"{prefix}.partial_image",
                        "b64_json": _mangle(b64, fault, call.output_format),
                        "partial_image_index": i,
                        "created_at": int(time.time()),
                        **meta,
                    },
                )
                sent += 1
                if fault_type == "stream_error":
                    yield _stream_error_frame(fault)
                    return
            if fault_type == "stream_error" and sent == 0:
                # No partials: the 200 stream has begun, and its first event is the error.
                yield _stream_error_frame(fault)
                return
            usage = _simulated_usage(call)
            for index in range(call.n):
                b64 = await anyio.to_thread.run_sync(_render_b64, state, call, index, None, pad)
                if fault_type == "invalid_json" and sent == 0:
                    yield f'event: {prefix}.completed\ndata: {{"type": "{prefix}.completed", "b64_\n\n'.encode()
                    sent += 1
                    continue
                completed = {
                    "type": f"{prefix}.completed",
                    "b64_json": _mangle(b64, fault, call.output_format),
                    "created_at": int(time.time()),
                    **meta,
                    "usage": faulty_usage(fault, usage),
                }
                if completed["usage"] is None:
                    del completed["usage"]
                yield _sse_frame(f"{prefix}.completed", completed)
                sent += 1
                if fault_type == "stream_error":
                    yield _stream_error_frame(fault)
                    return

        cut: Literal["after_first", "mid_first"] | None = None
        if fault_type in ("stream_cut", "truncate"):
            cut = "after_first" if total_frames >= 2 and fault_type == "stream_cut" else "mid_first"
        return SSEResponse(frames(), headers=self._headers(started), cut=cut)


def _stream_error_frame(fault: FaultRule | None) -> bytes:
    message = (fault.message if fault else None) or "The server had an error while processing your request."
    return _sse_frame(
        "error",
        {"type": "error", "error": {"message": message, "type": "server_error", "param": None, "code": "server_error"}},
    )


def _wants_stream(body: _Body) -> bool:
    value = body.values.get("stream")
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1"))


# =========================================================================== control plane


async def _control_faults(request: Request) -> Response:
    state = sim_state(request.app)
    if request.method == "DELETE":
        state.clear_faults()
        return _json_response(200, {"faults": []}, {})
    if request.method == "POST":
        try:
            raw = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return _json_response(400, {"error": "body must be JSON"}, {})
        try:
            items: list[Any]
            if isinstance(raw, list):
                items = raw
            elif isinstance(raw, dict) and "type" not in raw:
                _apply_config(state, {k: v for k, v in raw.items() if k != "faults"})
                faults = raw.get("faults", [])
                items = faults if isinstance(faults, list) else [faults]
            else:
                items = [raw]
            rules = [parse_fault(item) for item in items]
        except ValueError as exc:
            return _json_response(400, {"error": str(exc)}, {})
        state.add_faults(rules)
    return _json_response(200, {"faults": state.faults_json(), "config": state.config_json()}, {})


def _apply_config(state: SimState, raw: Mapping[str, Any]) -> None:
    """``cache`` / ``incompressible`` (booleans) and ``latency_s`` (seconds)."""
    unknown = set(raw) - {"cache", "incompressible", "latency_s"}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; allowed: cache, incompressible, latency_s")
    for key in ("cache", "incompressible"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ValueError(f"{key} must be a boolean")
            setattr(state, key, raw[key])
    if "latency_s" in raw:
        value = raw["latency_s"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError("latency_s must be a non-negative number")
        state.latency_s = float(value)


async def _control_config(request: Request) -> Response:
    state = sim_state(request.app)
    if request.method == "POST":
        try:
            raw = orjson.loads(await request.body() or b"{}")
            if not isinstance(raw, dict):
                raise ValueError("config must be a JSON object")  # noqa: TRY004
            _apply_config(state, raw)
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _json_response(400, {"error": str(exc)}, {})
    return _json_response(200, state.config_json(), {})


async def _control_requests(request: Request) -> Response:
    state = sim_state(request.app)
    if request.method == "DELETE":
        state.clear_requests()
        return _json_response(200, {"requests": []}, {})
    return _json_response(200, {"requests": state.recorded()}, {})


async def _control_health(request: Request) -> Response:
    return _json_response(200, {"ok": True, "protocol": sim_state(request.app).protocol}, {})


# =========================================================================== factory


def create_upstream_app(  # noqa: PLR0913 - one keyword per simulate-upstream option
    protocol: Literal["openai", "azure"],
    *,
    api_keys: Sequence[str] = ("sk-sim",),
    latency_s: float = 0.0,
    deployments: Sequence[str] | Mapping[str, str] = ("gpt-image-2",),
    models: Sequence[str] = DEFAULT_MODELS,
    default_model: str = "gpt-image-2",
    cache: bool = False,
    incompressible: bool = False,
    max_recorded: int = 200,
    cache_entries: int = 64,
) -> Starlette:
    """Build the simulator app for one protocol.

    * ``api_keys``: accepted keys (``Authorization: Bearer`` for openai, ``api-key``
      or Bearer for azure); anything else gets the service's 401.
    * ``latency_s``: added to every image call (faults can add more).
    * ``deployments`` (azure): deployment names, or a mapping deployment -> model
      (the model decides size rules and token counts, e.g.
      ``{"gpt-image-1-5": "gpt-image-1.5"}``); a plain name is its own model.
    * ``models`` / ``default_model`` (openai): accepted ``model`` values and the one
      used when the body has none (the real API would default to dall-e-2, which the
      simulator does not model).
    * ``cache``: reuse rendered images for identical parameters, so benchmarks never
      wait on the simulator; ``incompressible``: noisy, uncompressed PNG answers of
      realistic size (25-33 MB base64 at 4K). Both can be switched at runtime with
      ``POST /_sim/config``.
    """
    if protocol not in ("openai", "azure"):
        raise ValueError(f"protocol must be 'openai' or 'azure'; got {protocol!r}")
    mapping = dict(deployments) if isinstance(deployments, Mapping) else {d: d for d in deployments}
    state = SimState(
        protocol,
        api_keys=api_keys,
        latency_s=latency_s,
        deployments=mapping,
        models=models,
        default_model=default_model,
        cache=cache,
        incompressible=incompressible,
        max_recorded=max_recorded,
        cache_entries=cache_entries,
    )
    handler = _Handler(state)

    def image_route(endpoint: Endpoint, *, v1_azure: bool = False) -> Callable[[Request], Any]:
        async def endpoint_fn(request: Request) -> Response:
            return await handler.images(
                request, endpoint, deployment=request.path_params.get("deployment"), v1_azure=v1_azure
            )

        return endpoint_fn

    routes: list[Route] = [
        Route("/_sim/faults", _control_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/requests", _control_requests, methods=["GET", "DELETE"]),
        Route("/_sim/config", _control_config, methods=["GET", "POST"]),
        Route("/_sim/health", _control_health, methods=["GET"]),
    ]
    if protocol == "openai":

        async def list_models(request: Request) -> Response:
            started = time.monotonic()
            state.record((await _read_body(request))[1])
            try:
                handler._check_auth(request)
            except SimError as err:
                return handler.error_response(err, started)
            data = [{"id": m, "object": "model", "created": 1745000000, "owned_by": "system"} for m in state.models]
            return _json_response(200, {"object": "list", "data": data}, handler._headers(started))

        routes += [
            Route("/v1/images/generations", image_route("generations"), methods=["POST"]),
            Route("/v1/images/edits", image_route("edits"), methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
        ]
    else:
        routes += [
            Route("/openai/deployments/{deployment}/images/generations", image_route("generations"), methods=["POST"]),
            Route("/openai/deployments/{deployment}/images/edits", image_route("edits"), methods=["POST"]),
            Route("/openai/v1/images/generations", image_route("generations", v1_azure=True), methods=["POST"]),
            Route("/openai/v1/images/edits", image_route("edits", v1_azure=True), methods=["POST"]),
        ]

    async def not_found(request: Request, exc: Exception) -> Response:
        """Unknown URL or method, in the service's shape; logged so a test can see a
        connector's wrong URL in ``/_sim/requests``."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        started = time.monotonic()
        if not request.url.path.startswith("/_sim/"):
            try:
                _body, entry = await _read_body(request)
                state.record(entry)
            except SimError:
                pass
        if protocol == "azure":
            return handler.error_response(azure_error(404, "404", "Resource not found"), started)
        verb = "Invalid URL" if status == 404 else "Invalid method for URL"
        return handler.error_response(openai_error(status, f"{verb} ({request.method} {request.url.path})"), started)

    app = UpstreamSimulator(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.sim = state
    return app


def run(
    protocol: Literal["openai", "azure"],
    host: str = "127.0.0.1",
    port: int = 9100,
    api_keys: Sequence[str] = ("sk-sim",),
    latency_s: float = 0.0,
    **options: Any,
) -> None:
    """Serve the simulator with uvicorn until interrupted (``imagerelay simulate-upstream``).

    ``options`` go to :func:`create_upstream_app` (deployments, cache, incompressible...).
    """
    import uvicorn

    app = create_upstream_app(protocol, api_keys=tuple(api_keys), latency_s=latency_s, **options)
    # A deep accept queue: benchmarks open thousands of connections at once (bench/longcalls.py).
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, backlog=8192)
