"""Upload sniffing: the type comes from the bytes, every problem names the part."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imagerelay.domain.imagesniff import sniff_image
from imagerelay.errors import InvalidRequest, PayloadTooLarge


def encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "mode", "mime", "alpha"), [
    ("PNG", "RGB", "image/png", False), ("PNG", "RGBA", "image/png", True), ("PNG", "LA", "image/png", True),
    ("PNG", "P", "image/png", False), ("JPEG", "RGB", "image/jpeg", False), ("WEBP", "RGB", "image/webp", False),
    ("WEBP", "RGBA", "image/webp", True),
])
def test_accepted_formats(fmt: str, mode: str, mime: str, alpha: bool) -> None:
    img = sniff_image(encode(fmt, mode), "image[2]", "photo.bin")
    assert (img.mime, img.width, img.height, img.has_alpha, img.part) == (mime, 40, 30, alpha, "image[2]")


def test_name_and_declared_type_are_ignored() -> None:
    assert sniff_image(encode("JPEG"), "image", "picture.png").mime == "image/jpeg"


@pytest.mark.parametrize(("data", "detected"), [
    (b"GIF89a" + b"\0" * 50, "gif"), (b"BM" + b"\0" * 50, "bmp"), (b"%PDF-1.7" + b"\0" * 50, "pdf"),
    (b"hello world", "unknown"), (encode("GIF"), "gif"), (encode("TIFF"), "tiff"),
])
def test_other_formats_rejected_naming_the_part(data: bytes, detected: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        sniff_image(data, "image[1]", None)
    assert info.value.param == "image[1]"
    assert f"image[1] is not a PNG, JPEG or WebP image (detected: {detected})" in info.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_images_rejected(fmt: str) -> None:
    data = encode(fmt, size=(300, 300))
    with pytest.raises(InvalidRequest) as info:
        sniff_image(data[: len(data) // 2], "image[0]", None)
    assert info.value.param == "image[0]" and "truncated" in info.value.message


def test_empty_and_too_large() -> None:
    with pytest.raises(InvalidRequest) as info:
        sniff_image(b"", "mask", None)
    assert info.value.param == "mask"
    with pytest.raises(PayloadTooLarge) as big:
        sniff_image(encode("PNG"), "image", None, max_bytes=10)
    assert big.value.status == 413 and big.value.param == "image"


def test_pixel_bomb_refused() -> None:
    # A tiny PNG that claims to be 20000x20000 pixels.
    data = encode("PNG", "1", (20000, 20000))
    with pytest.raises(InvalidRequest) as info:
        sniff_image(data, "image", None)
    assert info.value.param == "image"
