from __future__ import annotations

import base64
import binascii

import pytest

from imagerelay.domain.b64 import InvalidImagePayload, decode_image_b64, normalize_b64
from tests.conftest import png_bytes

PNG = png_bytes(20, 10)
CLEAN = base64.b64encode(PNG).decode()


def test_clean_string_is_returned_as_is() -> None:
    out, fmt = normalize_b64(CLEAN)
    assert out is CLEAN and fmt == "png"


@pytest.mark.parametrize(
    "given",
    [
        "data:image/png;base64," + CLEAN,
        CLEAN.rstrip("="),
        "data:image/png;base64," + CLEAN.rstrip("="),
        CLEAN + "==",
        "\n".join(CLEAN[i : i + 76] for i in range(0, len(CLEAN), 76)),
        CLEAN.replace("+", "-").replace("/", "_"),
    ],
    ids=["data-prefix", "no-padding", "prefix-no-padding", "extra-padding", "wrapped", "urlsafe"],
)
def test_repairs(given: str) -> None:
    out, fmt = normalize_b64(given)
    assert out == CLEAN and fmt == "png"
    assert base64.b64decode(out, validate=True) == PNG
    # The same payload as a view into an upstream body (the zero-copy parser's output).
    out, fmt = normalize_b64(memoryview(bytearray(given.encode())))
    assert (out.encode() if isinstance(out, str) else bytes(out)) == CLEAN.encode() and fmt == "png"


def test_clean_view_is_returned_as_is() -> None:
    view = memoryview(bytearray(b'{"b64_json":"' + CLEAN.encode() + b'"}'))[13:-2]
    out, fmt = normalize_b64(view)
    assert out is view and fmt == "png"


@pytest.mark.parametrize("junk", [b"\x01", b'"', b"\\", "é".encode()])
def test_junk_inside_a_view_is_refused(junk: bytes) -> None:
    middle = len(CLEAN) // 2
    with pytest.raises(InvalidImagePayload):
        normalize_b64(memoryview(CLEAN[:middle].encode() + junk * 3 + CLEAN[middle:].encode()))


@pytest.mark.parametrize(
    "given",
    [None, "", 5, "!!!!", base64.b64encode(b"hello world, not an image").decode(), "data:text/plain,abc", "é" * 8, "A"],
)
def test_refuses_non_images(given: object) -> None:
    with pytest.raises(InvalidImagePayload):
        normalize_b64(given)
    if isinstance(given, str):
        with pytest.raises(InvalidImagePayload):
            normalize_b64(memoryview(given.encode()))


def test_jpeg_and_webp_detected() -> None:
    import io

    from PIL import Image

    for fmt, name in (("JPEG", "jpeg"), ("WEBP", "webp")):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, fmt)
        assert normalize_b64(base64.b64encode(buf.getvalue()).decode())[1] == name


def test_decode_of_clean_payload_is_exact_and_refuses_junk() -> None:
    # Stored images are decoded with pybase64's validating (faster) path: a clean payload
    # decodes to the very bytes, in 512 KB slices or whole; junk is refused, never dropped.
    png = png_bytes(8, 8)
    clean = base64.b64encode(png)
    assert decode_image_b64(clean) == png
    assert decode_image_b64(memoryview(clean)) == png
    assert decode_image_b64(clean.decode()) == png
    with pytest.raises(binascii.Error):
        decode_image_b64(clean[:8] + b"\n" + clean[8:])
