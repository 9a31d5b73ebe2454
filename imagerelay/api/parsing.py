"""Turn raw HTTP bodies into plain values for the relay; every malformed body is a 4xx.

Multipart parsing is Starlette's (python-multipart): file parts are spooled to
temporary files, not held in memory while the body arrives.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

import orjson
import pybase64
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from imagerelay.domain.imagesniff import sniff_image
from imagerelay.domain.types import InputImage
from imagerelay.errors import ApiError, InvalidRequest, PayloadTooLarge

MAX_FILES = 17  # 16 images + a mask
MAX_FIELDS = 64
MAX_FIELD_BYTES = 256 * 1024  # a 32,000-character prompt is at most 128 KB of UTF-8
_IMAGE_PART = re.compile(r"^image(\[\d*\])?$")
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)


class ClientGone(ApiError):
    status = 499
    code = "client_disconnected"


def check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"The request body is {int(declared):,} bytes; the limit is {limit:,} bytes. "
            "Send fewer or smaller images.",
        )


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    check_length(request, limit)
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ClientGone("client disconnected") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body exceeds {limit:,} bytes.")
    if not raw.strip():
        raise InvalidRequest(
            "The request body is empty; send a JSON object such as "
            '{"model": "gpt-image-2", "prompt": "a red apple"}.',
            code="invalid_json",
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON ({exc.msg} at character {exc.pos}); "
            "send a JSON object with Content-Type: application/json.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not a {type(body).__name__}.", code="invalid_json"
        )
    return body


async def read_multipart_edit(
    request: Request, limit: int, max_image_bytes: int
) -> tuple[dict[str, str], list[InputImage], InputImage | None]:
    """Fields as strings, images in the order sent, and the optional mask."""
    check_length(request, limit)
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except MultiPartException as exc:
        raise InvalidRequest(
            f"The multipart body could not be read ({exc.message}); send -F image=@file.png -F prompt=...",
            code="invalid_multipart",
        ) from None
    except ClientDisconnect:
        raise ClientGone("client disconnected") from None
    fields: dict[str, str] = {}
    images: list[InputImage] = []
    mask: InputImage | None = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if _IMAGE_PART.match(key):
                    part = f"image[{len(images)}]" if key != "image" or images else "image"
                    images.append(await _read_upload(value, part, max_image_bytes))
                elif key == "mask":
                    if mask is not None:
                        raise InvalidRequest("Send at most one mask.", param="mask")
                    mask = await _read_upload(value, "mask", max_image_bytes)
                else:
                    raise InvalidRequest(
                        f"Unexpected file part {key!r}; images go in 'image' or 'image[]', the mask in 'mask'.",
                        param=key,
                        code="unknown_parameter",
                    )
            else:
                if _IMAGE_PART.match(key) or key == "mask":
                    raise InvalidRequest(
                        f"{key} must be a file upload (curl: -F \"{key}=@file.png\"), not a text field.",
                        param=key,
                    )
                if key in fields:
                    raise InvalidRequest(f"Parameter {key} was sent more than once.", param=key)
                fields[key] = value
    finally:
        await form.close()
    return fields, images, mask


async def _read_upload(upload: UploadFile, part: str, max_image_bytes: int) -> InputImage:
    data = await upload.read(max_image_bytes + 1)
    if len(data) > max_image_bytes:
        raise PayloadTooLarge(
            f"{part} is larger than {max_image_bytes // (1024 * 1024)} MB; send a smaller image.", param=part
        )
    return sniff_image(data, part, upload.filename)


def images_from_json(
    body: dict[str, Any], max_image_bytes: int
) -> tuple[dict[str, Any], list[InputImage], InputImage | None]:
    """The JSON edit form: ``images: [{"image_url": "data:..."}]`` and ``mask: {...}``."""
    fields = {k: v for k, v in body.items() if k not in ("images", "mask", "image")}
    if "image" in body:
        raise InvalidRequest(
            "In a JSON edit, send images as \"images\": [{\"image_url\": \"data:image/png;base64,...\"}].",
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
        raise InvalidRequest("images must be an array of {\"image_url\": ...} objects.", param="images")
    images = [_image_from_ref(ref, f"images[{i}]", max_image_bytes) for i, ref in enumerate(raw_images)]
    mask_ref = body.get("mask")
    mask = _image_from_ref(mask_ref, "mask", max_image_bytes) if mask_ref is not None else None
    return fields, images, mask


def _image_from_ref(ref: Any, part: str, max_image_bytes: int) -> InputImage:
    if not isinstance(ref, dict):
        raise InvalidRequest(f'{part} must be an object like {{"image_url": "data:image/png;base64,..."}}.', param=part)
    if "file_id" in ref:
        raise InvalidRequest(
            f"{part}: file_id references are not supported by this gateway; send the image as a data URL or upload it with multipart.",
            param=part,
        )
    url = ref.get("image_url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{part}.image_url must be a data URL string.", param=part)
    match = _DATA_URL.match(url)
    if not match:
        raise InvalidRequest(
            f"{part}.image_url must be a base64 data URL (data:image/png;base64,...); "
            "remote http(s) URLs are not fetched — download the image and send it inline or with multipart.",
            param=part,
        )
    payload = url[match.end():]
    if len(payload) * 3 // 4 > max_image_bytes + 3:
        raise PayloadTooLarge(f"{part} is larger than {max_image_bytes // (1024 * 1024)} MB.", param=part)
    try:
        pad = -len(payload) % 4
        data = pybase64.b64decode(payload + "=" * pad if pad else payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{part}.image_url is not valid base64.", param=part) from None
    return sniff_image(data, part, None)
