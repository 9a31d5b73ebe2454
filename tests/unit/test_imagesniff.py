"""Upload sniffing (imagerelay.domain.imagesniff): the type comes from the bytes, the
image is proven complete by decoding it, and every problem names the part."""

from __future__ import annotations

import dataclasses
import functools
import io
import random

import pytest
from PIL import Image, ImageFile

from imagerelay.domain.imagesniff import DEFAULT_MAX_BYTES, MAX_PIXELS, describe_bytes, sniff_image
from imagerelay.domain.types import InputImage
from imagerelay.errors import InvalidRequest, PayloadTooLarge

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def encode(
    fmt: str,
    mode: str = "RGB",
    size: tuple[int, int] = (40, 30),
    *,
    noise: bool = False,
    color: int | tuple[int, ...] = 0,
    **save: object,
) -> bytes:
    """An image made in memory; ``noise`` makes the compressed data big enough to cut."""
    if noise:
        rng = random.Random(7)
        img = Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
        img = img.convert(mode)
    else:
        img = Image.new(mode, size, color)  # type: ignore[arg-type]
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def rejected(data: bytes, part: str = "image[1]", **kw: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        sniff_image(data, part, None, **kw)  # type: ignore[arg-type]
    assert info.value.param == part and info.value.status == 400
    return info.value


# -- accepted images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode", "save", "color", "mime", "alpha"),
    [
        ("PNG", "RGB", {}, 0, "image/png", False),
        ("PNG", "RGBA", {}, (1, 2, 3, 0), "image/png", True),
        ("PNG", "RGBA", {}, (1, 2, 3, 255), "image/png", True),  # an alpha channel, even if opaque
        ("PNG", "LA", {}, (5, 0), "image/png", True),
        ("PNG", "L", {}, 0, "image/png", False),
        ("PNG", "1", {}, 0, "image/png", False),
        ("PNG", "P", {}, 0, "image/png", False),
        ("PNG", "P", {"transparency": 0}, 0, "image/png", True),  # palette + tRNS
        ("PNG", "RGB", {"transparency": (0, 0, 0)}, 0, "image/png", True),  # RGB + tRNS colour key
        ("PNG", "I;16", {}, 0, "image/png", False),
        ("JPEG", "RGB", {}, 0, "image/jpeg", False),
        ("JPEG", "L", {}, 0, "image/jpeg", False),
        ("JPEG", "CMYK", {}, 0, "image/jpeg", False),
        ("JPEG", "RGB", {"progressive": True}, 0, "image/jpeg", False),
        ("WEBP", "RGB", {}, 0, "image/webp", False),
        ("WEBP", "RGBA", {}, (1, 2, 3, 0), "image/webp", True),
        ("WEBP", "RGBA", {"lossless": True}, (1, 2, 3, 100), "image/webp", True),
        ("WEBP", "RGB", {"lossless": True}, 0, "image/webp", False),
    ],
)
def test_accepted_formats(fmt: str, mode: str, save: dict[str, object], color: object, mime: str, alpha: bool) -> None:
    data = encode(fmt, mode, color=color, **save)  # type: ignore[arg-type]
    img = sniff_image(data, "image[2]", "photo.bin")
    assert isinstance(img, InputImage)
    assert (img.mime, img.width, img.height, img.has_alpha, img.part, img.filename) == (
        mime,
        40,
        30,
        alpha,
        "image[2]",
        "photo.bin",
    )
    assert img.data is data


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("size", [(1, 1), (1000, 3), (3, 1000), (1536, 1024)])
def test_dimensions_come_from_the_image(fmt: str, size: tuple[int, int]) -> None:
    img = sniff_image(encode(fmt, size=size), "image", None)
    assert (img.width, img.height) == size


@pytest.mark.parametrize(
    ("fmt", "filename", "mime"),
    [
        ("JPEG", "picture.png", "image/jpeg"),
        ("PNG", "photo.gif", "image/png"),
        ("WEBP", "image.jpg", "image/webp"),
        ("PNG", "no-extension", "image/png"),
    ],
)
def test_the_filename_never_decides_the_type(fmt: str, filename: str, mime: str) -> None:
    img = sniff_image(encode(fmt), "image", filename)
    assert img.mime == mime and img.filename == filename


@pytest.mark.parametrize(
    ("fmt", "part", "filename"),
    [
        ("PNG", "image", "image.png"),
        ("JPEG", "image[3]", "image_3.jpeg"),
        ("WEBP", "images[0].image_url", "images_0_image_url.webp"),
        ("PNG", "mask", "mask.png"),
    ],
)
def test_default_filename_follows_the_part_and_real_format(fmt: str, part: str, filename: str) -> None:
    assert sniff_image(encode(fmt), part, None).filename == filename


def test_animated_images_are_accepted_with_the_first_frame_size() -> None:
    frames = [Image.new("RGB", (50, 40), (i * 40, 0, 0)) for i in range(3)]
    for fmt, mime in (("PNG", "image/png"), ("WEBP", "image/webp")):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
        img = sniff_image(buf.getvalue(), "image", None)
        assert (img.mime, img.width, img.height) == (mime, 50, 40)


def test_result_is_immutable() -> None:
    img = sniff_image(encode("PNG"), "image", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        img.width = 5  # type: ignore[misc]


# -- other formats are rejected, naming the part and what was found ---------------------------------


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (encode("GIF"), "gif"),
        (b"GIF87a" + b"\0" * 50, "gif"),
        (encode("BMP"), "bmp"),
        (encode("TIFF"), "tiff"),
        (b"MM\x00*" + b"\0" * 50, "tiff"),
        (encode("ICO", "RGBA", (32, 32)), "ico"),
        (b"%PDF-1.7\n" + b"\0" * 50, "pdf"),
        (b"8BPS\x00\x01" + b"\0" * 50, "psd"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "heif"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "avif"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "video/iso-media"),
        (b"\xff\x0a\xfa\x7f", "jxl"),
        (b"PK\x03\x04" + b"\0" * 50, "zip"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "riff/wave"),
        (b"RIFF\x24\x00\x00", "riff, truncated"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "svg/xml"),
        (b'<?xml version="1.0"?><svg/>', "svg/xml"),
        (b'<?xml version="1.0"?><note/>', "xml"),
        (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "html"),
        (b'  {"error": "not an image"}', "json"),
        (b"hello world", "unknown"),
        (b"\xff\xd8", "unknown"),  # too short to be a JPEG
        (bytes(range(256)), "unknown"),
    ],
)
def test_other_formats_are_rejected_naming_the_part(data: bytes, detected: str) -> None:
    error = rejected(data, "image[1]")
    assert error.message == (
        f"image[1] is not a PNG, JPEG or WebP image (detected: {detected}); upload one of those formats."
    )
    assert error.code == "invalid_image_format"
    assert describe_bytes(data) == detected


def test_a_gif_named_png_is_still_a_gif() -> None:
    with pytest.raises(InvalidRequest, match=r"detected: gif"):
        sniff_image(encode("GIF"), "image", "cat.png")


# -- truncated and corrupt files --------------------------------------------------------------------


@functools.cache
def noisy(fmt: str) -> bytes:
    return encode(fmt, size=(200, 150), noise=True)


def _cuts(length: int) -> list[int]:
    # From just past the signature (12 bytes covers RIFF....WEBP) to just before the end.
    return [12, 16, 40, length // 3, length // 2, length - 100, length - 12]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("which", range(7))
def test_truncated_images_are_rejected(fmt: str, which: int) -> None:
    data = noisy(fmt)
    cut = _cuts(len(data))[which]
    error = rejected(data[:cut], "image[0]")
    assert error.message == (
        f"image[0] could not be decoded as a {fmt} image (truncated or corrupt); upload the complete file."
    )
    assert error.code == "invalid_image"


def test_png_without_iend_is_rejected_even_if_pillow_is_told_to_load_truncated_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = noisy("PNG")
    rejected(data[: len(data) // 2])
    rejected(data[:-12])


def test_png_with_a_corrupt_chunk_is_rejected() -> None:
    data = bytearray(noisy("PNG"))
    data[200] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    rejected(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        PNG_MAGIC,
        PNG_MAGIC + b"garbage" * 10,
        b"\xff\xd8\xff" + b"garbage" * 10,
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"garbage" * 10,
    ],
)
def test_right_magic_wrong_content_is_rejected(data: bytes) -> None:
    assert "could not be decoded" in rejected(data).message


# -- empty, too large, too many pixels ---------------------------------------------------------------


@pytest.mark.parametrize("part", ["image", "image[4]", "mask", "images[0].image_url"])
def test_empty_upload_is_a_400_naming_the_part(part: str) -> None:
    error = rejected(b"", part)
    assert error.message.startswith(f"{part} is empty") and error.status == 400


def test_size_limit_is_exclusive() -> None:
    data = encode("PNG")
    assert sniff_image(data, "image", None, max_bytes=len(data) + 1).width == 40
    with pytest.raises(PayloadTooLarge) as info:
        sniff_image(data, "image[7]", None, max_bytes=len(data))
    assert info.value.status == 413 and info.value.param == "image[7]" and info.value.code == "payload_too_large"
    assert "smaller than" in info.value.message


def test_size_is_checked_before_the_content() -> None:
    with pytest.raises(PayloadTooLarge):
        sniff_image(b"not an image at all", "mask", None, max_bytes=5)


def test_default_limit_is_50_mb() -> None:
    assert DEFAULT_MAX_BYTES == 50 * 1024 * 1024
    with pytest.raises(PayloadTooLarge, match="smaller than 50 MB"):
        sniff_image(PNG_MAGIC + bytes(DEFAULT_MAX_BYTES), "image", None)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        ((9000, 9000), "image is 9000x9000 (81,000,000 pixels)"),  # over our limit, under Pillow's warning
        ((10000, 10000), "image is 10000x10000 (100,000,000 pixels)"),  # in Pillow's warning range
        ((20000, 20000), "image has too many pixels"),  # Pillow refuses to open it at all
    ],
)
def test_pixel_bombs_are_refused_before_decoding(size: tuple[int, int], text: str) -> None:
    data = encode("PNG", "1", size)  # a few KB that would decode to hundreds of MB
    error = rejected(data, "image")
    assert text in error.message and f"{MAX_PIXELS:,}" in error.message


# -- completeness from the file's own framing (no full decode) ---------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_framing_says_complete_only_for_whole_files(fmt: str) -> None:
    from imagerelay.domain.imagesniff import _visibly_complete

    data = noisy(fmt)
    name = fmt.lower()
    assert _visibly_complete(data, name)
    for cut in _cuts(len(data)):
        assert not _visibly_complete(data[:cut], name), cut


def test_jpeg_framing_edge_cases() -> None:
    from imagerelay.domain.imagesniff import _visibly_complete

    data = noisy("JPEG")
    assert _visibly_complete(data + b"\x00" * 7, "jpeg")  # zero padding after EOI
    assert not _visibly_complete(data + b"trailer", "jpeg")  # undecided: the full decode runs


def test_jpeg_with_a_trailer_after_eoi_is_still_accepted() -> None:
    image = sniff_image(noisy("JPEG") + b"vendor trailer", "image[0]", None)
    assert (image.width, image.height) == (200, 150)


# -- merged from test_upload_sniffing.py: Upload sniffing: the type comes from the bytes, every
# problem names the part.


@pytest.mark.parametrize(
    ("fmt", "mode", "mime", "alpha"),
    [
        ("PNG", "RGB", "image/png", False),
        ("PNG", "RGBA", "image/png", True),
        ("PNG", "LA", "image/png", True),
        ("PNG", "P", "image/png", False),
        ("JPEG", "RGB", "image/jpeg", False),
        ("WEBP", "RGB", "image/webp", False),
        ("WEBP", "RGBA", "image/webp", True),
    ],
)
def test_accepted_formats_and_modes(fmt: str, mode: str, mime: str, alpha: bool) -> None:
    img = sniff_image(encode(fmt, mode), "image[2]", "photo.bin")
    assert (img.mime, img.width, img.height, img.has_alpha, img.part) == (mime, 40, 30, alpha, "image[2]")


def test_name_and_declared_type_are_ignored() -> None:
    assert sniff_image(encode("JPEG"), "image", "picture.png").mime == "image/jpeg"


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (b"GIF89a" + b"\0" * 50, "gif"),
        (b"BM" + b"\0" * 50, "bmp"),
        (b"%PDF-1.7" + b"\0" * 50, "pdf"),
        (b"hello world", "unknown"),
        (encode("GIF"), "gif"),
        (encode("TIFF"), "tiff"),
    ],
)
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
