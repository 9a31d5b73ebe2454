"""What the simulator accepts: request parsing and validation, as the real APIs do it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from imagerelay.domain.types import ImageRequest, InputImage
from imagerelay.simulation.render import resolve_dimensions
from imagerelay_sim.faults import (
    _invalid_value,
    openai_error,
)
from imagerelay_sim.state import Endpoint, SimState

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
_MAGIC_MIME = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}

_GEN_PARAMS = frozenset(
    {
        "prompt",
        "model",
        "n",
        "size",
        "quality",
        "background",
        "output_format",
        "output_compression",
        "moderation",
        "response_format",
        "stream",
        "partial_images",
        "user",
        "safety_identifier",
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
        # Which connection carried it: how a test sees a client's pool reuse and limit.
        "peer": f"{request.client.host}:{request.client.port}" if request.client else None,
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
                parts.append(
                    {
                        "name": name,
                        "filename": item.filename,
                        "content_type": item.content_type,
                        "size": len(content),
                        "sha256": hashlib.sha256(content).hexdigest(),
                    }
                )
            else:
                text = str(item)
                values[name] = text
                parts.append(
                    {
                        "name": name,
                        "filename": None,
                        "content_type": None,
                        "size": len(text.encode()),
                        "sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "value": _summarize(text),
                    }
                )
        await form.close()
        entry["parts"] = parts
        entry["form"] = {k: _summarize(v) for k, v in values.items()}
        return _Body("form", values, files), entry
    if raw:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            entry["json"] = None
            entry["body_sha256"] = hashlib.sha256(raw).hexdigest()
            return _Body("json", {"__invalid__": True}, []), entry
        entry["json"] = _summarize(parsed)
        if not isinstance(parsed, dict):
            return _Body("json", {"__invalid__": True}, []), entry
        return _Body("json", parsed, []), entry
    return _Body("json", {}, []), entry


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
                400,
                f"Invalid type for '{name}': expected a string, but got {_json_type(value)} instead.",
                param=name,
                code="invalid_type",
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
                    400,
                    f"Invalid type for '{name}': expected an integer, but got a string instead.",
                    param=name,
                    code="invalid_type",
                ) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise openai_error(
                400,
                f"Invalid type for '{name}': expected an integer, but got {_json_type(value)} instead.",
                param=name,
                code="invalid_type",
            )
        if value < lo:
            raise openai_error(
                400,
                f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got {value} instead.",
                param=name,
                code="integer_below_min_value",
            )
        if value > hi:
            raise openai_error(
                400,
                f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got {value} instead.",
                param=name,
                code="integer_above_max_value",
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
            400,
            f"Invalid type for '{name}': expected a boolean, but got {_json_type(value)} instead.",
            param=name,
            code="invalid_type",
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
            400,
            f"Invalid size '{size}'. Size must be 'auto' or 'WIDTHxHEIGHT', e.g. '1024x1024'.",
            param="size",
            code="invalid_value",
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
            param=param,
            code="unsupported_file_mimetype",
        )
    if len(data) > MAX_FILE_BYTES:
        raise openai_error(
            400,
            f"Invalid file '{param}': file too large ({len(data)} bytes). Maximum size is 50MB.",
            param=param,
            code="file_too_large",
        )
    try:
        if _sniff_mime(data) is None:
            raise UnidentifiedImageError
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise openai_error(
            400,
            f"Invalid image file or mode for image {index + 1}, please check your image file.",
            param=param,
            code="invalid_image_file",
        ) from None
    return _Input(data=data, mime=mime, width=width, height=height, param=param, filename=filename)


_IMAGE_FIELD = re.compile(r"^image(\[\d*\])?$")


async def _fetch_image_url(url: str, param: str) -> tuple[bytes, str | None]:
    """``image_url`` of the JSON edit form: a data URL or an http(s) URL to download."""
    m = _DATA_URL_RE.match(url)
    if m:
        try:
            return base64.b64decode(url[m.end() :], validate=True), m.group(1)
        except (binascii.Error, ValueError):
            raise openai_error(
                400, f"Invalid base64 data in '{param}'.", param=param, code="invalid_image_url"
            ) from None
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
                400,
                f"Invalid 'image': array too long. Expected an array with maximum length {MAX_IMAGES}, "
                f"but got an array with length {len(image_parts)} instead.",
                param="image",
                code="array_above_max_length",
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
                raise openai_error(
                    400, "Invalid type for 'images': expected an array.", param="images", code="invalid_type"
                )
            if len(raw_images) > MAX_IMAGES:
                raise openai_error(
                    400,
                    f"Invalid 'images': array too long. Expected an array with maximum length {MAX_IMAGES}, "
                    f"but got an array with length {len(raw_images)} instead.",
                    param="images",
                    code="array_above_max_length",
                )
            for i, ref in enumerate(raw_images):
                images.append(await _json_image(ref, f"images[{i}]", i))
        raw_mask = body.values.get("mask")
        if raw_mask is not None:
            mask = await _json_image(raw_mask, "mask", 0)
    if not images:
        raise openai_error(
            400, "Missing required parameter: 'image'.", param="image", code="missing_required_parameter"
        )
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
            400,
            f"Invalid '{param}.file_id': file ids are not available on the upstream simulator; use image_url.",
            param=f"{param}.file_id",
            code="invalid_value",
        )
    url = ref.get("image_url")
    if not isinstance(url, str) or not url:
        raise openai_error(
            400,
            f"Missing required parameter: '{param}.image_url'.",
            param=f"{param}.image_url",
            code="missing_required_parameter",
        )
    data, mime = await _fetch_image_url(url, f"{param}.image_url")
    return _open_input(data, mime, param, "image", index)


# =========================================================================== validation


def _validate(
    state: SimState,
    body: _Body,
    endpoint: Endpoint,
    *,
    model: str,
    model_in_body_forbidden: bool,
    inputs: list[_Input],
    mask: _Input | None,
) -> _Call:
    """Check every parameter the way the service does and resolve what to render."""
    params = _Params(body)
    azure = state.protocol == "azure"
    allowed = (
        _GEN_PARAMS if endpoint == "generations" else (_EDIT_JSON_PARAMS if body.kind == "json" else _EDIT_FORM_PARAMS)
    )
    for name in body.values:
        if name not in allowed and not (body.kind == "form" and (_IMAGE_FIELD.match(name) or name == "mask")):
            raise openai_error(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if model_in_body_forbidden and params.present("model"):
        # Azure deployment URLs route by the URL; gpt-image-2 deployments reject a body model.
        raise openai_error(
            400,
            f"The model '{body.values['model']}' does not exist.",
            type="image_generation_user_error",
            param="model",
            code="invalid_value",
        )
    prompt = params.string("prompt")
    if not prompt:
        raise openai_error(
            400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    if len(prompt) > MAX_PROMPT:
        raise openai_error(
            400,
            f"Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT}, "
            f"but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    if params.present("response_format"):
        # GPT image models always answer base64 and do not know this dall-e parameter.
        raise openai_error(
            400, "Unknown parameter: 'response_format'.", param="response_format", code="unknown_parameter"
        )
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
            400,
            f"Unsupported parameter: 'input_fidelity' is not supported with model '{model}'.",
            param="input_fidelity",
            code="unsupported_parameter",
        )
    if background == "transparent" and output_format == "jpeg":
        raise openai_error(
            400,
            "Transparent background is not supported for the 'jpeg' output format; use 'png' or 'webp'.",
            param="background",
            code="invalid_value",
        )
    if output_compression is not None and output_compression < 100 and output_format == "png":
        raise openai_error(
            400,
            "Compression less than 100 is not supported for PNG output format.",
            param="output_compression",
            code="invalid_value",
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
            if mask is not None
            else None
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
