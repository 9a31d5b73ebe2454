"""Identify an uploaded image from its bytes (never from its name or declared type).

Clients routinely upload a JPEG called ``photo.png``, or a file whose part says
``application/octet-stream``; upstreams reject a declared type that does not match the
bytes, and a truncated file wastes a paid call. So the magic bytes decide the type, the
file's own framing proves it is complete (PNG chunk CRCs up to IEND, JPEG's end marker,
WebP's RIFF length; a full decode where those are not conclusive), and every problem is a 4xx that
names the multipart part (``image[1]``, ``mask``) so the caller knows which file to fix.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from imagerelay.domain.b64 import sniff_format
from imagerelay.domain.types import InputImage
from imagerelay.errors import InvalidRequest, PayloadTooLarge

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# Uploads must be strictly smaller than this (the official limit is "< 50 MB" per image).
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Decoding is how we prove an upload is not truncated; refuse pixel bombs before decoding.
MAX_PIXELS = 64_000_000
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# Formats we recognise only to name them in the error message.
_OTHER_MAGIC = (
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
    (b"%PDF", "pdf"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"8BPS", "psd"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"\xff\x0a", "jxl"),
    (b"\x00\x00\x00\x0cJXL ", "jxl"),
    (b"PK\x03\x04", "zip"),
)
_FTYP_BRANDS = {
    b"heic": "heic", b"heix": "heic", b"hevc": "heic", b"heim": "heic", b"heis": "heic",
    b"mif1": "heif", b"msf1": "heif", b"avif": "avif", b"avis": "avif",
}


def describe_bytes(data: bytes) -> str:
    """A short name for what ``data`` looks like, for error messages only ("gif", "heic", "html"...)."""
    if data[4:8] == b"ftyp":  # ISO media (HEIC/AVIF photos from phones, MP4)
        return _FTYP_BRANDS.get(data[8:12], "video/iso-media")
    if data.startswith(b"RIFF"):  # WebP is RIFF too, but only a complete RIFF....WEBP header passes
        kind = data[8:12].decode("ascii", "replace").strip().lower()
        return f"riff/{kind}" if len(data) >= 12 else "riff, truncated"
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return name
    text = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")):
        return "svg/xml" if b"<svg" in data[:4096].lower() else "xml"
    if text.startswith((b"<!doctype html", b"<html")):
        return "html"
    if text.startswith((b"{", b"[")):
        return "json"
    return "unknown"


def sniff_image(data: bytes, part: str, filename: str | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> InputImage:
    """Validate one upload and describe it; raises a 4xx naming ``part`` on any problem.

    - empty -> 400; ``len(data) >= max_bytes`` -> 413 (the limit is exclusive);
    - not PNG/JPEG/WebP by magic bytes -> 400 naming what it looks like;
    - header or pixel data unreadable (truncated, corrupt, too many pixels) -> 400.
    ``has_alpha`` is true for modes with an alpha channel and for PNG/palette ``tRNS``
    transparency, which is what an edit mask needs.
    """
    if not data:
        raise InvalidRequest(f"{part} is empty (0 bytes); attach a PNG, JPEG or WebP file.", param=part)
    if len(data) >= max_bytes:
        raise PayloadTooLarge(
            f"{part} is {len(data):,} bytes; each image must be smaller than {_human(max_bytes)}. "
            "Send a smaller or more compressed image.",
            param=part,
        )
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise InvalidRequest(
            f"{part} is not a PNG, JPEG or WebP image (detected: {describe_bytes(data)}); "
            "upload one of those formats.",
            param=part,
            code="invalid_image_format",
        )
    try:
        width, height, has_alpha = _decode(data, fmt, part)
    except InvalidRequest:
        raise
    except MemoryError:
        raise
    except Exception:  # Pillow raises many types on hostile input; all mean "not a usable image"
        raise InvalidRequest(
            f"{part} could not be decoded as a {fmt.upper()} image (truncated or corrupt); "
            "upload the complete file.",
            param=part,
            code="invalid_image",
        ) from None
    name = filename or f"{part.replace('[', '_').replace(']', '').replace('.', '_')}.{fmt}"
    return InputImage(
        data=data, mime=MIME[fmt], width=width, height=height, part=part, filename=name, has_alpha=has_alpha
    )


def _decode(data: bytes, fmt: str, part: str) -> tuple[int, int, bool]:
    """(width, height, has_alpha) after a full decode with only ``fmt``'s decoder."""
    formats = [_PIL_FORMAT[fmt]]
    with warnings.catch_warnings():
        # We apply our own, lower pixel limit below; Pillow's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=formats)
        except Image.DecompressionBombError:
            raise InvalidRequest(
                f"{part} has too many pixels; images may have at most {MAX_PIXELS:,} pixels. Downscale it.",
                param=part,
            ) from None
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise InvalidRequest(
                    f"{part} is {width}x{height} ({width * height:,} pixels); images may have at most "
                    f"{MAX_PIXELS:,} pixels. Downscale it.",
                    param=part,
                )
            if fmt == "png":
                # verify() checks every chunk's CRC up to IEND: it catches a cut-off or
                # corrupted file even if some other code has set ImageFile.LOAD_TRUNCATED_IMAGES
                # globally, without inflating the pixels.
                with Image.open(io.BytesIO(data), formats=formats) as check:
                    check.verify()
            elif not _visibly_complete(data, fmt):
                img.load()  # no end marker where one belongs: decode to tell truncated from odd
            has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    return width, height, has_alpha


def _visibly_complete(data: bytes, fmt: str) -> bool:
    """Whether a JPEG or WebP file's own framing says it is whole, without decoding it.

    Decoding four 10 MB uploads just to prove they are complete took longer than the
    rest of an edit call. A JPEG ends with the EOI marker (``FF D9``; inside the
    compressed data ``FF`` is always escaped, so a cut-off file cannot end with it by
    chance); a WebP file's RIFF header states its length. Anything else - trailing
    bytes after EOI, an odd RIFF size - takes the full decode. Damage *inside* a
    complete file is left to the upstream, which refuses it with a 400 that costs
    the caller nothing.
    """
    if fmt == "jpeg":
        end = len(data)
        while end > 2 and data[end - 1] == 0:  # some encoders pad with zeros
            end -= 1
        return data[end - 2:end] == b"\xff\xd9"
    if fmt == "webp":
        return len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 in (len(data), len(data) - 1)
    return False


def _human(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    return f"{n:,} bytes"
