"""Turn raw HTTP bodies into plain values for the relay; every malformed body is a 4xx.

Every limit applies while the body arrives, never after it was read whole: a chunked
body with no ``Content-Length`` is cut as soon as it passes its limit. Multipart is
Starlette's parser (python-multipart) with our limits checked in its callbacks; file
parts are spooled to temporary files, not held in memory while the body arrives.

Images are checked in two passes (:mod:`imagerelay.domain.imagesniff`): first every
image's size, type, count and declared dimensions, then the decode that proves each is
complete. Both run in the image-check thread pool, whose size bounds how many decodes
the process runs at once, so a call full of hostile images costs its sender a 400 and
every other caller nothing.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from functools import partial
from typing import Any, TypeVar

import orjson
import pybase64
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from imagerelay.api.bigjson import LargeStrings, split_parse
from imagerelay.domain.imagesniff import inspect_image, verify_image
from imagerelay.domain.types import InputImage
from imagerelay.errors import ApiError, InvalidRequest, PayloadTooLarge

MAX_IMAGES = 16  # the official limit per edit; a mask comes on top
MAX_FIELDS = 64
MAX_FIELD_BYTES = 256 * 1024  # a 32,000-character prompt is at most 128 KB of UTF-8
# Image-call JSON up to this size is parsed on the event loop as is; a larger body has
# its long strings cut out first (orjson holds the GIL ~3 ms per MB of string).
INLINE_JSON_BYTES = 1024 * 1024
# Longer than any legitimate non-image string (a 32,000-character prompt, \u-escaped, is
# 192 KB), and the room left for the rest: 17 images just under it, plus the fields.
LARGE_STRING_BYTES = 256 * 1024
MAX_JSON_SKELETON_BYTES = 8 * 1024 * 1024
_IMAGE_PART = re.compile(r"^image(\[\d*\])?$")
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)
_T = TypeVar("_T")
_Source = tuple[Callable[[], bytes] | bytes, str, str | None]  # (bytes or a decoder, part, filename)


class ClientGone(ApiError):
    status = 499
    code = "client_disconnected"


def media_type(request: Request) -> str:
    """The request's media type without parameters, lower case (``application/json``)."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def json_edit_limit(max_body_bytes: int) -> int:
    """The largest JSON edit body: what multipart allows, in base64 (4/3), plus the fields."""
    return max_body_bytes * 4 // 3 + MAX_FIELD_BYTES


def check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"The request body is {int(declared):,} bytes; the limit is {limit:,} bytes. Send fewer or smaller images.",
        )


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks, refused with a 413 the moment their total passes ``limit``."""
    check_length(request, limit)
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise PayloadTooLarge(f"The request body exceeds {limit:,} bytes; send fewer or smaller images.")
            yield chunk
    except ClientDisconnect:
        raise ClientGone("client disconnected") from None


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """A small JSON body (console and admin calls), parsed on the event loop."""
    raw = await _read_body(request, limit)
    return _object(_parse_json(orjson.loads, raw))


async def read_image_json(request: Request, limit: int, pool: Executor) -> tuple[dict[str, Any], LargeStrings]:
    """An image call's JSON body; a large one is split and parsed in ``pool``.

    Strings longer than ``LARGE_STRING_BYTES`` come back as placeholders that only
    :func:`images_from_json` takes (as image data URLs); see :mod:`imagerelay.api.bigjson`.
    """
    raw = await _read_body(request, limit)
    if len(raw) <= INLINE_JSON_BYTES:
        return _object(_parse_json(orjson.loads, raw)), LargeStrings("", [], LARGE_STRING_BYTES)
    split = partial(split_parse, threshold=LARGE_STRING_BYTES, max_skeleton=MAX_JSON_SKELETON_BYTES)
    body, large = await asyncio.get_running_loop().run_in_executor(pool, _parse_json, split, raw)
    return _object(body), large


async def _read_body(request: Request, limit: int) -> bytearray:
    raw = bytearray()
    async with aclosing(_limited(request, limit)) as chunks:
        async for chunk in chunks:
            raw += chunk
    if not raw or raw.isspace():  # isspace stops at the first other byte; strip would copy the body
        raise InvalidRequest(
            'The request body is empty; send a JSON object such as {"model": "gpt-image-2", "prompt": "a red apple"}.',
            code="invalid_json",
        )
    return raw


def _parse_json(parse: Callable[[bytearray], _T], raw: bytearray) -> _T:
    try:
        return parse(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON ({exc.msg}); send a JSON object with Content-Type: application/json.",
            code="invalid_json",
        ) from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object ({{...}}), not {_json_kind(body)}.", code="invalid_json"
        )
    return body


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null"
    )


# -- multipart ----------------------------------------------------------------------------------


def _part_label(key: str, index: int) -> str:
    if key == "mask":
        return "mask"
    return "image" if key == "image" and index == 0 else f"image[{index}]"


class _EditFormParser(MultiPartParser):
    """Starlette's multipart parser with the edit's limits checked as each part arrives.

    Starlette limits file *count* and text-field size but not a file's size, and its
    limit errors are bare strings; here each limit is a 4xx naming the part, raised
    from the callback while the part streams in (before it reaches the spool file).
    """

    def __init__(self, headers: Headers, stream: AsyncGenerator[bytes, None], max_image_bytes: int) -> None:
        super().__init__(
            headers, stream, max_files=float("inf"), max_fields=float("inf"), max_part_size=MAX_FIELD_BYTES + 1
        )
        self.max_image_bytes = max_image_bytes
        self._images = 0
        self._masks = 0
        self._label = ""
        self._part_bytes = 0

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        self._part_bytes = 0
        key = self._current_part.field_name
        if self._current_part.file is None:
            if self._current_fields > MAX_FIELDS:
                raise InvalidRequest(
                    f"The form has more than {MAX_FIELDS} fields; send only the edit's parameters.",
                    code="too_many_fields",
                )
            return
        if key == "mask":
            self._masks += 1
            if self._masks > 1:
                raise InvalidRequest("Send at most one mask.", param="mask")
        elif _IMAGE_PART.match(key):
            self._images += 1
            if self._images > MAX_IMAGES:
                raise InvalidRequest(
                    f"More than {MAX_IMAGES} images were sent; an edit takes at most {MAX_IMAGES}.",
                    param="image",
                    code="too_many_images",
                )
        self._label = _part_label(key, self._images - 1) if key == "mask" or _IMAGE_PART.match(key) else key

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part_bytes += end - start
        if self._current_part.file is None:
            if self._part_bytes > MAX_FIELD_BYTES:
                name = self._current_part.field_name
                raise PayloadTooLarge(f"Field {name} is larger than {MAX_FIELD_BYTES // 1024} KB.", param=name)
        elif self._part_bytes >= self.max_image_bytes:
            raise PayloadTooLarge(
                f"{self._label} is larger than {self.max_image_bytes // (1024 * 1024)} MB; send a smaller image.",
                param=self._label,
            )
        super().on_part_data(data, start, end)


async def read_multipart_edit(
    request: Request, limit: int, max_image_bytes: int, pool: Executor
) -> tuple[dict[str, str], list[InputImage], InputImage | None]:
    """Fields as strings, images in the order sent, and the optional mask."""
    try:
        async with aclosing(_limited(request, limit)) as chunks:
            form = await _EditFormParser(request.headers, chunks, max_image_bytes).parse()
    except MultiPartException as exc:
        raise InvalidRequest(
            f"The multipart body could not be read ({exc.message}); send -F image=@file.png -F prompt=...",
            code="invalid_multipart",
        ) from None
    fields: dict[str, str] = {}
    uploads: list[_Source] = []
    mask_upload: _Source | None = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if _IMAGE_PART.match(key):
                    uploads.append(
                        (await _read_upload(value, max_image_bytes), _part_label(key, len(uploads)), value.filename)
                    )
                elif key == "mask":
                    mask_upload = (await _read_upload(value, max_image_bytes), "mask", value.filename)
                else:
                    raise InvalidRequest(
                        f"Unexpected file part {key!r}; images go in 'image' or 'image[]', the mask in 'mask'.",
                        param=key,
                        code="unknown_parameter",
                    )
            else:
                if _IMAGE_PART.match(key) or key == "mask":
                    raise InvalidRequest(
                        f'{key} must be a file upload (curl: -F "{key}=@file.png"), not a text field.',
                        param=key,
                    )
                if key in fields:
                    raise InvalidRequest(f"Parameter {key} was sent more than once.", param=key)
                fields[key] = value
    finally:
        await form.close()
    images, mask = await check_images(uploads, mask_upload, pool, max_image_bytes)
    return fields, images, mask


async def _read_upload(upload: UploadFile, max_image_bytes: int) -> bytes:
    return await upload.read(max_image_bytes + 1)  # the parser already refused anything larger


# -- the JSON edit form -----------------------------------------------------------------------


async def images_from_json(
    body: dict[str, Any], large: LargeStrings, max_image_bytes: int, pool: Executor
) -> tuple[dict[str, Any], list[InputImage], InputImage | None]:
    """The JSON edit form: ``images: [{"image_url": "data:..."}]`` and ``mask: {...}``.

    Count and sizes are checked on the base64 text before anything is decoded.
    """
    fields = {k: v for k, v in body.items() if k not in ("images", "mask", "image")}
    if "image" in body:
        raise InvalidRequest(
            'In a JSON edit, send images as "images": [{"image_url": "data:image/png;base64,..."}].',
            param="image",
        )
    raw_images = body.get("images")
    if raw_images is None:
        raise InvalidRequest(
            'Attach at least one image: "images": [{"image_url": "data:image/png;base64,..."}].',
            param="images",
            code="missing_required_parameter",
        )
    if not isinstance(raw_images, list):
        raise InvalidRequest('images must be an array of {"image_url": ...} objects.', param="images")
    if len(raw_images) > MAX_IMAGES:
        raise InvalidRequest(
            f"{len(raw_images)} images were sent; an edit takes at most {MAX_IMAGES}.",
            param="images",
            code="too_many_images",
        )
    images = [
        (_payload_of(ref, f"images[{i}]", large, max_image_bytes), f"images[{i}]", None)
        for i, ref in enumerate(raw_images)
    ]
    mask_ref = body.get("mask")
    mask = (_payload_of(mask_ref, "mask", large, max_image_bytes), "mask", None) if mask_ref is not None else None
    large.check_all_taken(body)
    return (fields, *await check_images(images, mask, pool, max_image_bytes))


def _payload_of(ref: Any, part: str, large: LargeStrings, max_image_bytes: int) -> Callable[[], bytes]:
    """A function decoding the data URL's base64 (run in the pool), after the cheap checks."""
    if not isinstance(ref, dict):
        raise InvalidRequest(f'{part} must be an object like {{"image_url": "data:image/png;base64,..."}}.', param=part)
    if "file_id" in ref:
        raise InvalidRequest(
            f"{part}: file_id references are not supported by this gateway; send the image as a data URL or upload it with multipart.",
            param=part,
        )
    url = ref.get("image_url")
    text: str | memoryview | None = large.take(url)
    if text is None:
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{part}.image_url must be a data URL string.", param=part)
        text = url
    head = text[:256] if isinstance(text, str) else bytes(text[:256]).decode("ascii", "replace")
    match = _DATA_URL.match(head)
    if not match:
        raise InvalidRequest(
            f"{part}.image_url must be a base64 data URL (data:image/png;base64,...); "
            "remote http(s) URLs are not fetched — download the image and send it inline or with multipart.",
            param=part,
        )
    payload = text[match.end() :]
    if len(payload) * 3 // 4 > max_image_bytes + 3:
        raise PayloadTooLarge(f"{part} is larger than {max_image_bytes // (1024 * 1024)} MB.", param=part)

    def decode() -> bytes:
        pad = -len(payload) % 4
        padded = (
            payload if not pad else (payload + "=" * pad if isinstance(payload, str) else bytes(payload) + b"=" * pad)
        )
        try:
            return pybase64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{part}.image_url is not valid base64.", param=part) from None

    return decode


# -- image checks -------------------------------------------------------------------------------


async def check_images(
    images: Sequence[_Source], mask: _Source | None, pool: Executor, max_image_bytes: int
) -> tuple[list[InputImage], InputImage | None]:
    """Inspect every image (cheap), then verify them all (a decode), both in ``pool``.

    No image is decoded until every one has passed its size, type and pixel checks;
    the first failure in part order is the one reported.
    """
    sources = [*images, *((mask,) if mask is not None else ())]

    def inspect(source: _Source) -> InputImage:
        data, part, filename = source
        return inspect_image(data if isinstance(data, bytes) else data(), part, filename, max_bytes=max_image_bytes)

    inspected = await _each_in_pool(pool, inspect, sources)
    await _each_in_pool(pool, verify_image, inspected)
    return inspected[: len(images)], (inspected[-1] if mask is not None else None)


async def _each_in_pool(pool: Executor, fn: Callable[[Any], _T], items: Sequence[Any]) -> list[_T]:
    if not items:
        return []
    loop = asyncio.get_running_loop()
    futures = [loop.run_in_executor(pool, partial(fn, item)) for item in items]
    try:
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        for future in futures:
            future.cancel()  # a caller who left frees the queue; running checks just finish
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]
