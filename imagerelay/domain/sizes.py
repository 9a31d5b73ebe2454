"""Pure size rules: parsing, the official gpt-image-2 rules, and tiered size tables.

Every rejection is an :class:`InvalidRequest` with ``param="size"`` and a message that
names a concrete size to use instead: a caller who gets "invalid size" with no way
forward retries at random, and every retry on a paid route costs money.

Only the canonical spelling ``WIDTHxHEIGHT`` is accepted (lowercase ``x``, ASCII digits,
no sign, no leading zeros, no spaces). Official routes pass ``size`` upstream exactly as
given, so anything we accept must be a spelling the upstream accepts too; the messages
say so and offer the corrected spelling when there is one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from imagerelay.errors import InvalidRequest

OFFICIAL_MAX_EDGE = 3840
OFFICIAL_MIN_PIXELS = 655_360
OFFICIAL_MAX_PIXELS = 8_294_400
OFFICIAL_MAX_RATIO = 3  # long:short, inclusive (3840x1280 is fine, 3840x1264 is not)
OFFICIAL_STEP = 16
OFFICIAL_EXAMPLES = ("1024x1024", "1536x1024", "3840x2160")

_CANONICAL = re.compile(r"[1-9][0-9]{0,5}x[1-9][0-9]{0,5}")
# Near-misses we can correct for the caller: "1024X1024", "1024 x 1024", "1024*1024", "1024×1024".
_LOOSE = re.compile(r"\s*0*([1-9][0-9]{0,5})\s*[xX*×]\s*0*([1-9][0-9]{0,5})\s*")


def parse_size(value: str) -> tuple[int, int] | None:
    """``"WxH"`` -> ``(w, h)`` for the canonical spelling only; anything else -> ``None``.

    Canonical = ASCII digits without sign or leading zeros, a lowercase ``x``, at most six
    digits per edge (so absurd inputs never reach arithmetic), both edges >= 1.
    """
    if not isinstance(value, str) or not _CANONICAL.fullmatch(value):
        return None
    w, _, h = value.partition("x")
    return int(w), int(h)


def _spelling_hint(value: str) -> str | None:
    """The canonical spelling of a near-miss such as ``1024X1024`` (None if there is none)."""
    if value != "auto" and value.strip().lower() == "auto":
        return "auto"
    match = _LOOSE.fullmatch(value)
    if match is None:
        return None
    return f"{int(match.group(1))}x{int(match.group(2))}"


def _show(value: str) -> str:
    """A caller's value, cut short, for an error message."""
    return value if len(value) <= 40 else value[:40] + "…"


def dimensions_for(size: str | None, default_size: str) -> tuple[int, int] | None:
    """The pixel size a request asks for: ``size`` if given, else the route's default.

    ``None`` means ``auto`` (the upstream picks), which callers that estimate cost or
    render locally must handle themselves.
    """
    chosen = size if size is not None else default_size
    return None if chosen == "auto" else parse_size(chosen)


# -- the official gpt-image-2 rules ----------------------------------------------------------


def official_problems(width: int, height: int) -> list[str]:
    """Every official rule (width, height) breaks, as sentence fragments (empty = valid).

    All checks are integer arithmetic so the boundaries are exact (3:1 passes, 3.01:1 fails).
    """
    problems = []
    if width % OFFICIAL_STEP or height % OFFICIAL_STEP:
        problems.append("width and height must both be divisible by 16")
    long_edge, short_edge = max(width, height), min(width, height)
    if long_edge > OFFICIAL_MAX_EDGE:
        problems.append(f"the longest edge must be at most {OFFICIAL_MAX_EDGE} (got {long_edge})")
    if long_edge > OFFICIAL_MAX_RATIO * short_edge:
        shown = f"{long_edge / short_edge:.2f}"
        if shown == "3.00":  # 3.004:1 must not read as 3.00:1 in a rejection
            shown = f"{long_edge / short_edge:.4f}"
        problems.append(f"the long edge must be at most 3 times the short edge (got {shown}:1)")
    pixels = width * height
    if not OFFICIAL_MIN_PIXELS <= pixels <= OFFICIAL_MAX_PIXELS:
        problems.append(
            f"the total pixels must be between {OFFICIAL_MIN_PIXELS:,} and {OFFICIAL_MAX_PIXELS:,} (got {pixels:,})"
        )
    return problems


def is_official_size(width: int, height: int) -> bool:
    """Whether (width, height) meets every official gpt-image-2 rule."""
    return not official_problems(width, height)


def _official_target(width: float, height: float) -> tuple[float, float]:
    """The request moved into the valid region with the fewest, most obvious changes.

    A too-narrow shape gets its short edge raised to a third of the long one (the long
    edge is usually the deliberate choice: 3840x1264 -> 3840x1280); then a too-long edge
    or a wrong pixel count is fixed by uniform scaling, which keeps the shape
    (4096x4096 -> 2880x2880, 256x256 -> ~810x810). Each step cannot undo the previous ones.
    """
    long_edge, short_edge = max(width, height), min(width, height)
    short_edge = max(short_edge, long_edge / OFFICIAL_MAX_RATIO)
    if long_edge > OFFICIAL_MAX_EDGE:
        short_edge *= OFFICIAL_MAX_EDGE / long_edge
        long_edge = OFFICIAL_MAX_EDGE
    pixels = long_edge * short_edge
    if pixels > OFFICIAL_MAX_PIXELS or pixels < OFFICIAL_MIN_PIXELS:
        scale = math.sqrt((OFFICIAL_MAX_PIXELS if pixels > OFFICIAL_MAX_PIXELS else OFFICIAL_MIN_PIXELS) / pixels)
        long_edge, short_edge = long_edge * scale, short_edge * scale
    return (long_edge, short_edge) if width >= height else (short_edge, long_edge)


def _grid_around(value: float, radius: int) -> range:
    step = OFFICIAL_STEP
    lo = max(step, (math.floor(value / step) - radius + 1) * step)
    hi = min(OFFICIAL_MAX_EDGE, (math.ceil(value / step) + radius - 1) * step)
    return range(lo, hi + 1, step)


def nearest_official(width: int, height: int) -> tuple[int, int]:
    """The valid gpt-image-2 size to suggest for (width, height).

    First the request is moved into the valid region (:func:`_official_target`); then,
    among the valid 16-pixel-grid sizes around that point (the grid neighbours of each
    edge, widened only if none is valid), the one nearest the *request* wins, measured
    in log space (scale-free: 16 pixels matter more on a short edge). Ties go to the
    ratio nearer the request, then to the larger image. So a near miss changes as few
    edges as possible (1792x936 -> 1792x944, 3840x2176 -> 3840x2160, 1024x624 -> 1024x640)
    and a far miss keeps its shape (4096x4096 -> 2880x2880, 256x256 -> 816x816).
    """
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    tw, th = _official_target(width, height)
    log_w, log_h, log_ratio = math.log(width), math.log(height), math.log(width / height)
    for radius in range(1, OFFICIAL_MAX_EDGE // OFFICIAL_STEP + 1):
        best: tuple[tuple[float, float, int, int], tuple[int, int]] | None = None
        for w in _grid_around(tw, radius):
            for h in _grid_around(th, radius):
                if official_problems(w, h):
                    continue
                distance = (math.log(w) - log_w) ** 2 + (math.log(h) - log_h) ** 2
                # Last key: between mirror images, keep the request's orientation.
                key = (round(distance, 12), abs(math.log(w / h) - log_ratio), -w * h, (h - w) * (width - height))
                if best is None or key < best[0]:
                    best = (key, (w, h))
        if best is not None:
            return best[1]
    raise AssertionError("unreachable: the grid holds valid sizes")  # pragma: no cover


def check_official_size(size: str) -> None:
    """gpt-image-2 rules: ``auto`` or WxH, edges multiples of 16, longest edge <= 3840,
    long:short <= 3:1, 655,360 <= pixels <= 8,294,400. Raises with the nearest valid size."""
    if size == "auto":
        return
    parsed = parse_size(size)
    if parsed is None:
        fixed = _spelling_hint(size)
        dims = parse_size(fixed) if fixed is not None else None
        if fixed == "auto" or (dims is not None and is_official_size(*dims)):
            tail = f"; did you mean '{fixed}'?"
        elif dims is not None:
            tail = "; the nearest valid size is {}x{}.".format(*nearest_official(*dims))
        else:
            tail = f", e.g. {', '.join(repr(s) for s in OFFICIAL_EXAMPLES)}."
        raise InvalidRequest(
            f"Invalid size '{_show(size)}'. Use 'auto' or WIDTHxHEIGHT with a lowercase x and no spaces{tail}",
            param="size",
        )
    problems = official_problems(*parsed)
    if problems:
        w, h = nearest_official(*parsed)
        text = "; ".join(problems)
        raise InvalidRequest(
            f"Invalid size '{size}'. {text[0].upper()}{text[1:]}; the nearest valid size is {w}x{h}.",
            param="size",
        )


# -- size tables (ratio -> tier -> "WxH") -----------------------------------------------------


def _table_dims(size: str) -> tuple[int, int] | None:
    """A table entry's (w, h); ``None`` for an entry no request could match ("0x0", junk).

    The catalog loader only checks that entries look like digits-x-digits, so be lenient
    about spelling ("0848x1280") but never let a zero edge reach ``math.log``.
    """
    parsed = parse_size(size)
    if parsed is None:
        match = _LOOSE.fullmatch(size)
        parsed = (int(match.group(1)), int(match.group(2))) if match else None
    return parsed


def _ratio_value(ratio: str, tiers: Mapping[str, str]) -> float:
    """``"16:9"`` -> 16/9; a label that is not ``a:b`` falls back to the row's own sizes."""
    a, sep, b = ratio.partition(":")
    try:
        value = float(a) / float(b) if sep else 0.0
    except (ValueError, ZeroDivisionError):
        value = 0.0
    if value > 0 and math.isfinite(value):
        return value
    logs = [math.log(d[0] / d[1]) for d in map(_table_dims, tiers.values()) if d is not None]
    return math.exp(sum(logs) / len(logs)) if logs else 1.0


def table_examples(table: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Sizes to show a caller who sent none usable: the 2K row of 1:1, 16:9 and 9:16."""
    examples = [table[r]["2K"] for r in ("1:1", "16:9", "9:16") if "2K" in table.get(r, {})]
    if not examples:
        examples = [size for tiers in table.values() for size in tiers.values()][:3]
    return examples


def _or_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def nearest_table_size(width: int, height: int, table: Mapping[str, Mapping[str, str]]) -> tuple[str, str, str]:
    """(size, ratio, tier) of the table entry nearest in aspect ratio, then in pixel count.

    Ratio: smallest |log(w/h) - log(ratio)|, so 2:1 and 1:2 are equally far from 1:1.
    Tier: among that ratio's tiers, smallest |log(pixels) - log(tier pixels)|, so a
    request is matched to 1K/2K/4K by scale, not by absolute pixel difference.
    """
    rows = {
        ratio: usable
        for ratio, tiers in table.items()
        if (usable := {tier: size for tier, size in tiers.items() if _table_dims(size) is not None})
    }
    if not rows:
        raise ValueError("the size table has no usable sizes")
    target = math.log(width / height)
    ratio = min(rows, key=lambda r: abs(math.log(_ratio_value(r, rows[r])) - target))
    tiers = rows[ratio]
    pixels = width * height

    def scale_distance(tier: str) -> float:
        w, h = _table_dims(tiers[tier]) or (1, 1)  # rows only hold usable entries
        return abs(math.log(w * h / pixels))

    tier = min(tiers, key=scale_distance)
    return tiers[tier], ratio, tier


def check_table_size(size: str, table: Mapping[str, Mapping[str, str]], route_label: str) -> None:
    """Table mode (e.g. gpt-image-2-vip): only the listed sizes; ``auto`` is refused too,
    because the route has no "let the upstream pick" behaviour to fall back on."""
    allowed = {s for tiers in table.values() for s in tiers.values()}
    if size in allowed:
        return
    if not any(_table_dims(s) is not None for s in allowed):
        raise InvalidRequest(
            f"{route_label} has no explicit sizes configured; remove size from the request.", param="size"
        )
    examples = _or_list(table_examples(table))
    summary = f"{len(allowed)} sizes: {'/'.join(_tier_names(table))} for ratios {', '.join(table)}"
    if size == "auto":
        raise InvalidRequest(
            f"size 'auto' is not accepted by {route_label}; pass an explicit size such as {examples} ({summary}).",
            param="size",
        )
    parsed = parse_size(size)
    if parsed is None:
        fixed = _spelling_hint(size)
        parsed = parse_size(fixed) if fixed is not None else None
        if parsed is None or fixed is None:
            raise InvalidRequest(
                f"Invalid size '{_show(size)}' for {route_label}; pass WIDTHxHEIGHT with a lowercase x from the "
                f"size table, e.g. {examples} ({summary}).",
                param="size",
            )
        if fixed in allowed:
            raise InvalidRequest(
                f"Invalid size '{_show(size)}' for {route_label}; write it with a lowercase x and no spaces: {fixed}.",
                param="size",
            )
    nearest, ratio, tier = nearest_table_size(*parsed, table)
    raise InvalidRequest(
        f"size {_show(size)} is not supported by {route_label}; the nearest allowed size is {nearest} "
        f"({ratio}, {tier}). The route takes {summary}.",
        param="size",
    )


def _tier_names(table: Mapping[str, Mapping[str, str]]) -> list[str]:
    return list(dict.fromkeys(tier for tiers in table.values() for tier in tiers))
