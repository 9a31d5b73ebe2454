"""Pure size rules: parsing, the official gpt-image-2 rules, and tiered size tables.

Every rejection is an :class:`InvalidRequest` with ``param="size"`` and a message that
names a concrete size to use instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from imagerelay.errors import InvalidRequest

OFFICIAL_MAX_EDGE = 3840
OFFICIAL_MIN_PIXELS = 655_360
OFFICIAL_MAX_PIXELS = 8_294_400
OFFICIAL_MAX_RATIO = 3.0
OFFICIAL_STEP = 16


def parse_size(value: str) -> tuple[int, int] | None:
    """``"WxH"`` (lowercase x, positive decimal integers) -> (w, h); anything else -> None."""
    w, sep, h = value.partition("x")
    if not sep or not (w.isascii() and w.isdigit() and h.isascii() and h.isdigit()):
        return None
    if len(w) > 6 or len(h) > 6:
        return None
    width, height = int(w), int(h)
    if width <= 0 or height <= 0:
        return None
    return width, height


def dimensions_for(size: str | None, default_size: str) -> tuple[int, int] | None:
    """The pixel size a request asks for (``None`` when it is ``auto``)."""
    chosen = size if size is not None else default_size
    return None if chosen == "auto" else parse_size(chosen)


def _official_problems(width: int, height: int) -> list[str]:
    problems = []
    if width % OFFICIAL_STEP or height % OFFICIAL_STEP:
        problems.append("width and height must both be divisible by 16")
    if max(width, height) > OFFICIAL_MAX_EDGE:
        problems.append(f"the longest edge must be at most {OFFICIAL_MAX_EDGE}")
    if max(width, height) > OFFICIAL_MAX_RATIO * min(width, height):
        problems.append("the long edge must be at most 3 times the short edge")
    pixels = width * height
    if not OFFICIAL_MIN_PIXELS <= pixels <= OFFICIAL_MAX_PIXELS:
        problems.append(f"the total pixels must be between {OFFICIAL_MIN_PIXELS:,} and {OFFICIAL_MAX_PIXELS:,}")
    return problems


def nearest_official(width: int, height: int) -> tuple[int, int]:
    """The valid gpt-image-2 size closest to (width, height), keeping its shape."""
    ratio = max(1 / OFFICIAL_MAX_RATIO, min(OFFICIAL_MAX_RATIO, width / height))
    # The longest edge also caps the area: long <= 3840 means pixels <= 3840^2 * short/long.
    max_pixels = min(OFFICIAL_MAX_PIXELS, OFFICIAL_MAX_EDGE**2 * min(ratio, 1 / ratio))
    pixels = min(max_pixels, max(OFFICIAL_MIN_PIXELS, width * height))
    best: tuple[float, tuple[int, int]] | None = None
    # Search around the ideal edge lengths on the 16-pixel grid.
    ideal_w = math.sqrt(pixels * ratio)
    base_w = int(ideal_w // OFFICIAL_STEP) * OFFICIAL_STEP
    for w in range(max(OFFICIAL_STEP, base_w - 8 * OFFICIAL_STEP), base_w + 9 * OFFICIAL_STEP, OFFICIAL_STEP):
        ideal_h = w / ratio
        base_h = int(ideal_h // OFFICIAL_STEP) * OFFICIAL_STEP
        for h in range(max(OFFICIAL_STEP, base_h - 2 * OFFICIAL_STEP), base_h + 3 * OFFICIAL_STEP, OFFICIAL_STEP):
            if _official_problems(w, h):
                continue
            cost = abs(w - width) + abs(h - height)
            if best is None or cost < best[0]:
                best = (cost, (w, h))
    assert best is not None  # the search window always contains valid sizes
    return best[1]


def check_official_size(size: str) -> None:
    """gpt-image-2 rules: ``auto`` or WxH, edges multiples of 16, longest edge <= 3840,
    long:short <= 3:1, 655,360 <= pixels <= 8,294,400."""
    if size == "auto":
        return
    parsed = parse_size(size)
    if parsed is None:
        raise InvalidRequest(
            f"Invalid size '{size}'. Use 'auto' or WIDTHxHEIGHT, e.g. '1024x1024', '1536x1024' or '3840x2160'.",
            param="size",
        )
    problems = _official_problems(*parsed)
    if problems:
        w, h = nearest_official(*parsed)
        raise InvalidRequest(
            f"Invalid size '{size}': {'; '.join(problems)}. The nearest valid size is {w}x{h}.",
            param="size",
        )


def _tier_pixels(size: str) -> int:
    parsed = parse_size(size)
    assert parsed is not None
    return parsed[0] * parsed[1]


def _ratio_value(ratio: str) -> float:
    a, _, b = ratio.partition(":")
    return float(a) / float(b)


def nearest_table_size(width: int, height: int, table: Mapping[str, Mapping[str, str]]) -> tuple[str, str, str]:
    """(size, ratio, tier) of the table entry nearest in aspect ratio, then in pixel count."""
    target = math.log(width / height)
    ratio = min(table, key=lambda r: abs(math.log(_ratio_value(r)) - target))
    tiers = table[ratio]
    pixels = width * height
    tier = min(tiers, key=lambda t: abs(math.log(_tier_pixels(tiers[t]) / pixels)))
    return tiers[tier], ratio, tier


def check_table_size(size: str, table: Mapping[str, Mapping[str, str]], route_label: str) -> None:
    allowed = {s for tiers in table.values() for s in tiers.values()}
    if size in allowed:
        return
    examples = [table[r][t] for r, t in (("1:1", "2K"), ("16:9", "2K"), ("9:16", "2K")) if r in table and t in table[r]]
    if not examples:
        examples = sorted(allowed)[:3]
    if size == "auto":
        raise InvalidRequest(
            f"size 'auto' is not accepted by {route_label}; pass an explicit size such as "
            f"{', '.join(examples)} (30 sizes: 1K/2K/4K for ratios {', '.join(table)}).",
            param="size",
        )
    parsed = parse_size(size)
    if parsed is None:
        raise InvalidRequest(
            f"Invalid size '{size}' for {route_label}; pass WIDTHxHEIGHT from the size table, e.g. {', '.join(examples)}.",
            param="size",
        )
    nearest, ratio, tier = nearest_table_size(*parsed, table)
    raise InvalidRequest(
        f"size {size} is not supported by {route_label}; the nearest allowed size is {nearest} "
        f"({ratio}, {tier}). Allowed sizes are 1K/2K/4K for ratios {', '.join(table)}.",
        param="size",
    )
