"""How the official Images API counts tokens for GPT Image models.

Pure functions, no I/O. The offline simulator uses them to report a realistic
``usage``; pricing uses them for the worst-case hold placed before a call and for the
fallback charge when an upstream succeeds without ``usage``. An upstream's reported
``usage`` is always the authority: these are estimates.

Model families (matched on the name, so dated snapshots and deployment names that
contain the official name work too):

* ``gpt-image-1``, ``gpt-image-1.5``, ``gpt-image-1-mini`` - any name containing
  ``gpt-image-1``: fixed token grid per quality (the official 3x3 table).
* everything else - ``gpt-image-2`` (the model this gateway serves): flexible sizes.

``quality="auto"`` is resolved explicitly by the caller, never inside the token
functions: :func:`reported_quality` (``auto`` -> ``medium``, what the simulator
reports and what the fallback charge assumes) and :func:`worst_case_quality`
(``auto`` -> ``high``, what a hold assumes).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from imagerelay.domain.types import ImageRequest, InputImage, Usage

__all__ = [
    "PARTIAL_IMAGE_OUTPUT_TOKENS",
    "QUALITIES",
    "STANDARD_SIZES",
    "WorstCaseUsage",
    "auto_size",
    "input_image_tokens",
    "delivered_usage",
    "output_image_tokens",
    "reported_quality",
    "reported_usage",
    "request_input_image_tokens",
    "simulated_usage",
    "text_tokens",
    "worst_case_quality",
    "worst_case_usage",
]

#: Each streamed partial image adds this many image output tokens (official docs).
PARTIAL_IMAGE_OUTPUT_TOKENS = 100

QUALITIES: tuple[str, ...] = ("low", "medium", "high")

#: The sizes ``size="auto"`` chooses among (square, landscape, portrait).
STANDARD_SIZES: tuple[tuple[int, int], ...] = ((1024, 1024), (1536, 1024), (1024, 1536))


# --------------------------------------------------------------------------- quality


def reported_quality(quality: str | None) -> str:
    """The quality the API renders and reports for a request: ``auto``/omitted -> ``medium``.

    Used by the simulator (its ``quality`` response field says ``medium`` too) and by
    the fallback charge, which bills what the call most likely cost.
    """
    return "medium" if quality in (None, "auto") else _checked_quality(quality)


def worst_case_quality(quality: str | None) -> str:
    """The most expensive quality a request may render at: ``auto``/omitted -> ``high``."""
    return "high" if quality in (None, "auto") else _checked_quality(quality)


def _checked_quality(quality: str) -> str:
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES} (resolve 'auto' first); got {quality!r}")
    return quality


def _is_legacy(model: str) -> bool:
    return "gpt-image-1" in model.lower()


# --------------------------------------------------------------------------- text


_CHUNK = re.compile(r"\w+|[^\w\s]+")

# Each ASCII byte as its class for the regex above: a word character "w", whitespace
# " ", anything else (punctuation) "p". Only the first 128 entries are ever used.
_ASCII_CLASSES = bytes(
    ord("w") if chr(b).isalnum() or b == ord("_") else ord(" ") if chr(b).isspace() else ord("p") for b in range(256)
)


@functools.lru_cache(maxsize=64)
def text_tokens(text: str) -> int:
    """Approximate prompt tokens (no tokenizer dependency).

    The text is split like a BPE pre-tokenizer into runs of word characters and runs
    of punctuation (whitespace is free); each run costs ``ceil(utf8_bytes / 4)`` tokens,
    at least 1. English words of up to 4 letters are 1 token, longer ones 2+, CJK text
    about 3 tokens per 4 characters. Compared with ``o200k_base`` this overestimates
    ordinary English by roughly 10-30 %, which is the safe side for a hold; the
    upstream's reported ``text_tokens`` replaces it when a call settles.

    Memoised (a call counts its prompt for its hold and again for its price basis) and,
    for ASCII text, counted by :func:`_ascii_text_tokens`: the regex walk took 100-150 us
    of the event loop for a 1,000-character prompt and 2-3 ms for 28,000 characters (a
    loaded 2-core VM); those passes take a fifth to a half of that.
    """
    if text.isascii():
        return _ascii_text_tokens(text)
    return sum(-(-len(chunk.encode("utf-8")) // 4) for chunk in _CHUNK.findall(text))


def _ascii_text_tokens(text: str) -> int:
    """:func:`text_tokens` of ASCII text (a character is a byte) in a few passes of C.

    Each byte becomes its class; word and punctuation runs that touch are parted by a
    space; then every run gets three more bytes of its class at its start, so that the
    non-overlapping 4-byte blocks of a run of ``L`` bytes number ``ceil(L / 4)``, and
    spaces keep those blocks from spanning two runs. Equal to the regex count on every
    ASCII string (tests/unit/test_usage.py checks it on random ones)."""
    classes = text.encode("ascii").translate(_ASCII_CLASSES)
    runs = b" " + classes.replace(b"wp", b"w p").replace(b"pw", b"p w")
    padded = runs.replace(b" w", b" wwww").replace(b" p", b" pppp")
    return padded.count(b"wwww") + padded.count(b"pppp")


# --------------------------------------------------------------------------- output


# gpt-image-2 (reverse-engineered from the cost calculator on OpenAI's image-generation
# guide, published by a developer on the OpenAI community forum, "gpt-image-2 output
# pricing calculator", June 2026).
_V2_QUALITY_FACTOR = {"low": 16, "medium": 48, "high": 96}
_V2_AREA_OFFSET = 2_000_000
_V2_AREA_SCALE = 4_000_000

# gpt-image-1 family: tiles on the short side per quality.
_V1_SHORT_TILES = {"low": 16, "medium": 32, "high": 64}


def output_image_tokens(model: str, width: int, height: int, quality: str) -> int:
    """Image output tokens for ONE image of ``width`` x ``height`` at ``quality``.

    ``quality`` must be ``low``, ``medium`` or ``high``: resolve ``auto`` first with
    :func:`reported_quality` or :func:`worst_case_quality`.

    gpt-image-2 (flexible sizes up to 3840 px, 8,294,400 px)::

        f      = 16 | 48 | 96                      for low | medium | high
        short  = round_half_up(f * min(w, h) / max(w, h))
        tokens = ceil(f * short * (2_000_000 + w * h) / 4_000_000)

    Source: the algorithm behind the calculator on OpenAI's image-generation guide, as
    reverse-engineered on the OpenAI developer forum (not an official formula). It
    reproduces every official figure we have: the six list prices at $30/1M
    (1024x1024 low/medium/high = 196/1756/7024 tokens = $0.006/$0.053/$0.211;
    1536x1024 and 1024x1536 = 158/1372/5488 = $0.005/$0.041/$0.165) and the
    calculator's 1792x1024 high = 5063 and 3584x2048 high = 12329. Note that it is not
    monotonic in area: at the same quality a 1536x1024 image costs less than 1024x1024.

    gpt-image-1 / 1.5 / 1-mini: with ``B`` = 16/32/64 tiles on the short side for
    low/medium/high, each side gets ``ceil(B * side / short)`` tiles and
    ``tokens = (w_tiles + 1) * h_tiles``. This reproduces the official table exactly
    (1024x1024 272/1056/4160, 1024x1536 408/1584/6240, 1536x1024 400/1568/6208) and
    generalises it by aspect ratio (those models render a fixed pixel budget, so the
    count does not grow with area).
    """
    quality = _checked_quality(quality)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive; got {width}x{height}")
    if _is_legacy(model):
        b = _V1_SHORT_TILES[quality]
        short = min(width, height)
        w_tiles = -(-b * width // short)
        h_tiles = -(-b * height // short)
        return (w_tiles + 1) * h_tiles
    f = _V2_QUALITY_FACTOR[quality]
    long_edge, short_edge = max(width, height), min(width, height)
    short_factor = (2 * f * short_edge + long_edge) // (2 * long_edge)
    return -(-(f * short_factor * (_V2_AREA_OFFSET + width * height)) // _V2_AREA_SCALE)


def auto_size(first_image: InputImage | None = None) -> tuple[int, int]:
    """The standard size ``size="auto"`` most likely renders: the first input image's
    orientation (long:short above 5:4 is landscape/portrait), else square."""
    if first_image is None:
        return STANDARD_SIZES[0]
    w, h = first_image.width, first_image.height
    if 4 * w > 5 * h:
        return STANDARD_SIZES[1]
    if 4 * h > 5 * w:
        return STANDARD_SIZES[2]
    return STANDARD_SIZES[0]


# --------------------------------------------------------------------------- input


_INPUT_BASE_TOKENS = 65
_INPUT_TILE_TOKENS = 129
_HIGH_FIDELITY_SQUARE = 4160
_HIGH_FIDELITY_OTHER = 6240


def input_image_tokens(model: str, width: int, height: int, *, high_fidelity: bool | None = None) -> int:
    """Image input tokens for one edit input of ``width`` x ``height``.

    The official "GPT Image 1" rule from OpenAI's images-and-vision guide: scale down
    to fit 2048x2048, then scale down so the short side is at most 512 px; count
    512 px tiles; ``65 + 129 * tiles``. With high input fidelity add 4,160 tokens for
    a square image and 6,240 otherwise ("square" here: long:short at most 5:4).

    ``high_fidelity=None`` means the model's default: gpt-image-2 always processes
    inputs at high fidelity (it takes no ``input_fidelity`` parameter), the gpt-image-1
    family defaults to low. OpenAI publishes no separate input rule for gpt-image-2;
    we apply the GPT Image 1 rule to it (an approximation).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive; got {width}x{height}")
    if high_fidelity is None:
        high_fidelity = not _is_legacy(model)
    w, h = _fit(width, height, 2048, max)
    w, h = _fit(w, h, 512, min)
    tiles = -(-w // 512) * -(-h // 512)
    tokens = _INPUT_BASE_TOKENS + _INPUT_TILE_TOKENS * tiles
    if high_fidelity:
        long_edge, short_edge = max(width, height), min(width, height)
        tokens += _HIGH_FIDELITY_SQUARE if 4 * long_edge <= 5 * short_edge else _HIGH_FIDELITY_OTHER
    return tokens


def _fit(width: int, height: int, limit: int, side: Callable[[int, int], int]) -> tuple[int, int]:
    """Scale down (never up) so that ``side(width, height) <= limit``; floors like the API."""
    edge = side(width, height)
    if edge <= limit:
        return width, height
    return max(1, width * limit // edge), max(1, height * limit // edge)


def _request_fidelity(request: ImageRequest, model: str) -> bool | None:
    if _is_legacy(model):
        return request.upstream_params.get("input_fidelity") == "high"
    return None


def request_input_image_tokens(request: ImageRequest, model: str, *, worst_case: bool = False) -> int:
    """Input image tokens for all of an edit's images (the mask is not billed separately).

    High input fidelity applies to the first image only ("the first image gets richer
    textures"); the worst case assumes it applies to every image, since upstreams
    differ (gpt-image-1.5 preserves the first four) and a hold must not fall short.
    """
    fidelity = _request_fidelity(request, model)
    total = 0
    for index, image in enumerate(request.images):
        hi = fidelity if (index == 0 or worst_case) else False
        total += input_image_tokens(model, image.width, image.height, high_fidelity=hi)
    return total


# --------------------------------------------------------------------------- usage


def _partials(request: ImageRequest) -> int:
    return request.partial_images or 0


def simulated_usage(request: ImageRequest, model: str, width: int, height: int) -> Usage:
    """What the official API would report for ``request`` rendered at ``width`` x ``height``.

    ``n`` images at :func:`reported_quality`, plus 100 output tokens per streamed
    partial image (partials are streamed once per call, and only when streaming), the
    prompt's :func:`text_tokens` and every input image's tokens once. No cached tokens.
    """
    quality = reported_quality(request.quality)
    image_out = request.n * output_image_tokens(model, width, height, quality)
    if request.stream:
        image_out += _partials(request) * PARTIAL_IMAGE_OUTPUT_TOKENS
    return Usage(
        input_text_tokens=text_tokens(request.prompt),
        input_image_tokens=request_input_image_tokens(request, model),
        output_image_tokens=image_out,
    )


@dataclass(frozen=True, slots=True)
class WorstCaseUsage:
    """The largest usage a request can be reported with, and the size/quality it assumes."""

    usage: Usage
    width: int
    height: int
    quality: str


def worst_case_usage(request: ImageRequest, model: str, width: int | None, height: int | None) -> WorstCaseUsage:
    """An upper bound on the usage an upstream may report for ``request``.

    * size: the given one; ``None`` (``auto``) -> the most expensive of
      :data:`STANDARD_SIZES` at the worst quality (``auto`` picks among them);
    * quality: :func:`worst_case_quality` (``auto`` -> ``high``);
    * partial images: 100 tokens each, per output image, streaming or not;
    * inputs (prompt text and images, every image at high fidelity where the model
      supports it) counted once per output image: developers report ``n > 1`` billed
      as separate generations with no input sharing. No cache discount.
    """
    quality = worst_case_quality(request.quality)
    if width is None or height is None:
        width, height = max(STANDARD_SIZES, key=lambda s: output_image_tokens(model, s[0], s[1], quality))
    n = request.n
    per_image = output_image_tokens(model, width, height, quality)
    usage = Usage(
        input_text_tokens=n * text_tokens(request.prompt),
        input_image_tokens=n * request_input_image_tokens(request, model, worst_case=True),
        output_image_tokens=n * (per_image + _partials(request) * PARTIAL_IMAGE_OUTPUT_TOKENS),
    )
    return WorstCaseUsage(usage=usage, width=width, height=height, quality=quality)


# --------------------------------------------------------------------------- upstream reports


_USAGE_COUNTS = ("input_tokens", "output_tokens", "total_tokens")
_DETAIL_COUNTS = ("text_tokens", "image_tokens", "cached_tokens")
# More tokens than any image call can use: a report above it is garbage, not a bill.
_MAX_TOKENS = 100_000_000


def reported_usage(raw: Any) -> Usage | None:
    """An upstream's ``usage`` if it can be billed from, else ``None`` (charge the estimate).

    An image is never free, so a report is refused - treated like a missing one - when
    it is not an object, when any count in it is not a whole number from 0 to 10^8
    (strings, floats, negatives, booleans), or when it has no input or no output tokens
    (``{}``, all zeros). Refusing means the caller pays the estimate for the request
    (``pricing.fallback_quote``), and the usage record's price basis says so.
    """
    if not isinstance(raw, dict):
        return None
    for key in _USAGE_COUNTS:
        if not _count_ok(raw.get(key)):
            return None
    for key in ("input_tokens_details", "output_tokens_details"):
        details = raw.get(key)
        if details is None:
            continue
        if not isinstance(details, dict) or not all(_count_ok(details.get(k)) for k in _DETAIL_COUNTS):
            return None
        cached = details.get("cached_tokens_details")
        if cached is not None and (
            not isinstance(cached, dict) or not all(_count_ok(cached.get(k)) for k in _DETAIL_COUNTS)
        ):
            return None
    usage = Usage.from_official(raw)
    if usage is None or usage.input_tokens <= 0 or usage.output_tokens <= 0:
        return None
    return usage


def _count_ok(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TOKENS


def delivered_usage(usage: Usage, delivered: int, requested: int) -> Usage:
    """The share of a call's ``usage`` for ``delivered`` of its ``requested`` images.

    For a stream cut after some images were delivered: the inputs were consumed in
    full, the output tokens are counted per image delivered (rounded up, so the
    share of n images never sums below the whole).
    """
    if not 0 < delivered < requested:
        return usage
    share = -(-usage.output_image_tokens * delivered // requested)
    return replace(
        usage, output_image_tokens=share, output_text_tokens=-(-usage.output_text_tokens * delivered // requested)
    )
