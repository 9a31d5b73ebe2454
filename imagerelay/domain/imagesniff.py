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
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from imagerelay.domain.b64 import sniff_format
from imagerelay.domain.types import InputImage
from imagerelay.errors import InvalidRequest, PayloadTooLarge

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_FORMAT_OF_MIME = {mime: fmt for fmt, mime in MIME.items()}
# Uploads must be strictly smaller than this (the official limit is "< 50 MB" per image).
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Decoding is how we prove an upload is not truncated; refuse pixel bombs before decoding,
# from the dimensions the header declares. Pillow's own bomb check (an error at twice its
# limit) backs ours up for any other code path that opens an image.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
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
    b"heic": "heic",
    b"heix": "heic",
    b"hevc": "heic",
    b"heim": "heic",
    b"heis": "heic",
    b"mif1": "heif",
    b"msf1": "heif",
    b"avif": "avif",
    b"avis": "avif",
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

    :func:`inspect_image` then :func:`verify_image`; the HTTP edge calls the two apart so
    that every image of a call passes the cheap checks before any of them is decoded.
    """
    image = inspect_image(data, part, filename, max_bytes=max_bytes)
    verify_image(image)
    return image


def inspect_image(data: bytes, part: str, filename: str | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> InputImage:
    """The cheap checks: size, type and the dimensions the file's header declares.

    - empty -> 400; ``len(data) >= max_bytes`` -> 413 (the limit is exclusive);
    - not PNG/JPEG/WebP by magic bytes -> 400 naming what it looks like;
    - header unreadable or declaring more than ``MAX_PIXELS`` -> 400.
    Only the header is parsed (Pillow's ``open`` is lazy), so this costs microseconds
    whatever the image's size. ``has_alpha`` is true for modes with an alpha channel and
    for PNG/palette ``tRNS`` transparency (which precedes the pixel data), which is what
    an edit mask needs.
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
            f"{part} is not a PNG, JPEG or WebP image (detected: {describe_bytes(data)}); upload one of those formats.",
            param=part,
            code="invalid_image_format",
        )
    with _hostile_input(part, fmt), warnings.catch_warnings():
        # Our own, lower pixel limit applies below; Pillow's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]]) as img:
            width, height = img.size
            has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if width * height > MAX_PIXELS:
        raise InvalidRequest(
            f"{part} is {width}x{height} ({width * height:,} pixels); images may have at most "
            f"{MAX_PIXELS:,} pixels. Downscale it.",
            param=part,
        )
    name = filename or f"{part.replace('[', '_').replace(']', '').replace('.', '_')}.{fmt}"
    return InputImage(
        data=data, mime=MIME[fmt], width=width, height=height, part=part, filename=name, has_alpha=has_alpha
    )


def verify_image(image: InputImage) -> None:
    """Prove an inspected image is complete; raises a 400 naming its part if not.

    This is the expensive half (up to a full entropy decode of 50 MB), so the HTTP edge
    runs it in a worker thread, never on the event loop. PNG: every chunk's CRC up to
    IEND, without inflating the pixels (catches a cut-off or corrupted file even if some
    other code has set ``ImageFile.LOAD_TRUNCATED_IMAGES`` globally). JPEG/WebP: their own
    framing when it is conclusive (:func:`_visibly_complete`), else a decode; a JPEG is
    decoded in draft mode (libjpeg's 1/8 DCT scaling), which still reads every byte of
    the entropy-coded data, so truncation shows, but needs 1/64 of the pixel memory.
    """
    fmt = _FORMAT_OF_MIME[image.mime]
    data = image.data
    if fmt in ("jpeg", "webp") and _visibly_complete(data, fmt):
        return
    with _hostile_input(image.part, fmt), Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]]) as img:
        if fmt == "png":
            img.verify()
            return
        if fmt == "jpeg":
            img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()


@contextmanager
def _hostile_input(part: str, fmt: str) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile input into a 400 naming ``part``."""
    try:
        yield
    except (InvalidRequest, MemoryError):
        raise
    except Image.DecompressionBombError:
        raise InvalidRequest(
            f"{part} has too many pixels; images may have at most {MAX_PIXELS:,} pixels. Downscale it.",
            param=part,
        ) from None
    except Exception:  # Pillow raises many types on hostile input; all mean "not a usable image"
        raise InvalidRequest(
            f"{part} could not be decoded as a {fmt.upper()} image (truncated or corrupt); upload the complete file.",
            param=part,
            code="invalid_image",
        ) from None


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
        return data[end - 2 : end] == b"\xff\xd9"
    if fmt == "webp":
        return len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 in (len(data), len(data) - 1)
    return False


def _human(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    return f"{n:,} bytes"
