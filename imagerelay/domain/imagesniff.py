"""Identify an uploaded image from its bytes (never from its name or declared type)."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from imagerelay.domain.b64 import sniff_format
from imagerelay.domain.types import InputImage
from imagerelay.errors import InvalidRequest, PayloadTooLarge

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Decoding is how we prove an upload is not truncated; refuse pixel bombs first.
MAX_PIXELS = 64_000_000

_OTHER_MAGIC = {b"GIF8": "gif", b"BM": "bmp", b"%PDF": "pdf", b"II*\x00": "tiff", b"MM\x00*": "tiff"}


def _describe(data: bytes) -> str:
    for magic, name in _OTHER_MAGIC.items():
        if data.startswith(magic):
            return name
    return "unknown"


def sniff_image(data: bytes, part: str, filename: str | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> InputImage:
    """Validate one upload; raises a 4xx naming ``part`` (e.g. ``image[1]``) on any problem."""
    if not data:
        raise InvalidRequest(f"{part} is empty; attach a PNG, JPEG or WebP file.", param=part)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{part} is {len(data):,} bytes; each image must be smaller than {max_bytes // (1024 * 1024)} MB.",
            param=part,
        )
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise InvalidRequest(
            f"{part} is not a PNG, JPEG or WebP image (detected: {_describe(data)}); upload one of those formats.",
            param=part,
            code="invalid_image_format",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise InvalidRequest(f"{part} is {width}x{height}; images may have at most {MAX_PIXELS:,} pixels.",
                                         param=part)
                img.load()  # a truncated or corrupt file fails here
                has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"{part} could not be decoded as a {fmt.upper()} image (truncated or corrupt); upload the complete file.",
            param=part,
            code="invalid_image",
        ) from None
    name = filename or f"{part.replace('[', '_').replace(']', '')}.{fmt}"
    return InputImage(data=data, mime=MIME[fmt], width=width, height=height, part=part, filename=name,
                      has_alpha=has_alpha)
