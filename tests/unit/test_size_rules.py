"""Table-driven tests of the pure size rules."""

from __future__ import annotations

import pytest

from imagerelay.catalog.loader import load_catalog
from imagerelay.domain.sizes import (
    check_official_size,
    check_table_size,
    dimensions_for,
    nearest_official,
    nearest_table_size,
    parse_size,
)
from imagerelay.errors import InvalidRequest

TABLE = load_catalog().file.param_profiles["vip"].size_table
VIP_SIZES = sorted({s for tiers in TABLE.values() for s in tiers.values()})


@pytest.mark.parametrize(("text", "parsed"), [
    ("1024x1024", (1024, 1024)), ("3840x2160", (3840, 2160)), ("1x1", (1, 1)),
    ("1024X1024", None), ("1024", None), ("1024x", None), ("x1024", None), ("0x0", None), ("-1x5", None),
    (" 1024x1024", None), ("1024x1024 ", None), ("1024*1024", None), ("１０２４x1024", None), ("10.5x20", None),
    ("auto", None), ("", None), ("99999999x1", None),
])
def test_parse_size(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_size(text) == parsed


def test_the_thirty_vip_sizes() -> None:
    assert len(VIP_SIZES) == 30
    for size in VIP_SIZES:
        check_table_size(size, TABLE, "route")


@pytest.mark.parametrize(("size", "nearest"), [
    ("3840x2000", "3840x2160 (16:9, 4K)"),
    ("1920x1080", "2048x1152 (16:9, 2K)"),
    ("1024x1024", "1280x1280 (1:1, 1K)"),
    ("4096x4096", "2880x2880 (1:1, 4K)"),
    ("2000x2000", "2048x2048 (1:1, 2K)"),
    ("1536x1024", "1280x848 (3:2, 1K)"),  # 1.57 MP is nearer 1.09 MP than 2.79 MP
    ("1024x1536", "848x1280 (2:3, 1K)"),
    ("1800x1200", "2048x1360 (3:2, 2K)"),
    ("2560x1080", "2048x864 (21:9, 2K)"),
    ("3840x1600", "3840x1632 (21:9, 4K)"),
    ("720x1281", "720x1280 (9:16, 1K)"),
    ("5000x1000", "3840x1632 (21:9, 4K)"),
    ("1080x1350", "1024x1280 (4:5, 1K)"),
    ("3200x2400", "3312x2480 (4:3, 4K)"),
])
def test_table_near_misses_name_nearest_same_ratio_and_tier(size: str, nearest: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_table_size(size, TABLE, "model gpt-image-2-vip in group default")
    assert info.value.param == "size"
    assert f"nearest allowed size is {nearest}" in info.value.message


@pytest.mark.parametrize("size", ["auto", "big", "1024", "2048X2048", ""])
def test_table_refuses_auto_and_junk_with_examples(size: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_table_size(size, TABLE, "route")
    assert "2048x2048" in info.value.message and info.value.param == "size"


def test_nearest_table_size_is_in_table() -> None:
    for w in range(256, 5000, 97):
        for h in range(256, 5000, 131):
            size, ratio, tier = nearest_table_size(w, h, TABLE)
            assert TABLE[ratio][tier] == size


OFFICIAL_OK = ["auto", "1024x1024", "1536x1024", "1024x1536", "2048x2048", "2048x1152", "3840x2160", "2160x3840",
               "1280x512",  # 655,360 pixels exactly, 2.5:1
               "3840x1280",  # exactly 3:1
               "2880x2880",  # 8,294,400 pixels exactly
               "1024x640", "3840x2160"]


@pytest.mark.parametrize("size", OFFICIAL_OK)
def test_official_accepts(size: str) -> None:
    check_official_size(size)


@pytest.mark.parametrize(("size", "problem"), [
    ("1792x936", "divisible by 16"),
    ("1025x1024", "divisible by 16"),
    ("3856x2160", "longest edge must be at most 3840"),
    ("3840x1264", "at most 3 times"),  # 3.04:1
    ("1024x624", "between 655,360 and 8,294,400"),  # 638,976 pixels
    ("2896x2896", "between 655,360 and 8,294,400"),  # 8,386,816 pixels
    ("512x512", "between 655,360"),
    ("256x256", "between 655,360"),
    ("4096x4096", "longest edge"),
])
def test_official_rejects_with_a_valid_suggestion(size: str, problem: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_official_size(size)
    message = info.value.message
    assert problem in message and info.value.param == "size"
    suggested = message.rsplit("nearest valid size is ", 1)[1].rstrip(".")
    check_official_size(suggested)  # the suggestion itself is valid


@pytest.mark.parametrize("size", ["big", "1024", "1024X1024", "-5x5"])
def test_official_junk(size: str) -> None:
    with pytest.raises(InvalidRequest, match="Use 'auto' or WIDTHxHEIGHT"):
        check_official_size(size)


def test_nearest_official_is_always_valid() -> None:
    for w in range(16, 6000, 173):
        for h in range(16, 6000, 191):
            nw, nh = nearest_official(w, h)
            check_official_size(f"{nw}x{nh}")


def test_nearest_official_keeps_valid_sizes() -> None:
    assert nearest_official(1024, 1024) == (1024, 1024)
    assert nearest_official(1792, 936) in ((1792, 928), (1792, 944))


@pytest.mark.parametrize(("size", "default", "dims"), [
    (None, "1024x1024", (1024, 1024)), (None, "auto", None), ("auto", "1024x1024", None), ("2048x1152", "auto", (2048, 1152)),
])
def test_dimensions_for(size: str | None, default: str, dims: tuple[int, int] | None) -> None:
    assert dimensions_for(size, default) == dims
