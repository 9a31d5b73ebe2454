"""The zero-copy ImagesResponse parser agrees with orjson on every shape it meets,
and hands large images back as views into the body (no second copy)."""

from __future__ import annotations

import base64
import json
import os

import orjson
import pytest

from imagerelay.domain.b64 import normalize_b64
from imagerelay.upstreams.answer import ZERO_COPY_MIN_BYTES, parse_images_answer

PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def b64_image(n: int = ZERO_COPY_MIN_BYTES) -> str:
    return base64.b64encode(PNG_HEAD + os.urandom(n)).decode()


def plain(value: object) -> object:
    """The parse result with every view turned back into a str, to compare with orjson."""
    if isinstance(value, memoryview):
        return value.tobytes().decode("ascii")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def views(body: dict) -> list[bool]:
    return [isinstance(item.get("b64_json"), memoryview) for item in body["data"]]


def test_large_image_is_a_view_into_the_body() -> None:
    image = b64_image()
    raw = bytearray(
        orjson.dumps(
            {
                "created": 7,
                "data": [{"b64_json": image, "revised_prompt": "a fox"}],
                "usage": {"total_tokens": 3},
                "size": "1024x1024",
            }
        )
    )
    body = parse_images_answer(raw)
    assert views(body) == [True]
    assert body["data"][0]["b64_json"].obj is raw  # no copy: the very buffer we read
    assert plain(body) == orjson.loads(raw)
    assert normalize_b64(body["data"][0]["b64_json"]) == (body["data"][0]["b64_json"], "png")


def test_small_answers_parse_normally() -> None:
    raw = orjson.dumps({"data": [{"b64_json": base64.b64encode(PNG_HEAD).decode()}]})
    body = parse_images_answer(raw)
    assert views(body) == [False] and body == orjson.loads(raw)


@pytest.mark.parametrize("n", [2, 4])
def test_several_images_and_pretty_printing(n: int) -> None:
    answer = {"created": 1, "data": [{"b64_json": b64_image(), "revised_prompt": f"p{i}"} for i in range(n)]}
    raw = json.dumps(answer, indent=2, separators=(" , ", " : ")).encode()
    body = parse_images_answer(raw)
    assert views(body) == [True] * n
    assert plain(body) == answer


@pytest.mark.parametrize(
    "answer",
    [
        # an escaped slash: legal JSON, so the exact (slow) path must decode it
        {"data": [{"b64_json": b64_image().replace("/", "\\/", 3)}]},
        # the key elsewhere too: only data[i].b64_json may be taken
        {"debug": {"b64_json": b64_image()}, "data": [{"b64_json": b64_image()}]},
        # text that looks like the key inside another string
        {"data": [{"revised_prompt": 'write "b64_json": "AAAA" here', "b64_json": b64_image()}]},
        {"data": [{"b64_json": None}], "padding": "x" * ZERO_COPY_MIN_BYTES},
        {"data": [{"url": "https://example.com/a.png"}], "padding": "y" * ZERO_COPY_MIN_BYTES},
        {"b64_json": b64_image(), "data": []},
        ["b64_json", {"b64_json": b64_image()}],
    ],
)
def test_agrees_with_orjson_on_unusual_shapes(answer: object) -> None:
    text = orjson.dumps(answer).decode()
    raw = text.replace("\\\\/", "\\/").encode()  # orjson escaped our backslash; restore the JSON escape
    assert plain(parse_images_answer(raw)) == orjson.loads(raw)


def test_the_escaped_slash_case_really_escapes() -> None:
    image = b64_image()
    raw = orjson.dumps({"data": [{"b64_json": image}]}).replace(b"/", b"\\/")
    body = parse_images_answer(raw)
    assert views(body) == [False] and body["data"][0]["b64_json"] == image


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": [{"b64_json": "' + b"A" * ZERO_COPY_MIN_BYTES + b'"}',  # truncated
        b'{"data": [{"b64_json": "' + b"A" * ZERO_COPY_MIN_BYTES,  # no closing quote
        b'{"data": [{"b64_json": "' + b"A" * ZERO_COPY_MIN_BYTES + b'"}]} trailing',
    ],
)
def test_invalid_json_is_an_error(raw: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        parse_images_answer(raw)


def test_a_view_with_junk_fails_the_base64_check() -> None:
    # Control characters are invalid in a JSON string; the cut-out value is not JSON-checked,
    # so the base64 check must refuse them.
    raw = b'{"data": [{"b64_json": "' + base64.b64encode(PNG_HEAD + os.urandom(ZERO_COPY_MIN_BYTES)) + b'\x01"}]}'
    body = parse_images_answer(raw)
    with pytest.raises(ValueError):
        normalize_b64(body["data"][0]["b64_json"])
