"""The OpenAI Images dialect over HTTP, shared by the openai, azure and
openai-compatible connectors.

Vendors differ only in URL, auth header, small body adaptations and error shapes,
so each vendor module overrides those few hooks and nothing else.

One transport: one ``aiohttp.ClientSession`` per channel (a pool of at most
``max_connections``) carries generations, multipart edits and streams. The wire
itself lives in :mod:`imagerelay.upstreams.transport` (sessions, proxies, TLS, safe
URLs and headers, bounded answers).

Why aiohttp rather than httpx: httpcore checks every pooled connection for
readability on each request (a syscall per connection), which at 64 concurrent
calls cost more CPU than the rest of the gateway together (measured with py-spy,
see bench/RESULTS.md); aiohttp's pool does not, and since 3.13.3 it decompresses in
bounded steps. The hand-written HTTP/1.1 client that used to carry generations
(``fastpost``) saved ~0.2 ms of CPU per call and had five defects; it is gone.
"""

from __future__ import annotations

import math
import mmap
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any, ClassVar

import aiohttp
import orjson

from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.b64 import B64Payload
from imagerelay.domain.types import ImageRequest
from imagerelay.domain.usage import reported_usage
from imagerelay.errors import ApiError
from imagerelay.upstreams.answer import parse_images_answer
from imagerelay.upstreams.base import CallTarget, StreamEvent, UpstreamFailure, UpstreamResult
from imagerelay.upstreams.redact import channel_secrets, redact
from imagerelay.upstreams.transport import (
    DEFAULT_MAX_ANSWER_BYTES,
    AnswerMemory,
    AnswerTooLarge,
    ChannelSessions,
    UnsafeValue,
    default_client,
    read_capped,
    safe_headers,
    safe_url,
    stream_timeout,
)

ClientFactory = Callable[[ChannelSpec], aiohttp.ClientSession]

_META_KEYS = ("size", "quality", "background", "output_format")

#: Upstream error codes a caller can act on; they pass through as they are. Any other
#: code is replaced: an unknown one tells the caller nothing and may carry anything.
CLIENT_ERROR_CODES = frozenset(
    {
        "moderation_blocked",
        "content_policy_violation",
        "invalid_value",
        "invalid_type",
        "missing_required_parameter",
        "unknown_parameter",
        "unsupported_parameter",
        "unsupported_value",
        "invalid_size",
        "invalid_image",
        "invalid_image_format",
        "invalid_image_size",
        "image_too_large",
        "invalid_mask",
        "invalid_image_mask",
        "string_above_max_length",
        "integer_above_max_value",
        "integer_below_min_value",
        "invalid_prompt",
    }
)
#: 4xx codes that are the channel's fault, not the caller's (its account, its model
#: mapping): they fail over like a 5xx instead of being handed to the caller.
CHANNEL_ERROR_CODES = frozenset(
    {
        "billing_hard_limit_reached",
        "insufficient_quota",
        "model_not_found",
        "deploymentnotfound",
        "invalid_api_key",
        "account_deactivated",
        "unsupported_country_region_territory",
    }
)
_PARAM = re.compile(r"[a-z_][a-z0-9_.\[\]]{0,39}")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            seconds = float(value)
            return max(0.0, seconds) if math.isfinite(seconds) else None
        except ValueError:
            return None
    return None


class OpenAIDialectConnector:
    """Base for every HTTP connector speaking the OpenAI Images dialect."""

    type: ClassVar[str] = ""

    def __init__(
        self,
        client_factory: ClientFactory = default_client,
        *,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        answer_memory: AnswerMemory | None = None,
    ) -> None:
        self._max_answer_bytes = max_answer_bytes
        # Shared by every connector of the process (registry.build_connectors).
        self._answer_memory = answer_memory if answer_memory is not None else AnswerMemory()
        # One session (one connection pool) per channel, rebuilt when the channel's
        # connection settings are edited at run time.
        self._sessions = ChannelSessions(client_factory)

    # -- vendor hooks ----------------------------------------------------------------

    def url(self, target: CallTarget, endpoint: str) -> str:
        base = (target.channel.base_url or "").rstrip("/")
        return f"{base}/images/{endpoint}"

    def auth_headers(self, target: CallTarget) -> dict[str, str]:
        return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}

    def body_model(self, target: CallTarget) -> str | None:
        """The ``model`` field to send (None: omit it)."""
        return target.upstream_model

    def adapt_params(self, target: CallTarget, request: ImageRequest) -> dict[str, Any]:
        return dict(request.upstream_params)

    def client_error(self, status: int, error: dict[str, Any]) -> ApiError:
        """Turn an upstream 4xx the caller caused into the official error shape.

        Only a known ``code`` passes through (anything else becomes
        ``upstream_invalid_request``), ``param`` only when it looks like a parameter
        name, and the message only scrubbed (:mod:`.redact`); the connector scrubs it
        again with the channel's own key and address before it leaves.
        """
        code = error.get("code") if isinstance(error.get("code"), str) else None
        if code == "moderation_blocked" or error.get("type") == "image_generation_user_error":
            return ApiError(
                "Your request was rejected by the upstream safety system; change the prompt or image and try again.",
                status=400,
                type="image_generation_user_error",
                code="moderation_blocked",
                param=None,
            )
        param = error.get("param")
        message = error.get("message")
        text = redact(message) if isinstance(message, str) else ""
        return ApiError(
            f"The upstream rejected the request: {text}" if text else "The upstream rejected the request as invalid.",
            status=400 if status not in (404, 413, 422) else status,
            type="invalid_request_error",
            code=code if code in CLIENT_ERROR_CODES else "upstream_invalid_request",
            param=param if isinstance(param, str) and _PARAM.fullmatch(param) else None,
        )

    def transform_b64(self, request: ImageRequest, b64: B64Payload) -> B64Payload:
        """Hook for vendors that cannot produce a requested format (Azure: webp)."""
        return b64

    # -- wire ------------------------------------------------------------------------------

    async def _open(
        self, session: aiohttp.ClientSession, target: CallTarget, request: ImageRequest, stream: bool
    ) -> aiohttp.ClientResponse:
        """Send the request; its response once the status line and headers are in.

        An upstream may close an idle keep-alive connection just as we reuse it; the
        request then fails before any answer with the server "disconnected". That is
        retried once on a fresh connection, here: with a one-channel pool it would
        otherwise be a 502 for a call the upstream never saw (seen under load against
        a server whose keep-alive timeout is shorter than our pool's).
        """
        extra: dict[str, Any] = {"timeout": stream_timeout(target.channel)} if stream else {}
        try:
            return await session.post(**self._build(target, request, stream), allow_redirects=False, **extra)
        except aiohttp.ServerDisconnectedError:
            return await session.post(**self._build(target, request, stream), allow_redirects=False, **extra)

    def _build(self, target: CallTarget, request: ImageRequest, stream: bool) -> dict[str, Any]:
        params = self.adapt_params(target, request)
        model = self.body_model(target)
        fields: dict[str, Any] = {"prompt": request.prompt}
        if model is not None:
            fields["model"] = model
        fields.update(params)
        if stream:
            fields["stream"] = True
        # Header values and the URL are checked and encoded here, by construction: a CR/LF
        # in a key can never inject a header, a deployment name never breaks the path.
        headers = safe_headers(self.auth_headers(target))
        url = safe_url(self.url(target, request.endpoint))
        if request.endpoint == "generations":
            headers["Content-Type"] = "application/json"
            return {"url": url, "headers": headers, "data": orjson.dumps(fields)}
        form = aiohttp.FormData(quote_fields=False)
        for key, value in fields.items():
            form.add_field(key, _form_value(value))
        name = "image" if len(request.images) == 1 else "image[]"
        for i, img in enumerate(request.images):
            form.add_field(
                name, img.data, filename=img.filename or f"image_{i}.{img.mime.split('/')[1]}", content_type=img.mime
            )
        if request.mask is not None:
            form.add_field(
                "mask", request.mask.data, filename=request.mask.filename or "mask.png", content_type=request.mask.mime
            )
        return {"url": url, "headers": headers, "data": form}

    def _failure_for_status(
        self, status: int, headers: Mapping[str, str], raw: bytes | bytearray | mmap.mmap
    ) -> UpstreamFailure:
        error: dict[str, Any] = {}
        try:
            parsed = orjson.loads(memoryview(raw)) if len(raw) else {}
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
        except orjson.JSONDecodeError:
            pass
        code = error.get("code")
        detail = f"HTTP {status}" + (f" {redact(code, limit=60)}" if isinstance(code, str) else "")
        if status in (401, 403):
            return UpstreamFailure("auth", detail, status=status)
        if status == 429:
            return UpstreamFailure("rate_limited", detail, status=status, retry_after=retry_after_seconds(headers))
        if status == 408:
            return UpstreamFailure("timeout", detail, status=status)
        if status >= 500 or status == 404 or _channel_side(error):
            # A 404 is a channel misconfiguration (unknown deployment/path): try elsewhere.
            return UpstreamFailure("server", detail, status=status, retry_after=retry_after_seconds(headers))
        return UpstreamFailure("client", detail, status=status, client_error=self.client_error(status, error))

    async def images(self, target: CallTarget, request: ImageRequest) -> UpstreamResult:
        try:
            return await self._images(target, request)
        except UpstreamFailure as failure:
            raise failure.redacted(_secrets(target)) from None
        except Exception as exc:  # noqa: BLE001 - a malformed channel or a bug: the channel failed
            raise UpstreamFailure.unexpected(exc) from None

    async def stream(self, target: CallTarget, request: ImageRequest) -> AsyncIterator[StreamEvent]:
        try:
            async with aclosing(self._stream(target, request)) as events:
                async for event in events:
                    yield event
        except UpstreamFailure as failure:
            raise failure.redacted(_secrets(target)) from None
        except Exception as exc:  # noqa: BLE001 - a malformed channel or a bug: the channel failed
            raise UpstreamFailure.unexpected(exc) from None

    async def _images(self, target: CallTarget, request: ImageRequest) -> UpstreamResult:
        headers: Mapping[str, str]
        try:
            async with (
                self._sessions.lease(target.channel) as session,
                await self._open(session, target, request, stream=False) as resp,
            ):
                status, headers = resp.status, resp.headers
                raw = await read_capped(resp, self._max_answer_bytes, self._answer_memory)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamFailure("timeout", f"{target.channel.name}: timed out") from None
        except AnswerTooLarge as exc:
            raise UpstreamFailure("bad_response", f"{target.channel.name}: {exc}") from None
        except UnsafeValue as exc:
            raise UpstreamFailure("connector", f"{target.channel.name}: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:  # OSError covers refused, reset, TLS and closed
            raise UpstreamFailure("connect", f"{target.channel.name}: {type(exc).__name__}") from None
        if status != 200:
            raise self._failure_for_status(status, headers, raw)
        try:
            # Images stay in ``raw`` as views: the answer is never copied whole (answer.py).
            body = parse_images_answer(raw)
        except orjson.JSONDecodeError:
            raise UpstreamFailure("bad_response", f"{target.channel.name}: invalid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise UpstreamFailure("bad_response", f"{target.channel.name}: no data array")
        items = []
        for item in body["data"]:
            if not isinstance(item, dict):
                raise UpstreamFailure("bad_response", f"{target.channel.name}: data item is not an object")
            if isinstance(item.get("b64_json"), (str, memoryview)):
                item = {**item, "b64_json": self.transform_b64(request, item["b64_json"])}
            items.append(item)
        meta = {k: body[k] for k in _META_KEYS if isinstance(body.get(k), str)}
        if request.output_format and "output_format" in meta:
            meta["output_format"] = request.output_format
        created = body.get("created") if isinstance(body.get("created"), int) else None
        return UpstreamResult(items=items, usage=reported_usage(body.get("usage")), meta=meta, created=created)

    async def _stream(self, target: CallTarget, request: ImageRequest) -> AsyncGenerator[StreamEvent, None]:
        # Once the consumer closes this generator, whatever closing the response raises
        # is nobody's business: turned into an UpstreamFailure it would make aclose()
        # fail, and an aclose() run by the garbage collector logs "Task exception was
        # never retrieved".
        closing = False
        try:
            async with (
                self._sessions.lease(target.channel) as session,
                await self._open(session, target, request, stream=True) as resp,
            ):
                if resp.status != 200:
                    error_body = await read_capped(resp, min(self._max_answer_bytes, 1 << 20))
                    raise self._failure_for_status(resp.status, resp.headers, error_body)
                async with aclosing(_sse_payloads(resp)) as payloads:
                    async for payload in payloads:
                        if payload is None:
                            return
                        if "error" in payload:
                            raise UpstreamFailure("server", f"{target.channel.name}: error event in stream")
                        if isinstance(payload.get("b64_json"), str):
                            payload = {**payload, "b64_json": self.transform_b64(request, payload["b64_json"])}
                            if request.output_format:
                                payload["output_format"] = request.output_format
                        try:
                            yield StreamEvent(payload)
                        except GeneratorExit:
                            closing = True
                            raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
            if closing:
                return
            raise UpstreamFailure("timeout", f"{target.channel.name}: stream timed out") from None
        except AnswerTooLarge as exc:
            raise UpstreamFailure("bad_response", f"{target.channel.name}: {exc}") from None
        except UnsafeValue as exc:
            raise UpstreamFailure("connector", f"{target.channel.name}: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            if closing:
                return
            raise UpstreamFailure("connect", f"{target.channel.name}: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        await self._sessions.aclose()


def _secrets(target: CallTarget) -> tuple[str, ...]:
    return channel_secrets(target.api_key, target.channel.base_url)


def _channel_side(error: dict[str, Any]) -> bool:
    """A 4xx that the channel caused: its account or model mapping, never the caller
    (whose model the gateway has already checked)."""
    code = error.get("code")
    return (isinstance(code, str) and code.lower() in CHANNEL_ERROR_CODES) or error.get("param") == "model"


#: The largest server-sent event accepted from an upstream: a 4K partial image as
#: base64 is ~45 MB; anything larger is a hostile or broken upstream, not an image.
MAX_SSE_EVENT_BYTES = 64 * 1024 * 1024


async def _sse_payloads(resp: aiohttp.ClientResponse) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Parse server-sent events; yields each JSON payload, ``None`` at ``[DONE]``.

    Hand-rolled because SSE framing is twenty lines and a dependency for it would
    buffer differently from how we need to relay (event by event, as it arrives).
    Lines are split from raw chunks here, not with aiohttp's line reader: that one
    refuses lines over 128 KiB (``LineTooLong``), and an image event is one line of
    megabytes. Each chunk is scanned once; an event over ``MAX_SSE_EVENT_BYTES`` fails.
    """
    data_lines: list[bytes] = []
    size = 0
    pending = bytearray()
    async for chunk in resp.content.iter_any():
        pos = 0
        while (newline := chunk.find(b"\n", pos)) != -1:
            pending += chunk[pos:newline]
            pos = newline + 1
            line = bytes(pending).rstrip(b"\r")
            pending.clear()
            if line == b"":
                if not data_lines:
                    continue
                data, data_lines, size = b"\n".join(data_lines), [], 0
                if data.startswith(b"[DONE]"):
                    yield None
                    return
                try:
                    payload = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamFailure("bad_response", "invalid JSON in stream") from None
                if isinstance(payload, dict):
                    yield payload
            elif line.startswith(b"data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(b" ") else value)
                size += len(value)
        pending += chunk[pos:]
        if size + len(pending) > MAX_SSE_EVENT_BYTES:
            raise UpstreamFailure("bad_response", "stream event larger than the limit")
    if pending.strip().startswith(b"data:"):
        value = bytes(pending.strip())[5:]
        data_lines.append(value.lstrip(b" "))
    if data_lines and not b"\n".join(data_lines).startswith(b"[DONE]"):
        raise UpstreamFailure("connect", "stream ended inside an event")


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
