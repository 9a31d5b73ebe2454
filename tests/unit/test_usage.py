from __future__ import annotations

import random
import re
import string
from dataclasses import fields
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from imagerelay.domain.types import ImageRequest, InputImage, Usage
from imagerelay.domain.usage import (
    PARTIAL_IMAGE_OUTPUT_TOKENS,
    QUALITIES,
    STANDARD_SIZES,
    auto_size,
    delivered_usage,
    input_image_tokens,
    output_image_tokens,
    reported_quality,
    reported_usage,
    request_input_image_tokens,
    simulated_usage,
    text_tokens,
    worst_case_quality,
    worst_case_usage,
)

LEGACY_MODELS = ("gpt-image-1", "gpt-image-1.5", "gpt-image-1-mini")


def image(width: int, height: int, part: str = "image") -> InputImage:
    return InputImage(data=b"", mime="image/png", width=width, height=height, part=part)


def request(**kw: Any) -> ImageRequest:
    kw.setdefault("endpoint", "edits" if kw.get("images") else "generations")
    kw.setdefault("model", "gpt-image-2")
    kw.setdefault("prompt", "a red fox in the snow")
    return ImageRequest(**kw)


def usd3(tokens: int, per_million: str) -> Decimal:
    """Tokens at a per-1M price, rounded to the cent-and-a-tenth like the list prices."""
    return (Decimal(tokens) * Decimal(per_million) / 1_000_000).quantize(Decimal("0.001"), ROUND_HALF_UP)


# --------------------------------------------------------------------------- output tokens

# Official gpt-image-2 per-image list prices at $30 / 1M output tokens.
GPT_IMAGE_2_LIST = [
    (1024, 1024, "low", "0.006"),
    (1024, 1024, "medium", "0.053"),
    (1024, 1024, "high", "0.211"),
    (1024, 1536, "low", "0.005"),
    (1024, 1536, "medium", "0.041"),
    (1024, 1536, "high", "0.165"),
    (1536, 1024, "low", "0.005"),
    (1536, 1024, "medium", "0.041"),
    (1536, 1024, "high", "0.165"),
]


@pytest.mark.parametrize(("w", "h", "quality", "price"), GPT_IMAGE_2_LIST)
def test_gpt_image_2_reproduces_the_list_prices(w: int, h: int, quality: str, price: str) -> None:
    assert usd3(output_image_tokens("gpt-image-2", w, h, quality), "30") == Decimal(price)


@pytest.mark.parametrize(
    ("w", "h", "quality", "expected"),
    [
        # exact token counts of the formula, incl. the figures OpenAI's calculator shows
        (1024, 1024, "low", 196),
        (1024, 1024, "medium", 1756),
        (1024, 1024, "high", 7024),
        (1536, 1024, "low", 158),
        (1536, 1024, "medium", 1372),
        (1536, 1024, "high", 5488),
        (1024, 1536, "high", 5488),
        (1792, 1024, "high", 5063),
        (3584, 2048, "high", 12329),
        (3840, 2160, "high", 13342),
        (2880, 2880, "high", 23719),  # the largest legal size: the per-image maximum
        (1024, 640, "high", 3824),  # smallest area allowed (655,360 px)
    ],
)
def test_gpt_image_2_token_counts(w: int, h: int, quality: str, expected: int) -> None:
    assert output_image_tokens("gpt-image-2", w, h, quality) == expected


def test_gpt_image_2_square_is_roughly_the_documented_counts() -> None:
    # upstream-protocols.md: "roughly 200 / 1,760 / 7,030 output tokens for a square image"
    for quality, approx in zip(QUALITIES, (200, 1760, 7030), strict=True):
        assert abs(output_image_tokens("gpt-image-2", 1024, 1024, quality) - approx) <= 10


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-2-2026-04-21", "my-azure-deployment"])
def test_gpt_image_2_rules_for_its_snapshots_and_unknown_names(model: str) -> None:
    assert output_image_tokens(model, 1024, 1024, "high") == 7024


def test_gpt_image_2_is_symmetric_and_grows_with_quality_and_area() -> None:
    sizes = [(1024, 1024), (1536, 1024), (2048, 2048), (3840, 2160), (2880, 2880), (1280, 544), (3840, 1280)]
    for w, h in sizes:
        counts = [output_image_tokens("gpt-image-2", w, h, q) for q in QUALITIES]
        assert counts == sorted(counts) and len(set(counts)) == 3
        assert counts == [output_image_tokens("gpt-image-2", h, w, q) for q in QUALITIES]
    for q in QUALITIES:  # same aspect ratio, larger area -> more tokens
        assert output_image_tokens("gpt-image-2", 1024, 1024, q) < output_image_tokens("gpt-image-2", 2048, 2048, q)
        assert output_image_tokens("gpt-image-2", 2048, 2048, q) < output_image_tokens("gpt-image-2", 2880, 2880, q)
        assert output_image_tokens("gpt-image-2", 1280, 720, q) < output_image_tokens("gpt-image-2", 3840, 2160, q)


# Official output tokens per image for the gpt-image-1 family.
GPT_IMAGE_1_TABLE = {
    (1024, 1024): (272, 1056, 4160),
    (1024, 1536): (408, 1584, 6240),
    (1536, 1024): (400, 1568, 6208),
}


@pytest.mark.parametrize("model", LEGACY_MODELS)
@pytest.mark.parametrize("size", list(GPT_IMAGE_1_TABLE))
def test_gpt_image_1_family_token_table(model: str, size: tuple[int, int]) -> None:
    got = tuple(output_image_tokens(model, *size, q) for q in QUALITIES)
    assert got == GPT_IMAGE_1_TABLE[size]


@pytest.mark.parametrize(
    ("w", "h", "quality", "price"),
    [  # gpt-image-1 list prices at $40 / 1M (1024x1024 high is listed as $0.167 but
        # its 4,160 tokens cost $0.1664: the token table, not that list price, is the rule)
        (1024, 1024, "low", "0.011"),
        (1024, 1024, "medium", "0.042"),
        (1024, 1024, "high", "0.166"),
        (1024, 1536, "low", "0.016"),
        (1024, 1536, "medium", "0.063"),
        (1024, 1536, "high", "0.250"),
        (1536, 1024, "high", "0.248"),
    ],
)
def test_gpt_image_1_list_prices(w: int, h: int, quality: str, price: str) -> None:
    assert usd3(output_image_tokens("gpt-image-1", w, h, quality), "40") == Decimal(price)


@pytest.mark.parametrize(
    ("w", "h", "quality", "expected"),
    [
        (2048, 1024, "high", (128 + 1) * 64),  # 2:1 -> twice the tiles on the long side
        (1024, 2048, "low", 17 * 32),
        (512, 512, "medium", 33 * 32),  # a fixed budget: area does not matter
        (1000, 1500, "high", 65 * 96),
    ],
)
def test_gpt_image_1_generalises_by_aspect_ratio(w: int, h: int, quality: str, expected: int) -> None:
    assert output_image_tokens("gpt-image-1", w, h, quality) == expected


@pytest.mark.parametrize("bad", ["auto", "standard", "hd", "", "HIGH"])
def test_output_tokens_refuse_unresolved_quality(bad: str) -> None:
    with pytest.raises(ValueError):
        output_image_tokens("gpt-image-2", 1024, 1024, bad)


@pytest.mark.parametrize(("w", "h"), [(0, 1024), (1024, 0), (-16, 1024)])
def test_output_tokens_refuse_empty_sizes(w: int, h: int) -> None:
    with pytest.raises(ValueError):
        output_image_tokens("gpt-image-2", w, h, "low")


# --------------------------------------------------------------------------- quality


@pytest.mark.parametrize(
    ("given", "reported", "worst"),
    [
        (None, "medium", "high"),
        ("auto", "medium", "high"),
        ("low", "low", "low"),
        ("medium", "medium", "medium"),
        ("high", "high", "high"),
    ],
)
def test_auto_quality_is_resolved_explicitly(given: str | None, reported: str, worst: str) -> None:
    assert reported_quality(given) == reported
    assert worst_case_quality(given) == worst


def test_unknown_quality_is_refused_by_both_helpers() -> None:
    for helper in (reported_quality, worst_case_quality):
        with pytest.raises(ValueError):
            helper("hd")


# --------------------------------------------------------------------------- text tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("cat", 1),
        ("a cat", 2),
        ("a cat wearing a space suit", 8),
        ("Hello, world!", 6),
        ("...", 1),
        ("2048x2048", 3),
        ("一只穿着宇航服的猫", 7),
        ("café", 2),
    ],
)
def test_text_tokens(text: str, expected: int) -> None:
    assert text_tokens(text) == expected


def test_text_tokens_scale_with_length_and_are_deterministic() -> None:
    prompt = "A watercolor painting of a lighthouse at dusk, gulls overhead. "
    one = text_tokens(prompt)
    assert one > 0 and text_tokens(prompt * 10) == 10 * one
    assert text_tokens(prompt) == one
    # never below the crude bytes/6 bound nor above one token per byte
    long = prompt * 50
    assert len(long) // 6 <= text_tokens(long) <= len(long.encode())


def _runs_rule(text: str) -> int:
    """The documented rule, written out: ceil(utf-8 bytes / 4) per word or punctuation run."""
    return sum(-(-len(run.encode("utf-8")) // 4) for run in re.findall(r"\w+|[^\w\s]+", text))


def test_text_tokens_of_ascii_follow_the_run_rule_on_random_text() -> None:
    """ASCII prompts are counted by byte classes and block counts, not the regex: the two
    agree on every string, whitespace of every kind, control bytes and underscores too."""
    rng = random.Random(7)
    alphabet = string.printable + "\x00\x1c\x1d\x1e\x1f\x7f___"
    for _ in range(5_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
        assert text_tokens(text) == _runs_rule(text), repr(text)
    words = [
        "an",
        "astronaut",
        "riding",
        "a",
        "horse",
        "on",
        "mars,",
        "golden-hour",
        "light;",
        "f/1.8",
        "(35mm)",
        "ultra_detailed!!!",
    ]
    long = " ".join(rng.choice(words) for _ in range(5_000))  # ~32,000 characters, the prompt limit
    assert text_tokens(long) == _runs_rule(long)
    assert text_tokens("a cat-like robot!") == _runs_rule("a cat-like robot!") == 7  # a, cat, -, like, robot (2), !


# --------------------------------------------------------------------------- input images


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (512, 512, 65 + 129),
        (1024, 1024, 65 + 129),  # short side scaled to 512
        (1024, 1025, 65 + 129),  # observed: rounds down to one tile
        (512, 513, 65 + 2 * 129),  # observed: two tiles
        (1024, 1536, 65 + 2 * 129),  # 512x768
        (4096, 8192, 65 + 2 * 129),  # 2048x4096 fit -> 1024x2048 -> 512x1024
        (256, 256, 65 + 129),  # never scaled up
        (2000, 500, 65 + 4 * 129),  # 2000x500: short side already <= 512
        (6000, 1000, 65 + 4 * 129),  # fit 2048 -> 2048x341
    ],
)
def test_input_image_tokens_gpt_image_1_low_fidelity(w: int, h: int, expected: int) -> None:
    assert input_image_tokens("gpt-image-1", w, h) == expected
    assert input_image_tokens("gpt-image-1", w, h, high_fidelity=False) == expected


@pytest.mark.parametrize(
    ("w", "h", "extra"),
    [(1024, 1024, 4160), (1000, 1200, 4160), (1024, 1536, 6240), (1536, 1024, 6240), (1000, 1300, 6240)],
)
def test_high_input_fidelity_adds_the_documented_tokens(w: int, h: int, extra: int) -> None:
    base = input_image_tokens("gpt-image-1", w, h)
    assert input_image_tokens("gpt-image-1", w, h, high_fidelity=True) == base + extra
    # gpt-image-2 always processes inputs at high fidelity
    assert input_image_tokens("gpt-image-2", w, h) == base + extra
    assert input_image_tokens("gpt-image-2", w, h, high_fidelity=False) == base


def test_request_input_tokens_fidelity_on_the_first_image_only() -> None:
    imgs = (image(1024, 1024), image(1024, 1536, "image[1]"), image(512, 512, "image[2]"))
    low = sum(input_image_tokens("gpt-image-1", i.width, i.height) for i in imgs)
    assert request_input_image_tokens(request(images=imgs), "gpt-image-1") == low
    hi = request(images=imgs, upstream_params={"input_fidelity": "high"})
    assert request_input_image_tokens(hi, "gpt-image-1") == low + 4160
    assert request_input_image_tokens(hi, "gpt-image-1", worst_case=True) == low + 4160 + 6240 + 4160
    assert request_input_image_tokens(request(images=imgs), "gpt-image-2") == low + 4160
    assert request_input_image_tokens(request(images=imgs), "gpt-image-2", worst_case=True) == low + 4160 + 6240 + 4160
    assert request_input_image_tokens(request(), "gpt-image-2") == 0


def test_mask_is_not_billed_separately() -> None:
    req = request(images=(image(1024, 1024),), mask=image(1024, 1024, "mask"))
    assert request_input_image_tokens(req, "gpt-image-2") == input_image_tokens("gpt-image-2", 1024, 1024)


# --------------------------------------------------------------------------- auto size


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (None, (1024, 1024)),
        ((800, 800), (1024, 1024)),
        ((1250, 1000), (1024, 1024)),  # 5:4 still counts as square
        ((1260, 1000), (1536, 1024)),
        ((1920, 1080), (1536, 1024)),
        ((1080, 1920), (1024, 1536)),
        ((1000, 1260), (1024, 1536)),
    ],
)
def test_auto_size_follows_the_first_image(first: tuple[int, int] | None, expected: tuple[int, int]) -> None:
    assert auto_size(image(*first) if first else None) == expected
    assert expected in STANDARD_SIZES


# --------------------------------------------------------------------------- simulated usage


def test_simulated_usage_generation() -> None:
    req = request(prompt="a cat wearing a space suit", n=3, quality="high")
    usage = simulated_usage(req, "gpt-image-2", 1024, 1024)
    assert usage == Usage(input_text_tokens=8, input_image_tokens=0, output_image_tokens=3 * 7024)
    assert usage.to_official()["output_tokens"] == 21072


@pytest.mark.parametrize(("quality", "per_image"), [(None, 1756), ("auto", 1756), ("low", 196), ("high", 7024)])
def test_simulated_usage_reports_auto_as_medium(quality: str | None, per_image: int) -> None:
    usage = simulated_usage(request(quality=quality), "gpt-image-2", 1024, 1024)
    assert usage.output_image_tokens == per_image


@pytest.mark.parametrize(("stream", "partials", "extra"), [(True, 0, 0), (True, 1, 100), (True, 3, 300), (False, 3, 0)])
def test_simulated_usage_partials_add_100_each_when_streaming(stream: bool, partials: int, extra: int) -> None:
    req = request(quality="low", n=2, stream=stream, partial_images=partials)
    usage = simulated_usage(req, "gpt-image-2", 1536, 1024)
    assert PARTIAL_IMAGE_OUTPUT_TOKENS == 100
    assert usage.output_image_tokens == 2 * 158 + extra


def test_simulated_usage_edit_counts_every_input_image_once() -> None:
    imgs = (image(1024, 1024), image(2048, 1024, "image[1]"))
    req = request(images=imgs, n=2, quality="medium")
    usage = simulated_usage(req, "gpt-image-2", 1024, 1536)
    expected_in = input_image_tokens("gpt-image-2", 1024, 1024) + input_image_tokens(
        "gpt-image-2", 2048, 1024, high_fidelity=False
    )
    assert usage.input_image_tokens == expected_in
    assert usage.input_text_tokens == text_tokens(req.prompt)
    assert usage.output_image_tokens == 2 * 1372
    assert usage.cached_text_tokens == usage.cached_image_tokens == usage.output_text_tokens == 0


def test_simulated_usage_legacy_model() -> None:
    usage = simulated_usage(request(quality="high"), "gpt-image-1", 1536, 1024)
    assert usage.output_image_tokens == 6208


def test_usage_fields_are_ints() -> None:
    req = request(images=(image(1000, 700),), n=2, stream=True, partial_images=2)
    for usage in (
        simulated_usage(req, "gpt-image-2", 2048, 1152),
        worst_case_usage(req, "gpt-image-2", None, None).usage,
    ):
        for f in fields(usage):
            assert type(getattr(usage, f.name)) is int


# --------------------------------------------------------------------------- worst case usage


def test_worst_case_usage_auto_size_is_the_most_expensive_standard_size() -> None:
    worst = worst_case_usage(request(), "gpt-image-2", None, None)
    assert (worst.width, worst.height, worst.quality) == (1024, 1024, "high")
    assert worst.usage.output_image_tokens == 7024
    legacy = worst_case_usage(request(), "gpt-image-1", None, None)
    assert (legacy.width, legacy.height) == (1024, 1536) and legacy.usage.output_image_tokens == 6240


def test_worst_case_usage_counts_everything_per_output_image() -> None:
    imgs = (image(1024, 1024), image(1024, 1536, "image[1]"))
    req = request(
        images=imgs, n=4, quality="medium", partial_images=2, stream=True, prompt="a cat wearing a space suit"
    )
    worst = worst_case_usage(req, "gpt-image-2", 2048, 1152)
    per_image = output_image_tokens("gpt-image-2", 2048, 1152, "medium")
    assert worst.usage.output_image_tokens == 4 * (per_image + 200)
    assert worst.usage.input_text_tokens == 4 * 8
    assert worst.usage.input_image_tokens == 4 * (194 + 4160 + 323 + 6240)
    assert worst.usage.cached_text_tokens == worst.usage.cached_image_tokens == 0


# -- what an upstream reports -------------------------------------------------------------------


GOOD = {
    "total_tokens": 210,
    "input_tokens": 14,
    "output_tokens": 196,
    "input_tokens_details": {"text_tokens": 14, "image_tokens": 0},
    "output_tokens_details": {"image_tokens": 196, "text_tokens": 0},
}


def test_a_real_report_is_used() -> None:
    usage = reported_usage(GOOD)
    assert usage is not None and usage.input_text_tokens == 14 and usage.output_image_tokens == 196


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "usage",
        {},
        {
            **GOOD,
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 0,
            "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
            "output_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        },
        {**GOOD, "output_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0},
        {**GOOD, "total_tokens": "many"},
        {**GOOD, "input_tokens": -5},
        {**GOOD, "output_tokens": 1.5},
        {**GOOD, "output_tokens": True},
        {**GOOD, "input_tokens_details": {"text_tokens": "x"}},
        {**GOOD, "output_tokens_details": ["image_tokens"]},
        {**GOOD, "output_tokens": 10**12},
    ],
    ids=lambda r: repr(r)[:40],
)
def test_empty_zero_or_garbage_reports_count_as_missing(raw: object) -> None:
    assert reported_usage(raw) is None


def test_a_delivered_share_keeps_inputs_and_splits_outputs() -> None:
    usage = reported_usage(GOOD)
    assert usage is not None
    half = delivered_usage(usage, 1, 2)
    assert half.input_tokens == usage.input_tokens and half.output_image_tokens == 98
    assert delivered_usage(usage, 1, 3).output_image_tokens == 66  # rounded up
    assert delivered_usage(usage, 2, 2) == usage
