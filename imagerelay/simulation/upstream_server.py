"""A standalone upstream simulator speaking the real OpenAI and Azure OpenAI wire protocols.

Tests and benchmarks run it as the stand-in for paid upstreams: the gateway's
``openai`` and ``azure`` connectors talk to it over real HTTP exactly as they would to
api.openai.com or an Azure resource, and the official ``openai`` SDK works against it
unchanged. It therefore reproduces what those services do *on the wire* - URLs,
authentication headers, multipart rules, parameter validation, error shapes, response
headers, server-sent events - and renders real images (see
:mod:`imagerelay.simulation.render`) with ``usage`` counted like the official API
(:func:`imagerelay.domain.usage.simulated_usage`).

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
import binascii
import hashlib
import io
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import anyio
import httpx
import orjson
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from imagerelay.domain.types import ImageRequest, InputImage
from imagerelay.simulation.render import render_image, resolve_dimensions

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

Protocol = Literal["openai", "azure"]
Endpoint = Literal["generations", "edits"]

#: Models the ``openai`` protocol accepts (others: 400 "The model 'x' does not exist.").
DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-1.5",
    "gpt-image-1",
    "gpt-image-1-mini",
    "chatgpt-image-latest",
)

MAX_PROMPT = 32_000
MAX_IMAGES = 16
MAX_FILE_BYTES = 50 * 1024 * 1024
IMAGE_MIMES = ("image/png", "image/jpeg", "image/webp")
_MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
_LEGACY_SIZES = ("1024x1024", "1024x1536", "1536x1024")
_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_API_VERSION_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(-preview)?$")
_MIN_AZURE_API_VERSION = "2025-04-01"
_V1_API_VERSIONS = ("preview", "latest", "v1")
_DATA_URL_RE = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w=.+-]+)*);base64,", re.IGNORECASE)
_SCOPE_SEND = "imagerelay.sim.server_send"
_MAGIC_MIME = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}

_GEN_PARAMS = frozenset(
    {
        "prompt", "model", "n", "size", "quality", "background", "output_format", "output_compression",
        "moderation", "response_format", "stream", "partial_images", "user", "safety_identifier",
    }
)
_EDIT_FORM_PARAMS = _GEN_PARAMS | {"input_fidelity"}
_EDIT_JSON_PARAMS = _EDIT_FORM_PARAMS | {"images", "mask"}

_AZURE_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your resource."
)
_AZURE_DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment within the "
    "last 5 minutes, please wait a moment and try again."
)
_AZURE_SAFE = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}


# =========================================================================== errors


class SimError(Exception):
    """An HTTP error answer in the exact shape the simulated service uses."""

    def __init__(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> SimError:
    """The official error shape: all four keys present, ``param``/``code`` may be null."""
    return SimError(status, {"error": {"message": message, "type": type, "param": param, "code": code}}, headers)


def azure_error(
    status: int, code: str, message: str, *, extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> SimError:
    """Azure's own (gateway-level) shape: ``{"error": {"code", "message", ...}}``."""
    return SimError(status, {"error": {"code": code, "message": message, **(extra or {})}}, headers)


def _invalid_value(param: str, value: object, allowed: Sequence[str]) -> SimError:
    quoted = [f"'{a}'" for a in allowed]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + (", and " if len(quoted) > 2 else " and ") + quoted[-1]
    return openai_error(400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param, code="invalid_value")


# =========================================================================== faults


#: Fault types accepted by ``POST /_sim/faults`` (aliases in :data:`_FAULT_ALIASES`).
FAULT_TYPES: tuple[str, ...] = (
    "latency",  # added delay: latency_s + uniform(0, latency_jitter_s); combines with the others
    "server_error",  # 500 server_error
    "overloaded",  # 503 server_is_overloaded (Azure: ServiceUnavailable)
    "rate_limit",  # 429 rate_limit_exceeded + retry-after (retry_after, default 1 s; retry_after_ms optional)
    "unauthorized",  # 401 invalid_api_key (Azure: code "401")
    "status",  # any status: "status" (default 502) and optional "body" / "headers"
    "moderation",  # 400 image_generation_user_error / moderation_blocked
    "content_filter",  # 400 Azure contentFilter with inner_error ResponsibleAIPolicyViolation
    "reset",  # the connection is reset (RST) without any response byte
    "truncate",  # content-length announces the full body, half is sent, connection closed
    "invalid_json",  # 200 application/json whose body is not valid JSON
    "data_url_prefix",  # b64_json starts with "data:image/png;base64,"
    "no_padding",  # b64_json without its trailing "=" padding (the image is made to need some)
    "bad_base64",  # b64_json that is not decodable base64
    "stream_cut",  # stream: first event, then the connection drops (non-stream: like truncate)
    "stream_error",  # stream: first event, then an error event (non-stream: like server_error)
)
_FAULT_ALIASES = {
    "500": "server_error", "503": "overloaded", "429": "rate_limit", "401": "unauthorized",
    "connection_reset": "reset", "truncated": "truncate", "truncated_body": "truncate",
    "data_url": "data_url_prefix", "missing_padding": "no_padding", "undecodable_base64": "bad_base64",
    "moderation_blocked": "moderation", "contentFilter": "content_filter",
}
_FAULT_KEYS = frozenset(
    {"type", "count", "rate", "seed", "endpoint", "latency_s", "latency_jitter_s", "retry_after",
     "retry_after_ms", "status", "body", "headers", "message"}
)
_RESPONSE_FAULTS = frozenset(
    {"truncate", "invalid_json", "data_url_prefix", "no_padding", "bad_base64", "stream_cut", "stream_error"}
)


@dataclass
class FaultRule:
    """One active fault. See :func:`parse_fault` for the JSON it is made from."""

    type: str
    count: int | None = None  # remaining matching requests it applies to; None = until cleared
    rate: float = 1.0
    seed: int = 0
    endpoint: str | None = None
    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    retry_after: float = 1.0
    retry_after_ms: int | None = None
    status: int = 502
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    seen: int = 0
    fired: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": self.type, "count": self.count, "rate": self.rate, "seed": self.seed,
            "endpoint": self.endpoint, "seen": self.seen, "fired": self.fired,
        }
        if self.type == "latency":
            out.update(latency_s=self.latency_s, latency_jitter_s=self.latency_jitter_s)
        if self.type == "rate_limit":
            out.update(retry_after=self.retry_after, retry_after_ms=self.retry_after_ms)
        if self.type == "status":
            out.update(status=self.status)
        return out


def parse_fault(raw: object) -> FaultRule:
    """Validate one fault object from ``POST /_sim/faults``.

    Schema (all keys but ``type`` optional)::

        {"type": one of FAULT_TYPES (or an alias such as "500", "429", "reset"),
         "count": K,            # applies to the next K matching requests, then expires
         "rate": 0..1,          # each matching request is hit with this probability (default 1)
         "seed": int,           # seeds that rule's RNG (default 0) so runs are repeatable
         "endpoint": "generations" | "edits",   # only match this endpoint
         "latency_s": s, "latency_jitter_s": s,  # "latency"
         "retry_after": s, "retry_after_ms": ms,  # "rate_limit" (retry-after header, seconds)
         "status": int, "body": any JSON, "headers": {..},  # "status" (headers: any error fault)
         "message": str}        # overrides the error message of error faults

    ``count`` is consumed by every matching request that reaches the rule, whether the
    rate lets it fire or not: ``{"type": "503", "count": 10, "rate": 0.3}`` means "about
    three of the next ten requests". Raises :class:`ValueError` with a readable reason.
    """
    if not isinstance(raw, dict):
        raise ValueError("a fault must be a JSON object")  # noqa: TRY004 - the control API's contract
    unknown = set(raw) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault keys {sorted(unknown)}; allowed: {sorted(_FAULT_KEYS)}")
    kind = str(raw.get("type", ""))
    kind = _FAULT_ALIASES.get(kind, kind)
    if kind not in FAULT_TYPES:
        raise ValueError(f"unknown fault type {raw.get('type')!r}; known: {list(FAULT_TYPES)} and aliases {sorted(_FAULT_ALIASES)}")

    def num(key: str, default: float, lo: float, hi: float) -> float:
        value = raw.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(f"{key} must be a number between {lo} and {hi}; got {value!r}")
        return float(value)

    count = raw.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer; got {count!r}")
    endpoint = raw.get("endpoint")
    if endpoint not in (None, "generations", "edits"):
        raise ValueError(f"endpoint must be 'generations' or 'edits'; got {endpoint!r}")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("headers must be an object of strings")
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError("message must be a string")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}")  # noqa: TRY004
    retry_ms = raw.get("retry_after_ms")
    if retry_ms is not None and (isinstance(retry_ms, bool) or not isinstance(retry_ms, int) or retry_ms < 0):
        raise ValueError(f"retry_after_ms must be a non-negative integer; got {retry_ms!r}")
    return FaultRule(
        type=kind,
        count=count,
        rate=num("rate", 1.0, 0.0, 1.0),
        seed=seed,
        endpoint=endpoint,
        latency_s=num("latency_s", 0.0, 0.0, 3600.0),
        latency_jitter_s=num("latency_jitter_s", 0.0, 0.0, 3600.0),
        retry_after=num("retry_after", 1.0, 0.0, 86400.0),
        retry_after_ms=retry_ms,
        status=int(num("status", 502, 100, 599)),
        body=raw.get("body"),
        headers=dict(headers),
        message=message,
        rng=random.Random(seed),
    )


@dataclass(slots=True)
class Verdict:
    """What the fault rules decided for one request."""

    delay_s: float = 0.0
    outcome: FaultRule | None = None


# =========================================================================== state


class SimState:
    """Mutable simulator state shared by the handlers and the control plane.

    Guarded by a lock so tests may also poke it directly from another thread
    (``sim_state(app).add_faults(...)``) while uvicorn serves on its own loop.
    """

    def __init__(
        self,
        protocol: Protocol,
        *,
        api_keys: Sequence[str],
        latency_s: float,
        deployments: Mapping[str, str],
        models: Sequence[str],
        default_model: str,
        cache: bool,
        incompressible: bool,
        max_recorded: int,
        cache_entries: int,
    ) -> None:
        self.protocol: Protocol = protocol
        self.api_keys = frozenset(api_keys)
        self.latency_s = latency_s
        self.deployments = dict(deployments)
        self.models = tuple(models)
        self.default_model = default_model
        self.cache = cache
        self.incompressible = incompressible
        self.faults: list[FaultRule] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._cache: OrderedDict[tuple[Any, ...], str] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()

    # ---- faults
    def add_faults(self, rules: Iterable[FaultRule]) -> None:
        with self._lock:
            self.faults.extend(rules)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def faults_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self.faults]

    def judge(self, endpoint: Endpoint) -> Verdict:
        """Apply the rules to one request: total added latency and the first firing fault.

        Latency rules all apply. Other rules are tried in the order they were added
        and the first one that fires wins; rules after it are not consulted (their
        ``count`` is not consumed), so ``[500 x1, 429 x1]`` gives a 500 then a 429.
        """
        verdict = Verdict()
        with self._lock:
            for rule in list(self.faults):
                if rule.endpoint is not None and rule.endpoint != endpoint:
                    continue
                if rule.type != "latency" and verdict.outcome is not None:
                    continue
                rule.seen += 1
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self.faults.remove(rule)
                if rule.rate < 1.0 and rule.rng.random() >= rule.rate:
                    continue
                rule.fired += 1
                if rule.type == "latency":
                    jitter = rule.rng.uniform(0.0, rule.latency_jitter_s) if rule.latency_jitter_s else 0.0
                    verdict.delay_s += rule.latency_s + jitter
                else:
                    verdict.outcome = rule
        return verdict

    # ---- requests log
    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def recorded(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- config and render cache
    def config_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol, "cache": self.cache, "incompressible": self.incompressible,
            "latency_s": self.latency_s, "deployments": self.deployments, "models": list(self.models),
        }

    def cached(self, key: tuple[Any, ...]) -> str | None:
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
            return value

    def store(self, key: tuple[Any, ...], value: str) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)


# =========================================================================== request parsing


@dataclass(slots=True)
class _Input:
    data: bytes
    mime: str
    width: int
    height: int
    param: str
    filename: str


@dataclass(slots=True)
class _Call:
    """A validated call: what to render and what to report."""

    endpoint: Endpoint
    model: str
    prompt: str
    n: int
    width: int
    height: int
    quality: str
    background: str
    output_format: str
    output_compression: int | None
    stream: bool
    partial_images: int
    inputs: list[_Input]
    request: ImageRequest


@dataclass(slots=True)
class _Body:
    """The request body as the handlers see it: JSON object or multipart form."""

    kind: Literal["json", "form"]
    values: dict[str, Any]  # JSON object, or text fields of the form (last value wins)
    files: list[tuple[str, UploadFile, bytes]]  # multipart files in order: (field name, part, content)
    raw_size: int


def _summarize(value: Any, limit: int = 1024) -> Any:
    """Long strings (data URLs, base64) are logged as length + sha256, not verbatim."""
    if isinstance(value, str) and len(value) > limit:
        digest = hashlib.sha256(value.encode()).hexdigest()
        return f"<{len(value)} chars sha256={digest}>"
    if isinstance(value, dict):
        return {k: _summarize(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_summarize(v, limit) for v in value]
    return value


async def _read_body(request: Request) -> tuple[_Body, dict[str, Any]]:
    """Parse the body and build the request-log entry (parsing errors become SimErrors)."""
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.url.path,
        "query": dict(request.query_params),
        "query_string": request.url.query,
        "headers": {k: v for k, v in request.headers.items()},
        "content_type": ctype,
        "body_size": len(raw),
        "json": None,
        "parts": None,
        "form": None,
        "time": time.time(),
    }
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        try:
            form = await request.form(max_files=1000, max_fields=1000, max_part_size=4 * 1024 * 1024)
        except HTTPException as exc:
            raise openai_error(400, f"Could not parse multipart form: {exc.detail}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. a multipart body without a boundary
            raise openai_error(400, f"Could not parse multipart form: {exc}") from None
        values: dict[str, Any] = {}
        files: list[tuple[str, UploadFile, bytes]] = []
        parts: list[dict[str, Any]] = []
        for name, item in form.multi_items():
            if isinstance(item, UploadFile):
                content = await item.read()
                files.append((name, item, content))
                parts.append({
                    "name": name, "filename": item.filename, "content_type": item.content_type,
                    "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                })
            else:
                text = str(item)
                values[name] = text
                parts.append({
                    "name": name, "filename": None, "content_type": None, "size": len(text.encode()),
                    "sha256": hashlib.sha256(text.encode()).hexdigest(), "value": _summarize(text),
                })
        await form.close()
        entry["parts"] = parts
        entry["form"] = {k: _summarize(v) for k, v in values.items()}
        return _Body("form", values, files, len(raw)), entry
    if raw:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            entry["json"] = None
            entry["body_sha256"] = hashlib.sha256(raw).hexdigest()
            return _Body("json", {"__invalid__": True}, [], len(raw)), entry
        entry["json"] = _summarize(parsed)
        if not isinstance(parsed, dict):
            return _Body("json", {"__invalid__": True}, [], len(raw)), entry
        return _Body("json", parsed, [], len(raw)), entry
    return _Body("json", {}, [], 0), entry


_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


class _Params:
    """Typed access to body parameters with the official API's messages.

    JSON values must have the right JSON type; multipart values are strings and are
    converted (``"2"`` -> 2, ``"true"`` -> True), as the official API does.
    """

    def __init__(self, body: _Body) -> None:
        self.body = body
        self.values = body.values
        self.form = body.kind == "form"

    def present(self, name: str) -> bool:
        return self.values.get(name) is not None

    def string(self, name: str, allowed: Sequence[str] | None = None) -> str | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise openai_error(
                400, f"Invalid type for '{name}': expected a string, but got {_json_type(value)} instead.",
                param=name, code="invalid_type",
            )
        if allowed is not None and value not in allowed:
            raise _invalid_value(name, value, allowed)
        return value

    def integer(self, name: str, lo: int, hi: int) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if self.form and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise openai_error(
                    400, f"Invalid type for '{name}': expected an integer, but got a string instead.",
                    param=name, code="invalid_type",
                ) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise openai_error(
                400, f"Invalid type for '{name}': expected an integer, but got {_json_type(value)} instead.",
                param=name, code="invalid_type",
            )
        if value < lo:
            raise openai_error(
                400, f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got {value} instead.",
                param=name, code="integer_below_min_value",
            )
        if value > hi:
            raise openai_error(
                400, f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got {value} instead.",
                param=name, code="integer_above_max_value",
            )
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.values.get(name)
        if value is None:
            return None
        if self.form and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
        if isinstance(value, bool):
            return value
        raise openai_error(
            400, f"Invalid type for '{name}': expected a boolean, but got {_json_type(value)} instead.",
            param=name, code="invalid_type",
        )


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _is_legacy(model: str) -> bool:
    """gpt-image-1 family and chatgpt-image-latest: only the three standard sizes."""
    name = model.lower()
    return "gpt-image-1" in name or name.startswith("chatgpt-image")


def _check_size(size: str, model: str) -> None:
    if size == "auto":
        return
    if _is_legacy(model):
        if size not in _LEGACY_SIZES:
            raise _invalid_value("size", size, (*_LEGACY_SIZES, "auto"))
        return
    m = _SIZE_RE.match(size)
    if not m:
        raise openai_error(
            400, f"Invalid size '{size}'. Size must be 'auto' or 'WIDTHxHEIGHT', e.g. '1024x1024'.",
            param="size", code="invalid_value",
        )
    w, h = int(m.group(1)), int(m.group(2))
    problem = None
    if w % 16 or h % 16:
        problem = "Width and height must both be divisible by 16."
    elif max(w, h) > 3840:
        problem = "The longest edge must be at most 3840 pixels."
    elif max(w, h) > 3 * min(w, h):
        problem = "The ratio between the long and the short edge must be at most 3:1."
    elif not 655_360 <= w * h <= 8_294_400:
        problem = "The total number of pixels must be between 655360 and 8294400."
    if problem:
        raise openai_error(400, f"Invalid size '{size}'. {problem}", param="size", code="invalid_value")


def _sniff_mime(data: bytes) -> str | None:
    for magic, mime in _MAGIC_MIME.items():
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _open_input(data: bytes, mime: str | None, param: str, filename: str, index: int) -> _Input:
    """Check one edit input like the API does: mimetype, size limit, decodable image."""
    mime = _MIME_ALIASES.get((mime or "").lower(), (mime or "").lower())
    if mime not in IMAGE_MIMES:
        raise openai_error(
            400,
            f"Invalid file '{param}': unsupported mimetype ('{mime or 'none'}'). "
            "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
            param=param, code="unsupported_file_mimetype",
        )
    if len(data) > MAX_FILE_BYTES:
        raise openai_error(
            400, f"Invalid file '{param}': file too large ({len(data)} bytes). Maximum size is 50MB.",
            param=param, code="file_too_large",
        )
    try:
        if _sniff_mime(data) is None:
            raise UnidentifiedImageError
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise openai_error(
            400, f"Invalid image file or mode for image {index + 1}, please check your image file.",
            param=param, code="invalid_image_file",
        ) from None
    return _Input(data=data, mime=mime, width=width, height=height, param=param, filename=filename)


_IMAGE_FIELD = re.compile(r"^image(\[\d*\])?$")


async def _fetch_image_url(url: str, param: str) -> tuple[bytes, str | None]:
    """``image_url`` of the JSON edit form: a data URL or an http(s) URL to download."""
    m = _DATA_URL_RE.match(url)
    if m:
        try:
            return base64.b64decode(url[m.end():], validate=True), m.group(1)
        except (binascii.Error, ValueError):
            raise openai_error(400, f"Invalid base64 data in '{param}'.", param=param, code="invalid_image_url") from None
    if url.startswith(("http://", "https://")):
        try:
            async with httpx.AsyncClient(timeout=10.0, follow_redirects=True) as client:
                resp = await client.get(url)
                resp.raise_for_status()
        except httpx.HTTPError:
            raise openai_error(400, f"Error while downloading {url}.", param=param, code="invalid_image_url") from None
        return resp.content, resp.headers.get("content-type", "").split(";")[0].strip() or None
    raise openai_error(
        400, f"Invalid '{param}': expected a data URL or an http(s) URL.", param=param, code="invalid_image_url"
    )


async def _collect_inputs(body: _Body) -> tuple[list[_Input], _Input | None]:
    """The edit's images and mask, in the order given, validated."""
    images: list[_Input] = []
    mask: _Input | None = None
    if body.kind == "form":
        image_parts = [(name, part, data) for name, part, data in body.files if _IMAGE_FIELD.match(name)]
        for name in body.values:
            if _IMAGE_FIELD.match(name) or name == "mask":
                raise openai_error(400, f"Invalid '{name}': expected a file upload.", param=name, code="invalid_type")
        if len(image_parts) > MAX_IMAGES:
            raise openai_error(
                400, f"Invalid 'image': array too long. Expected an array with maximum length {MAX_IMAGES}, "
                f"but got an array with length {len(image_parts)} instead.", param="image", code="array_above_max_length",
            )
        for i, (_name, part, data) in enumerate(image_parts):
            images.append(_open_input(data, part.content_type, f"image[{i}]", part.filename or "image.png", i))
        for name, part, data in body.files:
            if name == "mask":
                mask = _open_input(data, part.content_type, "mask", part.filename or "mask.png", 0)
            elif not _IMAGE_FIELD.match(name):
                raise openai_error(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    else:
        raw_images = body.values.get("images")
        if raw_images is not None:
            if not isinstance(raw_images, list):
                raise openai_error(400, "Invalid type for 'images': expected an array.", param="images", code="invalid_type")
            if len(raw_images) > MAX_IMAGES:
                raise openai_error(
                    400, f"Invalid 'images': array too long. Expected an array with maximum length {MAX_IMAGES}, "
                    f"but got an array with length {len(raw_images)} instead.", param="images", code="array_above_max_length",
                )
            for i, ref in enumerate(raw_images):
                images.append(await _json_image(ref, f"images[{i}]", i))
        raw_mask = body.values.get("mask")
        if raw_mask is not None:
            mask = await _json_image(raw_mask, "mask", 0)
    if not images:
        raise openai_error(400, "Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    if mask is not None and (mask.width, mask.height) != (images[0].width, images[0].height):
        raise openai_error(
            400, "Invalid mask image format - mask size does not match image size", param="mask", code="invalid_value"
        )
    return images, mask


async def _json_image(ref: object, param: str, index: int) -> _Input:
    if not isinstance(ref, dict):
        raise openai_error(400, f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    if ref.get("file_id") is not None:
        raise openai_error(
            400, f"Invalid '{param}.file_id': file ids are not available on the upstream simulator; use image_url.",
            param=f"{param}.file_id", code="invalid_value",
        )
    url = ref.get("image_url")
    if not isinstance(url, str) or not url:
        raise openai_error(400, f"Missing required parameter: '{param}.image_url'.", param=f"{param}.image_url",
                           code="missing_required_parameter")
    data, mime = await _fetch_image_url(url, f"{param}.image_url")
    return _open_input(data, mime, param, "image", index)


# =========================================================================== validation


def _validate(
    state: SimState, body: _Body, endpoint: Endpoint, *, model: str, model_in_body_forbidden: bool,
    inputs: list[_Input], mask: _Input | None,
) -> _Call:
    """Check every parameter the way the service does and resolve what to render."""
    params = _Params(body)
    azure = state.protocol == "azure"
    allowed = _GEN_PARAMS if endpoint == "generations" else (_EDIT_JSON_PARAMS if body.kind == "json" else _EDIT_FORM_PARAMS)
    for name in body.values:
        if name not in allowed and not (body.kind == "form" and (_IMAGE_FIELD.match(name) or name == "mask")):
            raise openai_error(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if model_in_body_forbidden and params.present("model"):
        # Azure deployment URLs route by the URL; gpt-image-2 deployments reject a body model.
        raise openai_error(
            400, f"The model '{body.values['model']}' does not exist.",
            type="image_generation_user_error", param="model", code="invalid_value",
        )
    prompt = params.string("prompt")
    if not prompt:
        raise openai_error(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if len(prompt) > MAX_PROMPT:
        raise openai_error(
            400, f"Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT}, "
            f"but got a string with length {len(prompt)} instead.", param="prompt", code="string_above_max_length",
        )
    if params.present("response_format"):
        # GPT image models always answer base64 and do not know this dall-e parameter.
        raise openai_error(400, "Unknown parameter: 'response_format'.", param="response_format", code="unknown_parameter")
    n = params.integer("n", 1, 10) or 1
    size = params.string("size") or "auto"
    _check_size(size, model)
    quality = params.string("quality", ("low", "medium", "high", "auto"))
    background = params.string("background", ("transparent", "opaque", "auto"))
    formats = ("png", "jpeg") if azure else ("png", "jpeg", "webp")
    output_format = params.string("output_format", formats) or "png"
    output_compression = params.integer("output_compression", 0, 100)
    params.string("moderation", ("low", "auto"))
    params.string("user")
    params.string("safety_identifier")
    stream = bool(params.boolean("stream"))
    partial_images = params.integer("partial_images", 0, 3) or 0
    fidelity = params.string("input_fidelity", ("low", "high"))
    if fidelity is not None and not _is_legacy(model):
        raise openai_error(
            400, f"Unsupported parameter: 'input_fidelity' is not supported with model '{model}'.",
            param="input_fidelity", code="unsupported_parameter",
        )
    if background == "transparent" and output_format == "jpeg":
        raise openai_error(
            400, "Transparent background is not supported for the 'jpeg' output format; use 'png' or 'webp'.",
            param="background", code="invalid_value",
        )
    if output_compression is not None and output_compression < 100 and output_format == "png":
        raise openai_error(
            400, "Compression less than 100 is not supported for PNG output format.",
            param="output_compression", code="invalid_value",
        )
    first = (inputs[0].width, inputs[0].height) if inputs else None
    width, height = resolve_dimensions(size, "auto", first)
    # Azure renders auto/omitted quality as high; OpenAI reports medium (usage.reported_quality).
    reported_quality = quality if quality not in (None, "auto") else ("high" if azure else "medium")
    request = ImageRequest(
        endpoint=endpoint,
        model=model,
        prompt=prompt,
        n=n,
        size=size,
        quality=reported_quality,
        background=background,
        output_format=output_format,
        output_compression=output_compression,
        partial_images=partial_images,
        stream=stream,
        images=tuple(
            InputImage(data=b"", mime=i.mime, width=i.width, height=i.height, part=i.param, filename=i.filename)
            for i in inputs
        ),
        mask=(
            InputImage(data=b"", mime=mask.mime, width=mask.width, height=mask.height, part="mask")
            if mask is not None else None
        ),
        upstream_params={"input_fidelity": fidelity} if fidelity else {},
    )
    return _Call(
        endpoint=endpoint,
        model=model,
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        quality=reported_quality,
        background="transparent" if background == "transparent" else "opaque",
        output_format=output_format,
        output_compression=output_compression,
        stream=stream,
        partial_images=partial_images if stream else 0,
        inputs=inputs,
        request=request,
    )


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
        key = (call.prompt, call.width, call.height, call.output_format, call.background, call.output_compression,
               index, digest, partial, incompressible, pad_needed)
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


# =========================================================================== low-level responses


def _server_cycle(scope: Scope) -> Any:
    send = scope.get(_SCOPE_SEND)
    return getattr(send, "__self__", None)


async def _drop_connection(scope: Scope, *, reset: bool) -> None:
    """Close (FIN, after flushing what was written) or reset (RST) the client connection.

    Waits until the server has noticed, so it does not try to answer on its own.
    """
    cycle = _server_cycle(scope)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("upstream simulator: server transport not reachable; cannot drop the connection")
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # pragma: no cover - platform without SO_LINGER
                pass
        transport.abort()
    else:
        transport.close()
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.005)


def _client_gone(scope: Scope) -> bool:
    return bool(getattr(_server_cycle(scope), "disconnected", False))


def _raw_headers(headers: Mapping[str, str], content_type: str, length: int | None) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type.encode())]
    if length is not None:
        out.append((b"content-length", str(length).encode()))
    out.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    return out


class ResetResponse(Response):
    """No answer at all: the TCP connection is reset."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _drop_connection(scope, reset=True)


class TruncatedResponse(Response):
    """Headers promise ``len(body)`` bytes; half arrive, then the connection closes."""

    def __init__(self, body: bytes, *, status_code: int = 200, headers: Mapping[str, str] | None = None,
                 media_type: str = "application/json") -> None:
        super().__init__(status_code=status_code)
        self._full = body
        self._extra = dict(headers or {})
        self._media = media_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": _raw_headers(self._extra, self._media, len(self._full))})
        await send({"type": "http.response.body", "body": self._full[: len(self._full) // 2], "more_body": True})
        await _drop_connection(scope, reset=False)


class SSEResponse(Response):
    """``text/event-stream`` written frame by frame as the frames are produced.

    ``cut``: ``"after_first"`` drops the connection after the first frame,
    ``"mid_first"`` after half of it (used when the stream has a single frame).
    """

    def __init__(self, frames: AsyncIterator[bytes], *, headers: Mapping[str, str],
                 cut: Literal["after_first", "mid_first"] | None = None) -> None:
        super().__init__(status_code=200)
        self._frames = frames
        self._extra = dict(headers)
        self._cut = cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": _raw_headers(self._extra, "text/event-stream; charset=utf-8", None)})
        async for frame in self._frames:
            if self._cut == "mid_first":
                await send({"type": "http.response.body", "body": frame[: len(frame) // 2], "more_body": True})
                await _drop_connection(scope, reset=False)
                return
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            if self._cut == "after_first":
                await _drop_connection(scope, reset=False)
                return
            if _client_gone(scope):
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _json_response(status: int, body: Any, headers: Mapping[str, str]) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=dict(headers), media_type="application/json")


def _sse_frame(event: str, payload: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


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
                401, "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="invalid_api_key",
            )
        if bearer not in keys:
            shown = bearer[:3] + "*" * 3 + bearer[-4:] if len(bearer) > 8 else "***"
            raise openai_error(
                401, f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", code="invalid_api_key",
            )

    # ---- fault answers that replace the whole response
    def _fault_error(self, rule: FaultRule, call_model: str) -> SimError | None:
        azure = self.state.protocol == "azure"
        msg = rule.message
        headers = dict(rule.headers)
        if rule.type == "server_error":
            return openai_error(
                500, msg or "The server had an error while processing your request. Sorry about that!",
                type="server_error", headers=headers,
            )
        if rule.type == "overloaded":
            if azure:
                return azure_error(503, "ServiceUnavailable", msg or "The service is temporarily unable to process "
                                   "your request. Please try again later.", headers=headers)
            return openai_error(503, msg or "The server is overloaded or not ready yet.", type="server_error",
                                code="server_is_overloaded", headers=headers)
        if rule.type == "rate_limit":
            seconds = rule.retry_after
            headers.setdefault("retry-after", str(int(seconds)) if float(seconds).is_integer() else str(seconds))
            if rule.retry_after_ms is not None:
                headers.setdefault("retry-after-ms", str(rule.retry_after_ms))
            if azure:
                return azure_error(429, "429", msg or (
                    "Requests to the ImageGenerations_Create Operation under Azure OpenAI API version "
                    "2025-04-01-preview have exceeded call rate limit of your current AIServices S0 pricing tier. "
                    f"Please retry after {int(seconds)} seconds."), headers=headers)
            return openai_error(429, msg or (
                f"Rate limit reached for {call_model} in organization org-sim on images per minute (IPM): "
                f"Limit 5, Used 5, Requested 1. Please try again in {seconds:g}s."),
                type="requests", code="rate_limit_exceeded", headers=headers)
        if rule.type == "unauthorized":
            if azure:
                return azure_error(401, "401", msg or _AZURE_401, headers=headers)
            return openai_error(401, msg or "Incorrect API key provided: sk-***sim. You can find your API key at "
                                "https://platform.openai.com/account/api-keys.", code="invalid_api_key", headers=headers)
        if rule.type == "status":
            body = rule.body if rule.body is not None else {
                "error": {"message": msg or f"Simulated HTTP {rule.status}.", "type": "server_error",
                          "param": None, "code": None}}
            return SimError(rule.status, body, headers)
        if rule.type == "moderation":
            return openai_error(400, msg or (
                "Your request was rejected by the safety system. If you believe this is an error, contact us at "
                "help.openai.com and include the request ID."), type="image_generation_user_error",
                code="moderation_blocked", headers=headers)
        if rule.type == "content_filter":
            return azure_error(400, "contentFilter", msg or (
                "Your request was rejected as a result of our safety system. Your prompt may contain text that "
                "is not allowed by our safety system."), extra={
                    "param": "prompt", "type": None,
                    "inner_error": {
                        "code": "ResponsibleAIPolicyViolation",
                        "content_filter_results": {**_AZURE_SAFE, "violence": {"filtered": True, "severity": "high"}},
                    }}, headers=headers)
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
                state, body, endpoint, model=model,
                model_in_body_forbidden=state.protocol == "azure" and not v1_azure,
                inputs=inputs, mask=mask,
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
            raise openai_error(400, f"Invalid type for 'model': expected a string, but got {_json_type(model)} "
                               "instead.", param="model", code="invalid_type")
        if state.protocol == "openai":
            if model is None:
                return state.default_model
            if model not in state.models:
                raise openai_error(400, f"The model '{model}' does not exist.", param="model", code="invalid_value")
            return model
        if v1_azure:
            if not model:
                raise openai_error(400, "Missing required parameter: 'model'.", param="model",
                                   code="missing_required_parameter")
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
            400, f"Invalid Content-Type header ({media}), expected application/json"
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
            "usage": usage,
        }
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
        meta = {"size": f"{call.width}x{call.height}", "quality": call.quality,
                "background": call.background, "output_format": call.output_format}
        total_frames = call.partial_images + call.n
        fault_type = fault.type if fault is not None else None

        async def frames() -> AsyncIterator[bytes]:
            sent = 0
            for i in range(call.partial_images):
                b64 = await anyio.to_thread.run_sync(_render_b64, state, call, 0, (i, call.partial_images), pad)
                if fault_type == "invalid_json" and sent == 0:
                    yield f"event: {prefix}.partial_image\ndata: {{\"type\": \"{prefix}.partial_image\", \"b64_\n\n".encode()
                    sent += 1
                    continue
                yield _sse_frame(f"{prefix}.partial_image", {
                    "type": f"{prefix}.partial_image", "b64_json": _mangle(b64, fault, call.output_format),
                    "partial_image_index": i, "created_at": int(time.time()), **meta,
                })
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
                    yield f"event: {prefix}.completed\ndata: {{\"type\": \"{prefix}.completed\", \"b64_\n\n".encode()
                    sent += 1
                    continue
                yield _sse_frame(f"{prefix}.completed", {
                    "type": f"{prefix}.completed", "b64_json": _mangle(b64, fault, call.output_format),
                    "created_at": int(time.time()), **meta, "usage": usage,
                })
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
    return _sse_frame("error", {"type": "error", "error": {
        "message": message, "type": "server_error", "param": None, "code": "server_error"}})


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


def create_upstream_app(
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
        protocol, api_keys=api_keys, latency_s=latency_s, deployments=mapping, models=models,
        default_model=default_model, cache=cache, incompressible=incompressible,
        max_recorded=max_recorded, cache_entries=cache_entries,
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
        return handler.error_response(
            openai_error(status, f"{verb} ({request.method} {request.url.path})"), started
        )

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
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
