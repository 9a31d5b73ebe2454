"""The large-string split (imagerelay.api.bigjson): the same object as orjson, with long
strings handed back as bytes, and every malformed or hostile shape a 4xx."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from imagerelay.api.bigjson import MAX_BACKSLASH_RUN, split_parse
from imagerelay.errors import InvalidRequest, PayloadTooLarge


def restore(value: Any, large: Any) -> Any:
    view = large.take(value)
    if view is not None:
        return bytes(view).decode()
    if isinstance(value, dict):
        return {k: restore(v, large) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v, large) for v in value]
    return value


@pytest.mark.parametrize(
    "doc",
    [
        {"model": "gpt-image-2", "prompt": 'a "quoted" \\ back\\slash', "images": [{"image_url": "x" * 5000}]},
        {"a": ["y" * 100, "z" * 101, {'k"ey': "w" * 3000}], "b": None, "c": 1.5, "d": "é" * 200},
        [1, "", "q" * 1000, {"": ""}],
    ],
)
def test_same_object_as_orjson(doc: Any) -> None:
    raw = orjson.dumps(doc)
    body, large = split_parse(raw, threshold=100, max_skeleton=10_000)
    assert restore(body, large) == doc
    assert large.taken == len(large.views)


def test_long_strings_are_not_in_the_skeleton() -> None:
    raw = orjson.dumps({"images": [{"image_url": "A" * 10_000}], "prompt": "p"})
    body, large = split_parse(raw, threshold=1000, max_skeleton=200)
    assert len(large.views) == 1 and bytes(large.views[0]) == b"A" * 10_000
    assert body["prompt"] == "p"


def test_escaped_slashes_in_base64_are_unescaped() -> None:
    data = base64.b64encode(bytes(range(256)) * 40).decode()
    assert "/" in data
    raw = b'{"u": "' + data.replace("/", "\\/").encode() + b'"}'
    body, large = split_parse(raw, threshold=100, max_skeleton=1000)
    assert bytes(large.take(body["u"]) or b"") == data.encode()


def test_a_long_string_where_none_belongs_names_its_path() -> None:
    raw = orjson.dumps({"model": "m", "user": ["x" * 5000]})
    body, large = split_parse(raw, threshold=1000, max_skeleton=1000)
    with pytest.raises(PayloadTooLarge) as info:
        large.check_all_taken(body)
    assert info.value.param == "user[0]"


def test_skeleton_over_its_limit_is_413() -> None:
    raw = orjson.dumps({"n": list(range(5000))})
    with pytest.raises(PayloadTooLarge):
        split_parse(raw, threshold=1000, max_skeleton=1000)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "unterminated',
        b'{"a": "' + b"\\" * (MAX_BACKSLASH_RUN + 2) + b'"}',
    ],
)
def test_hostile_strings_are_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        split_parse(raw, threshold=1000, max_skeleton=1000)


def test_invalid_json_outside_strings_is_left_to_orjson() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        split_parse(b'{"a": ' + b'"' + b"x" * 5000 + b'" ,,}', threshold=1000, max_skeleton=1000)


def test_a_body_without_long_strings_has_no_placeholders() -> None:
    body, large = split_parse(b'{"u": "data:image/png;base64,AAAA"}', threshold=1000, max_skeleton=1000)
    assert large.take(body["u"]) is None
    large.check_all_taken(body)


@pytest.mark.timing
def test_many_small_strings_stop_the_scan_at_the_skeleton_limit() -> None:
    import time

    raw = b"[" + b'"a",' * 2_000_000 + b'"a"]'
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge):
        split_parse(raw, threshold=1000, max_skeleton=10_000)
    assert time.monotonic() - started < 1.0  # a scan of all 2 million strings took seconds
