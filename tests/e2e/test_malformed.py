"""No malformed body ever gets a 500: each gets a clear 4xx in the official shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import png_bytes
from tests.support.gateway import Gateway

GEN = "/images/generations"
EDIT = "/images/edits"


def assert_official_error(resp: httpx.Response, status: int | None = None, param: str | None = "ANY") -> dict[str, Any]:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    if status is not None:
        assert resp.status_code == status, resp.text[:300]
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 15
    if param != "ANY":
        assert err["param"] == param, err
    assert resp.headers.get("x-request-id", "").startswith("req_")
    return err


def auth(gateway: Gateway, group: str = "Sora2Official") -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.tokens[group]}"}


JSON_CASES: list[tuple[str, bytes, int, str | None]] = [
    ("not json", b"{model: gpt-image-2", 400, None),
    ("empty body", b"", 400, None),
    ("array body", b"[1, 2]", 400, None),
    ("string body", b'"hello"', 400, None),
    ("missing prompt", b'{"model": "gpt-image-2"}', 400, "prompt"),
    ("prompt not a string", b'{"model": "gpt-image-2", "prompt": 5}', 400, "prompt"),
    ("empty prompt", b'{"model": "gpt-image-2", "prompt": ""}', 400, "prompt"),
    ("model not a string", b'{"model": ["gpt-image-2"], "prompt": "x"}', 400, "model"),
    ("missing model", b'{"prompt": "x"}', 400, "model"),
    ("n as string", b'{"model": "gpt-image-2", "prompt": "x", "n": "2"}', 400, "n"),
    ("n as bool", b'{"model": "gpt-image-2", "prompt": "x", "n": true}', 400, "n"),
    ("n too big", b'{"model": "gpt-image-2", "prompt": "x", "n": 11}', 400, "n"),
    ("n float", b'{"model": "gpt-image-2", "prompt": "x", "n": 1.5}', 400, "n"),
    ("size object", b'{"model": "gpt-image-2", "prompt": "x", "size": {"w": 1}}', 400, "size"),
    ("size junk", b'{"model": "gpt-image-2", "prompt": "x", "size": "big"}', 400, "size"),
    ("size not /16", b'{"model": "gpt-image-2", "prompt": "x", "size": "1792x936"}', 400, "size"),
    ("quality bad", b'{"model": "gpt-image-2", "prompt": "x", "quality": "ultra"}', 400, "quality"),
    (
        "transparent jpeg",
        b'{"model": "gpt-image-2", "prompt": "x", "background": "transparent", "output_format": "jpeg"}',
        400,
        "background",
    ),
    (
        "compression range",
        b'{"model": "gpt-image-2", "prompt": "x", "output_format": "jpeg", "output_compression": 101}',
        400,
        "output_compression",
    ),
    (
        "partial_images range",
        b'{"model": "gpt-image-2", "prompt": "x", "stream": true, "partial_images": 4}',
        400,
        "partial_images",
    ),
    ("moderation bad", b'{"model": "gpt-image-2", "prompt": "x", "moderation": "none"}', 400, "moderation"),
    ("unknown param", b'{"model": "gpt-image-2", "prompt": "x", "colour": "red"}', 400, "colour"),
    (
        "response_format bad",
        b'{"model": "gpt-image-2", "prompt": "x", "response_format": "gif"}',
        400,
        "response_format",
    ),
    ("input_fidelity", b'{"model": "gpt-image-2", "prompt": "x", "input_fidelity": "high"}', 400, "input_fidelity"),
    ("deep nesting", b'{"model": "gpt-image-2", "prompt": "x", "user": ' + b"[" * 500 + b"]" * 500 + b"}", 400, None),
]


@pytest.mark.parametrize(("name", "raw", "status", "param"), JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_malformed_generation(gateway: Gateway, name: str, raw: bytes, status: int, param: str | None) -> None:
    resp = httpx.post(gateway.v1 + GEN, content=raw, headers={**auth(gateway), "Content-Type": "application/json"})
    err = assert_official_error(resp, status)
    if param is not None:
        assert err["param"] == param


def test_huge_prompt(gateway: Gateway) -> None:
    resp = httpx.post(gateway.v1 + GEN, json={"model": "gpt-image-2", "prompt": "x" * 40_000}, headers=auth(gateway))
    err = assert_official_error(resp, 400, "prompt")
    assert "32000" in err["message"].replace(",", "")


def test_huge_body_declared(gateway: Gateway) -> None:
    resp = httpx.post(
        gateway.v1 + GEN,
        content=b"{" + b" " * (70 * 1024 * 1024) + b"}",
        headers={**auth(gateway), "Content-Type": "application/json"},
    )
    assert_official_error(resp, 413)


def test_empty_multipart(gateway: Gateway) -> None:
    resp = httpx.post(
        gateway.v1 + EDIT,
        content=b"--xyz--\r\n",
        headers={**auth(gateway), "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert_official_error(resp)


def test_broken_multipart(gateway: Gateway) -> None:
    resp = httpx.post(
        gateway.v1 + EDIT,
        content=b"garbage without boundary",
        headers={**auth(gateway), "Content-Type": "multipart/form-data"},
    )
    assert_official_error(resp)


def test_edit_without_image(gateway: Gateway) -> None:
    resp = httpx.post(
        gateway.v1 + EDIT,
        data={"model": "gpt-image-2", "prompt": "x"},
        files={"unused": ("", b"")},
        headers=auth(gateway),
    )
    assert_official_error(resp)


def test_edit_truncated_png(gateway: Gateway) -> None:
    data = png_bytes(300, 300)
    resp = httpx.post(
        gateway.v1 + EDIT,
        data={"model": "gpt-image-2", "prompt": "x"},
        files=[
            ("image[]", ("a.png", png_bytes(), "image/png")),
            ("image[]", ("b.png", data[: len(data) // 2], "image/png")),
        ],
        headers=auth(gateway),
    )
    err = assert_official_error(resp, 400)
    assert err["param"] == "image[1]"


def test_edit_gif_named_png(gateway: Gateway) -> None:
    resp = httpx.post(
        gateway.v1 + EDIT,
        data={"model": "gpt-image-2", "prompt": "x"},
        files=[("image", ("a.png", b"GIF89a" + b"\x00" * 100, "image/png"))],
        headers=auth(gateway),
    )
    err = assert_official_error(resp, 400, "image")
    assert "PNG" in err["message"]


def test_edit_too_many_images(gateway: Gateway) -> None:
    files = [("image[]", (f"{i}.png", png_bytes(64, 64), "image/png")) for i in range(17)]
    resp = httpx.post(
        gateway.v1 + EDIT, data={"model": "gpt-image-2", "prompt": "x"}, files=files, headers=auth(gateway)
    )
    assert_official_error(resp, 400)


def test_edit_mask_mismatch(gateway: Gateway) -> None:
    resp = httpx.post(
        gateway.v1 + EDIT,
        data={"model": "gpt-image-2", "prompt": "x"},
        files=[
            ("image", ("a.png", png_bytes(256, 256), "image/png")),
            ("mask", ("m.png", png_bytes(128, 128, (0, 0, 0, 0), "RGBA"), "image/png")),
        ],
        headers=auth(gateway),
    )
    err = assert_official_error(resp, 400, "mask")
    assert "256x256" in err["message"]


def test_edit_json_form_data_url(gateway: Gateway) -> None:
    import base64

    url = "data:image/png;base64," + base64.b64encode(png_bytes(320, 200)).decode()
    resp = httpx.post(
        gateway.v1 + EDIT,
        json={"model": "gpt-image-2", "prompt": "x", "images": [{"image_url": url}]},
        headers=auth(gateway),
        timeout=60,
    )
    assert resp.status_code == 200, resp.text[:300]
    bad = httpx.post(
        gateway.v1 + EDIT,
        json={"model": "gpt-image-2", "prompt": "x", "images": [{"image_url": "https://example.com/a.png"}]},
        headers=auth(gateway),
    )
    assert_official_error(bad, 400, "images[0]")
    garbled = httpx.post(
        gateway.v1 + EDIT,
        json={"model": "gpt-image-2", "prompt": "x", "images": [{"image_url": "data:image/png;base64,@@@"}]},
        headers=auth(gateway),
    )
    assert_official_error(garbled, 400, "images[0]")


def test_edit_wrong_content_type(gateway: Gateway) -> None:
    resp = httpx.post(gateway.v1 + EDIT, content=b"abc", headers={**auth(gateway), "Content-Type": "text/plain"})
    assert_official_error(resp, 400)


def test_missing_and_bad_auth(gateway: Gateway) -> None:
    assert_official_error(httpx.post(gateway.v1 + GEN, json={"model": "gpt-image-2", "prompt": "x"}), 401)
    assert_official_error(httpx.post(gateway.v1 + GEN, json={}, headers={"Authorization": "Basic abc"}), 401)


def test_unknown_path_and_method(gateway: Gateway) -> None:
    assert_official_error(httpx.get(gateway.v1 + "/images/nope", headers=auth(gateway)), 404)
    assert_official_error(httpx.get(gateway.v1 + GEN, headers=auth(gateway)), 405)


def test_no_traceback_in_log(gateway: Gateway) -> None:
    # Runs after the cases above in this module (pytest keeps file order).
    text = gateway.log_text()
    assert "Traceback" not in text
    assert "Exception in ASGI" not in text
