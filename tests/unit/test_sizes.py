"""Table-driven tests of the pure size rules (imagerelay.domain.sizes).

The vip table is written out here from SPEC §1.1 (not loaded from the catalog) so a
catalog edit cannot silently change what these tests expect.
"""

from __future__ import annotations

import math

import pytest

from imagerelay.catalog.loader import load_catalog
from imagerelay.domain.sizes import (
    check_official_size,
    check_table_size,
    dimensions_for,
    is_official_size,
    nearest_official,
    nearest_table_size,
    official_problems,
    parse_size,
    table_examples,
)
from imagerelay.errors import InvalidRequest

# SPEC §1.1: the 30 sizes of gpt-image-2-vip.
VIP_TABLE: dict[str, dict[str, str]] = {
    "1:1": {"1K": "1280x1280", "2K": "2048x2048", "4K": "2880x2880"},
    "2:3": {"1K": "848x1280", "2K": "1360x2048", "4K": "2336x3520"},
    "3:2": {"1K": "1280x848", "2K": "2048x1360", "4K": "3520x2336"},
    "3:4": {"1K": "960x1280", "2K": "1536x2048", "4K": "2480x3312"},
    "4:3": {"1K": "1280x960", "2K": "2048x1536", "4K": "3312x2480"},
    "4:5": {"1K": "1024x1280", "2K": "1632x2048", "4K": "2560x3216"},
    "5:4": {"1K": "1280x1024", "2K": "2048x1632", "4K": "3216x2560"},
    "9:16": {"1K": "720x1280", "2K": "1152x2048", "4K": "2160x3840"},
    "16:9": {"1K": "1280x720", "2K": "2048x1152", "4K": "3840x2160"},
    "21:9": {"1K": "1280x544", "2K": "2048x864", "4K": "3840x1632"},
}
VIP_ENTRIES = [(ratio, tier, size) for ratio, tiers in VIP_TABLE.items() for tier, size in tiers.items()]
LABEL = "model gpt-image-2-vip in group default"


def table_error(size: str, table: dict[str, dict[str, str]] = VIP_TABLE) -> str:
    with pytest.raises(InvalidRequest) as info:
        check_table_size(size, table, LABEL)
    assert info.value.param == "size" and info.value.status == 400
    return info.value.message


def official_error(size: str) -> str:
    with pytest.raises(InvalidRequest) as info:
        check_official_size(size)
    assert info.value.param == "size" and info.value.status == 400
    return info.value.message


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1024x1024", (1024, 1024)),
        ("3840x2160", (3840, 2160)),
        ("1x1", (1, 1)),
        ("848x1280", (848, 1280)),
        ("999999x999999", (999999, 999999)),
        # rejected spellings: uppercase X, missing parts, zero/negative, spaces, other separators
        ("1024X1024", None),
        ("1024", None),
        ("1024x", None),
        ("x1024", None),
        ("x", None),
        ("0x0", None),
        ("0x1024", None),
        ("1024x0", None),
        ("-1x5", None),
        ("5x-1", None),
        ("+5x5", None),
        ("01024x1024", None),
        (" 1024x1024", None),
        ("1024x1024 ", None),
        ("1024 x 1024", None),
        ("1024*1024", None),
        ("1024×1024", None),
        ("1024x1024x3", None),
        ("１０２４x1024", None),
        ("١٠٢٤x1024", None),
        ("10.5x20", None),
        ("1e3x1000", None),
        ("auto", None),
        ("", None),
        ("1000000x1", None),
        ("99999999x1", None),
    ],
)
def test_parse_size(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_size(text) == parsed


@pytest.mark.parametrize(
    ("size", "default", "dims"),
    [
        (None, "1024x1024", (1024, 1024)),
        (None, "2048x2048", (2048, 2048)),
        (None, "auto", None),
        ("auto", "1024x1024", None),
        ("auto", "auto", None),
        ("2048x1152", "auto", (2048, 1152)),
        ("2048x1152", "1024x1024", (2048, 1152)),
        ("848x1280", "2048x2048", (848, 1280)),
    ],
)
def test_dimensions_for(size: str | None, default: str, dims: tuple[int, int] | None) -> None:
    assert dimensions_for(size, default) == dims


# -- table mode (gpt-image-2-vip) ------------------------------------------------------------------


def test_the_table_has_thirty_distinct_sizes() -> None:
    assert len({size for _, _, size in VIP_ENTRIES}) == 30


@pytest.mark.parametrize(("ratio", "tier", "size"), VIP_ENTRIES)
def test_every_vip_size_is_accepted(ratio: str, tier: str, size: str) -> None:
    check_table_size(size, VIP_TABLE, LABEL)  # no exception


@pytest.mark.parametrize(("ratio", "tier", "size"), VIP_ENTRIES)
def test_every_vip_size_is_its_own_nearest(ratio: str, tier: str, size: str) -> None:
    w, h = parse_size(size)  # type: ignore[misc]
    assert nearest_table_size(w, h, VIP_TABLE) == (size, ratio, tier)


@pytest.mark.parametrize(
    ("size", "nearest"),
    [
        ("3840x2000", "3840x2160 (16:9, 4K)"),
        ("3840x2161", "3840x2160 (16:9, 4K)"),
        ("7680x4320", "3840x2160 (16:9, 4K)"),
        ("1920x1080", "2048x1152 (16:9, 2K)"),
        ("1366x768", "1280x720 (16:9, 1K)"),
        ("2000x1000", "2048x1152 (16:9, 2K)"),  # 2:1 is nearer 16:9 than 21:9 in log ratio
        ("1000x2000", "1152x2048 (9:16, 2K)"),
        ("2160x3841", "2160x3840 (9:16, 4K)"),
        ("720x1281", "720x1280 (9:16, 1K)"),
        ("1x1", "1280x1280 (1:1, 1K)"),
        ("512x512", "1280x1280 (1:1, 1K)"),
        ("1024x1024", "1280x1280 (1:1, 1K)"),
        ("2000x2000", "2048x2048 (1:1, 2K)"),
        ("2047x2048", "2048x2048 (1:1, 2K)"),
        ("2048x2049", "2048x2048 (1:1, 2K)"),
        ("3000x3000", "2880x2880 (1:1, 4K)"),
        ("4096x4096", "2880x2880 (1:1, 4K)"),
        ("1536x1024", "1280x848 (3:2, 1K)"),  # 1.57 MP is nearer 1.09 MP than 2.79 MP (log scale)
        ("1024x1536", "848x1280 (2:3, 1K)"),
        ("1800x1200", "2048x1360 (3:2, 2K)"),
        ("1920x1200", "2048x1360 (3:2, 2K)"),  # 16:10 is nearest 3:2
        ("2336x3521", "2336x3520 (2:3, 4K)"),
        ("1600x1200", "1280x960 (4:3, 1K)"),
        ("3200x2400", "3312x2480 (4:3, 4K)"),
        ("1200x1600", "960x1280 (3:4, 1K)"),
        ("1080x1350", "1024x1280 (4:5, 1K)"),
        ("960x1200", "1024x1280 (4:5, 1K)"),
        ("2500x2000", "2048x1632 (5:4, 2K)"),
        ("2560x1080", "2048x864 (21:9, 2K)"),
        ("3840x1600", "3840x1632 (21:9, 4K)"),
        ("1280x545", "1280x544 (21:9, 1K)"),
        ("5000x1000", "3840x1632 (21:9, 4K)"),
        ("100000x1", "1280x544 (21:9, 1K)"),
    ],
)
def test_table_near_misses_name_the_nearest_same_ratio_and_tier(size: str, nearest: str) -> None:
    message = table_error(size)
    assert f"the nearest allowed size is {nearest}" in message
    assert message.startswith(f"size {size} is not supported by {LABEL}")


def test_auto_is_refused_with_the_2k_examples() -> None:
    message = table_error("auto")
    assert "'auto' is not accepted by model gpt-image-2-vip in group default" in message
    assert "pass an explicit size such as 2048x2048, 2048x1152 or 1152x2048" in message


@pytest.mark.parametrize("size", ["big", "1024", "1024x", "", "0x0", "-1x5", "AUTO", "2048x2048x2", "2048.0x2048"])
def test_table_junk_gets_examples(size: str) -> None:
    message = table_error(size)
    assert "lowercase x" in message and "2048x2048, 2048x1152 or 1152x2048" in message


@pytest.mark.parametrize(
    ("size", "fixed"),
    [
        ("2048X2048", "2048x2048"),
        ("2048 x 2048", "2048x2048"),
        (" 3840x2160", "3840x2160"),
        ("1280*720", "1280x720"),
        ("02048x2048", "2048x2048"),
        ("1280×720", "1280x720"),
    ],
)
def test_table_misspelling_of_an_allowed_size_gives_the_spelling(size: str, fixed: str) -> None:
    message = table_error(size)
    assert f"write it with a lowercase x and no spaces: {fixed}" in message


def test_table_misspelling_of_a_disallowed_size_gives_the_nearest() -> None:
    assert "nearest allowed size is 1280x1280 (1:1, 1K)" in table_error("1024X1024")


def test_table_message_lists_the_route_shape() -> None:
    message = table_error("1000x1000")
    assert "30 sizes: 1K/2K/4K for ratios 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9" in message


def brute_force_nearest(w: int, h: int, table: dict[str, dict[str, str]]) -> tuple[str, str, str]:
    """An independent statement of the rule, for the property test below."""

    def ratio_value(label: str) -> float:
        a, b = label.split(":")
        return int(a) / int(b)

    ratio = min(table, key=lambda r: abs(math.log(w / h) - math.log(ratio_value(r))))

    def pixels(size: str) -> int:
        tw, th = parse_size(size)  # type: ignore[misc]
        return tw * th

    tier = min(table[ratio], key=lambda t: abs(math.log(pixels(table[ratio][t]) / (w * h))))
    return table[ratio][tier], ratio, tier


def test_nearest_table_size_matches_the_rule_everywhere() -> None:
    for w in range(64, 6000, 89):
        for h in range(64, 6000, 103):
            found = nearest_table_size(w, h, VIP_TABLE)
            assert found == brute_force_nearest(w, h, VIP_TABLE), (w, h)
            assert VIP_TABLE[found[1]][found[2]] == found[0]


def test_table_examples_fall_back_when_there_is_no_2k_row() -> None:
    table = {"1:1": {"S": "512x512", "L": "1024x1024"}, "2:1": {"S": "1024x512"}}
    assert table_examples(table) == ["512x512", "1024x1024", "1024x512"]
    assert "512x512, 1024x1024 or 1024x512" in table_error("auto", table)
    assert table_examples(VIP_TABLE) == ["2048x2048", "2048x1152", "1152x2048"]


def test_table_with_labels_that_are_not_ratios_uses_the_sizes() -> None:
    table = {"square": {"small": "512x512", "big": "1024x1024"}, "wide": {"small": "1024x512"}}
    assert nearest_table_size(1000, 480, table) == ("1024x512", "wide", "small")
    assert nearest_table_size(900, 900, table) == ("1024x1024", "square", "big")
    assert "nearest allowed size is 1024x512 (wide, small)" in table_error("1000x480", table)


def test_single_row_table_maps_everything_to_it() -> None:
    table = {"1:1": {"1K": "1024x1024"}}
    assert nearest_table_size(5000, 10, table) == ("1024x1024", "1:1", "1K")


def test_unusable_table_entries_are_ignored() -> None:
    table = {"1:1": {"1K": "0x0", "2K": "2048x2048"}, "2:1": {"1K": "0x5"}}
    assert nearest_table_size(1000, 1000, table) == ("2048x2048", "1:1", "2K")
    assert nearest_table_size(2000, 1000, table) == ("2048x2048", "1:1", "2K")  # nothing usable in 2:1
    assert "nearest allowed size is 2048x2048 (1:1, 2K)" in table_error("1000x1000", table)
    assert "no explicit sizes" in table_error("10x10", {"1:1": {"1K": "0x0"}})


def test_empty_table_is_an_error_not_a_crash() -> None:
    assert "no explicit sizes" in table_error("1024x1024", {})
    with pytest.raises(ValueError):
        nearest_table_size(10, 10, {})


# -- official mode (gpt-image-2) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        "auto",
        "1024x1024",
        "1536x1024",
        "1024x1536",
        "2048x2048",
        "2048x1152",
        "3840x2160",
        "2160x3840",  # route guide
        "1280x512",
        "512x1280",  # 655,360 pixels exactly (the minimum)
        "1024x640",
        "640x1024",  # 655,360 pixels exactly, again
        "2880x2880",  # 8,294,400 pixels exactly (the maximum)
        "3840x2144",
        "3840x1296",  # longest edge exactly 3840
        "3840x1280",
        "1280x3840",
        "2448x816",
        "816x2448",  # long:short exactly 3:1
        "816x816",
        "1408x480",
        "2560x1440",
        "3312x2480",
    ],
)
def test_official_accepts(size: str) -> None:
    check_official_size(size)


@pytest.mark.parametrize(
    ("size", "problem", "suggestion"),
    [
        ("1792x936", "Width and height must both be divisible by 16", "1792x944"),
        ("1025x1024", "divisible by 16", "1024x1024"),
        ("1023x1023", "divisible by 16", "1024x1024"),
        ("1000x1000", "divisible by 16", "1008x1008"),
        ("1920x1080", "divisible by 16", "1920x1088"),
        ("1536x1032", "divisible by 16", "1536x1040"),
        ("1500x500", "divisible by 16", "1488x496"),
        ("3856x2144", "the longest edge must be at most 3840 (got 3856)", "3840x2144"),
        ("2144x3856", "the longest edge must be at most 3840 (got 3856)", "2144x3840"),
        ("3856x1296", "longest edge", "3840x1296"),
        ("3856x2160", "longest edge", "3840x2160"),
        ("4096x4096", "longest edge", "2880x2880"),
        ("3840x3840", "between 655,360 and 8,294,400 (got 14,745,600)", "2880x2880"),
        ("3840x1264", "at most 3 times the short edge (got 3.04:1)", "3840x1280"),
        ("1264x3840", "at most 3 times the short edge", "1280x3840"),
        ("2464x816", "at most 3 times the short edge (got 3.02:1)", "2464x832"),
        ("5000x1000", "at most 3 times", "3840x1280"),
        ("1024x624", "between 655,360 and 8,294,400 (got 638,976)", "1024x640"),
        ("1264x512", "(got 647,168)", "1280x512"),
        ("512x512", "(got 262,144)", "816x816"),
        ("256x256", "between 655,360", "816x816"),
        ("16x16", "between 655,360", "816x816"),
        ("2896x2880", "(got 8,340,480)", "2880x2880"),
        ("2896x2896", "(got 8,386,816)", "2880x2880"),
        ("3840x2176", "(got 8,355,840)", "3840x2160"),
    ],
)
def test_official_rejects_with_the_nearest_valid_size(size: str, problem: str, suggestion: str) -> None:
    message = official_error(size)
    assert message.startswith(f"Invalid size '{size}'. ")
    assert problem.lower() in message.lower()
    assert message.endswith(f"; the nearest valid size is {suggestion}.")
    check_official_size(suggestion)


def test_the_brief_example_message_exactly() -> None:
    assert official_error("1792x936") == (
        "Invalid size '1792x936'. Width and height must both be divisible by 16; the nearest valid size is 1792x944."
    )


def test_every_broken_rule_is_named() -> None:
    message = official_error("3841x2161")
    for part in ("divisible by 16", "longest edge", "between 655,360 and 8,294,400"):
        assert part in message
    assert message.endswith("nearest valid size is 3840x2160.")


def test_a_ratio_just_over_three_does_not_read_as_three() -> None:
    assert "(got 3.0010:1)" in official_error("3001x1000")


@pytest.mark.parametrize(
    ("w", "h", "ok"),
    [
        # pixel-count boundaries
        (1280, 512, True),
        (1264, 512, False),
        (1024, 640, True),
        (1024, 624, False),
        (2880, 2880, True),
        (2896, 2880, False),
        (3840, 2160, True),
        (3840, 2176, False),
        # longest edge boundaries (on the 16 grid: 3840 ok, 3856 not)
        (3840, 2144, True),
        (3856, 2144, False),
        (2144, 3840, True),
        (2144, 3856, False),
        # ratio boundaries: exactly 3:1 ok, 3.02:1 not
        (2448, 816, True),
        (2464, 816, False),
        (816, 2448, True),
        (816, 2464, False),
        (3840, 1280, True),
        (3840, 1264, False),
        # multiples of 16
        (1024, 1024, True),
        (1024, 1032, False),
        (1032, 1024, False),
        (1040, 1024, True),
        (1024, 1025, False),
    ],
)
def test_official_boundaries(w: int, h: int, ok: bool) -> None:
    assert is_official_size(w, h) is ok
    assert (official_problems(w, h) == []) is ok


@pytest.mark.parametrize(
    ("size", "tail"),
    [
        ("1024X1024", "did you mean '1024x1024'?"),
        (" 1024x1024", "did you mean '1024x1024'?"),
        ("1024 x 1536", "did you mean '1024x1536'?"),
        ("01024x1024", "did you mean '1024x1024'?"),
        ("AUTO", "did you mean 'auto'?"),
        ("Auto ", "did you mean 'auto'?"),
        ("1000X1000", "the nearest valid size is 1008x1008."),
    ],
)
def test_official_misspellings_get_the_right_spelling(size: str, tail: str) -> None:
    message = official_error(size)
    assert "Use 'auto' or WIDTHxHEIGHT with a lowercase x" in message
    assert message.endswith(tail)


@pytest.mark.parametrize(
    "size",
    [
        "big",
        "1024",
        "1024x",
        "x1024",
        "0x0",
        "-1x5",
        "",
        "1024x1024x1",
        "10.5x20",
        "１０２４x1024",
        "1e3x1000",
        "a" * 500,
    ],
)
def test_official_junk_gets_examples(size: str) -> None:
    message = official_error(size)
    assert "Use 'auto' or WIDTHxHEIGHT with a lowercase x" in message and "'1024x1024'" in message
    assert len(message) < 300  # a huge value is not echoed back in full


def test_nearest_official_is_valid_everywhere_and_symmetric() -> None:
    for w in range(1, 8000, 61):
        for h in range(1, 8000, 67):
            nw, nh = nearest_official(w, h)
            assert is_official_size(nw, nh), (w, h)
            assert nearest_official(h, w) == (nh, nw), (w, h)


def test_nearest_official_keeps_every_valid_size() -> None:
    checked = 0
    for w in range(16, 3841, 16):
        for h in range(16, 3841, 16):
            if is_official_size(w, h):
                assert nearest_official(w, h) == (w, h)
                checked += 1
    assert checked > 10_000


@pytest.mark.parametrize(("w", "h"), [(1, 1), (999999, 1), (1, 999999), (999999, 999999), (3841, 1), (17, 3839)])
def test_nearest_official_extremes(w: int, h: int) -> None:
    assert is_official_size(*nearest_official(w, h))


def test_nearest_official_keeps_the_shape_of_far_misses() -> None:
    assert nearest_official(4096, 4096) == (2880, 2880)
    assert nearest_official(7680, 4320) == (3840, 2160)
    assert nearest_official(999999, 1) == (3840, 1280)
    assert nearest_official(1, 999999) == (1280, 3840)


def test_nearest_official_rejects_non_positive_input() -> None:
    with pytest.raises(ValueError):
        nearest_official(0, 10)


# -- merged from test_size_rules.py: Table-driven tests of the pure size rules.

TABLE = load_catalog().file.param_profiles["vip"].size_table
VIP_SIZES = sorted({s for tiers in TABLE.values() for s in tiers.values()})


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1024x1024", (1024, 1024)),
        ("3840x2160", (3840, 2160)),
        ("1x1", (1, 1)),
        ("1024X1024", None),
        ("1024", None),
        ("1024x", None),
        ("x1024", None),
        ("0x0", None),
        ("-1x5", None),
        (" 1024x1024", None),
        ("1024x1024 ", None),
        ("1024*1024", None),
        ("１０２４x1024", None),
        ("10.5x20", None),
        ("auto", None),
        ("", None),
        ("99999999x1", None),
    ],
)
def test_parse_size_more_forms(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_size(text) == parsed


def test_the_thirty_vip_sizes() -> None:
    assert len(VIP_SIZES) == 30
    for size in VIP_SIZES:
        check_table_size(size, TABLE, "route")


@pytest.mark.parametrize(
    ("size", "nearest"),
    [
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
    ],
)
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


OFFICIAL_OK = [
    "auto",
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "2048x2048",
    "2048x1152",
    "3840x2160",
    "2160x3840",
    "1280x512",  # 655,360 pixels exactly, 2.5:1
    "3840x1280",  # exactly 3:1
    "2880x2880",  # 8,294,400 pixels exactly
    "1024x640",
    "3840x2160",
]


@pytest.mark.parametrize("size", OFFICIAL_OK)
def test_official_accepts_more_sizes(size: str) -> None:
    check_official_size(size)


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ("1792x936", "divisible by 16"),
        ("1025x1024", "divisible by 16"),
        ("3856x2160", "longest edge must be at most 3840"),
        ("3840x1264", "at most 3 times"),  # 3.04:1
        ("1024x624", "between 655,360 and 8,294,400"),  # 638,976 pixels
        ("2896x2896", "between 655,360 and 8,294,400"),  # 8,386,816 pixels
        ("512x512", "between 655,360"),
        ("256x256", "between 655,360"),
        ("4096x4096", "longest edge"),
    ],
)
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


@pytest.mark.parametrize(
    ("size", "default", "dims"),
    [
        (None, "1024x1024", (1024, 1024)),
        (None, "auto", None),
        ("auto", "1024x1024", None),
        ("2048x1152", "auto", (2048, 1152)),
    ],
)
def test_dimensions_for_auto(size: str | None, default: str, dims: tuple[int, int] | None) -> None:
    assert dimensions_for(size, default) == dims
