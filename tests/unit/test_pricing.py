from __future__ import annotations

import itertools
import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from imagerelay.catalog.loader import load_catalog
from imagerelay.catalog.model import Billing, ModelPrices, RouteSpec
from imagerelay.domain.money import format_usd
from imagerelay.domain.money import to_micros as usd_to_micros
from imagerelay.domain.pricing import (
    PriceQuote,
    fallback_quote,
    per_call_price,
    price_model,
    usage_price,
    worst_case_quote,
)
from imagerelay.domain.types import ImageRequest, InputImage, Usage
from imagerelay.domain.usage import QUALITIES, STANDARD_SIZES, output_image_tokens, simulated_usage, text_tokens

try:
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - hypothesis is a dev extra
    HAVE_HYPOTHESIS = False

# Official prices, USD per 1M tokens: text in, cached text, image in, cached image, image out.
PRICE_TABLE = {
    "gpt-image-2": ("5.00", "1.25", "8.00", "2.00", "30.00"),
    "gpt-image-1.5": ("5.00", "1.25", "8.00", "2.00", "32.00"),
    "gpt-image-1": ("5.00", "1.25", "10.00", "2.50", "40.00"),
    "gpt-image-1-mini": ("2.00", "0.20", "2.50", "0.25", "8.00"),
}
ONE = Decimal(1)
ENTERPRISE = Decimal("1.2")


def prices_for(model: str) -> ModelPrices:
    ti, cti, ii, cii, io = (Decimal(p) for p in PRICE_TABLE[model])
    return ModelPrices(text_input=ti, cached_text_input=cti, image_input=ii, cached_image_input=cii, image_output=io)


GPT2 = prices_for("gpt-image-2")


def route(model: str = "gpt-image-2", mode: str = "usage", **kw: Any) -> RouteSpec:
    billing = Billing(mode=mode, price_per_call=Decimal("0.03") if mode == "per_call" else None)  # type: ignore[arg-type]
    return RouteSpec(group="g", model=model, name="r", params="p", billing=billing, pool="p", **kw)


def image(width: int, height: int, part: str = "image") -> InputImage:
    return InputImage(data=b"", mime="image/png", width=width, height=height, part=part)


def request(**kw: Any) -> ImageRequest:
    kw.setdefault("endpoint", "edits" if kw.get("images") else "generations")
    kw.setdefault("model", "gpt-image-2")
    kw.setdefault("prompt", "a red fox in the snow")
    return ImageRequest(**kw)


def assert_no_float(value: Any) -> None:
    assert not isinstance(value, float), value
    if isinstance(value, dict):
        for v in value.values():
            assert_no_float(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            assert_no_float(v)


def assert_well_typed(quote: PriceQuote) -> None:
    assert type(quote.micros) is int
    assert type(quote.multiplier) is Decimal
    assert quote.mode in ("per_call", "usage")
    json.dumps(quote.basis)  # JSON-serialisable as is
    assert_no_float(quote.basis)


# --------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "$0.000000"),
        (1, "$0.000001"),
        (30_000, "$0.030000"),
        (999_999, "$0.999999"),
        (1_000_000, "$1.000000"),
        (252_864, "$0.252864"),
        (12_345_678_901, "$12345.678901"),
        (-30_000, "-$0.030000"),
        (-1_000_001, "-$1.000001"),
    ],
)
def test_format_usd(micros: int, text: str) -> None:
    assert format_usd(micros) == text


@pytest.mark.parametrize("bad", [0.03, True, Decimal("0.03"), "30000"])
def test_format_usd_takes_int_micros_only(bad: Any) -> None:
    with pytest.raises(TypeError):
        format_usd(bad)


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        ("0.03", 30_000),
        (Decimal("0.03"), 30_000),
        ("0", 0),
        (5, 5_000_000),
        (" 1.5 ", 1_500_000),
        ("0.000001", 1),
        ("0.0000004999", 0),
        ("0.0000005", 1),  # half up
        ("0.0000015", 2),
        ("0.0000025", 3),  # half up, not half even
        ("-0.0000005", -1),  # ties away from zero
        ("-0.03", -30_000),
        ("1e-3", 1_000),
        ("123456789.123456", 123_456_789_123_456),
    ],
)
def test_usd_to_micros(amount: Any, micros: int) -> None:
    got = usd_to_micros(amount)
    assert got == micros and type(got) is int


@pytest.mark.parametrize("bad", [0.03, 1.0, True])
def test_usd_to_micros_refuses_floats_and_bools(bad: Any) -> None:
    with pytest.raises(TypeError):
        usd_to_micros(bad)


@pytest.mark.parametrize("bad", ["", "abc", "NaN", "Infinity", "0.03$", Decimal("NaN")])
def test_usd_to_micros_refuses_non_numbers(bad: Any) -> None:
    with pytest.raises(ValueError):
        usd_to_micros(bad)


def test_money_roundtrip() -> None:
    for micros in (0, 1, 30_000, 7_654_321, -42):
        assert usd_to_micros(format_usd(micros).replace("$", "")) == micros


# --------------------------------------------------------------------------- per call


def test_per_call_price() -> None:
    quote = per_call_price(Billing(mode="per_call", price_per_call=Decimal("0.03")))
    assert quote.micros == 30_000 and quote.mode == "per_call"
    assert quote.multiplier == 1 and quote.usage is None
    assert quote.basis == {"mode": "per_call", "price_per_call_usd": "0.03"}
    assert_well_typed(quote)


@pytest.mark.parametrize("billing", [Billing(mode="usage"), Billing(mode="per_call")])
def test_per_call_price_needs_a_price(billing: Billing) -> None:
    with pytest.raises(ValueError):
        per_call_price(billing)


def test_per_call_routes_ignore_the_multiplier_and_request() -> None:
    r = route(mode="per_call")
    big = request(n=10, quality="high", size="3840x2160", images=(image(4000, 4000),))
    for fn in (worst_case_quote, fallback_quote):
        quote = fn(big, r, None, ENTERPRISE, 3840, 2160)
        assert quote.micros == 30_000 and quote.mode == "per_call" and quote.multiplier == 1


# --------------------------------------------------------------------------- usage price

FIELDS = ("text_input", "cached_text_input", "image_input", "cached_image_input", "image_output")


def one_million_of(field: str) -> Usage:
    m = 1_000_000
    return {
        "text_input": Usage(input_text_tokens=m),
        "cached_text_input": Usage(input_text_tokens=m, cached_text_tokens=m),
        "image_input": Usage(input_image_tokens=m),
        "cached_image_input": Usage(input_image_tokens=m, cached_image_tokens=m),
        "image_output": Usage(output_image_tokens=m),
    }[field]


@pytest.mark.parametrize(("model", "field"), list(itertools.product(PRICE_TABLE, FIELDS)))
def test_one_million_tokens_cost_the_per_million_price(model: str, field: str) -> None:
    listed = Decimal(PRICE_TABLE[model][FIELDS.index(field)])
    prices = prices_for(model)
    quote = usage_price(one_million_of(field), prices, ONE)
    assert quote.micros == int(listed * 1_000_000)
    assert usage_price(one_million_of(field), prices, ENTERPRISE).micros == int(listed * ENTERPRISE * 1_000_000)
    assert_well_typed(quote)


@pytest.mark.parametrize(("model", "rates"), list(PRICE_TABLE.items()))
def test_mixed_usage_for_every_model(model: str, rates: tuple[str, ...]) -> None:
    ti, cti, ii, cii, io = (Decimal(r) for r in rates)
    usage = Usage(
        input_text_tokens=1_000,
        cached_text_tokens=400,
        input_image_tokens=2_000,
        cached_image_tokens=500,
        output_image_tokens=7_024,
    )
    exact = 600 * ti + 400 * cti + 1_500 * ii + 500 * cii + 7_024 * io
    quote = usage_price(usage, prices_for(model), ONE)
    assert Decimal(quote.micros) == exact  # all these rates have whole-µ$ totals here
    assert quote.basis["tokens"] == {
        "text_input": 600,
        "cached_text_input": 400,
        "image_input": 1_500,
        "cached_image_input": 500,
        "image_output": 7_024,
        "text_output": 0,
    }


@pytest.mark.parametrize(
    ("usage", "micros"),
    [
        # gpt-image-2: cached tokens are part of the input and billed at the cached rate
        (Usage(input_text_tokens=1_000), 5_000),
        (Usage(input_text_tokens=1_000, cached_text_tokens=1_000), 1_250),
        (Usage(input_text_tokens=1_000, cached_text_tokens=400), 3_500),
        (Usage(input_image_tokens=1_000), 8_000),
        (Usage(input_image_tokens=1_000, cached_image_tokens=1_000), 2_000),
        (Usage(input_image_tokens=1_000, cached_image_tokens=250), 6_500),
        # a cached count above its input count is capped at the input count
        (Usage(input_text_tokens=100, cached_text_tokens=500), 125),
        (Usage(cached_image_tokens=500), 0),
    ],
)
def test_cached_token_discounts(usage: Usage, micros: int) -> None:
    assert usage_price(usage, GPT2, ONE).micros == micros


def test_text_output_is_priced_when_the_model_prices_it() -> None:
    usage = Usage(output_text_tokens=1_000)
    assert usage_price(usage, GPT2, ONE).micros == 0
    priced = GPT2.model_copy(update={"text_output": Decimal("10.00")})
    assert usage_price(usage, priced, ONE).micros == 10_000


@pytest.mark.parametrize(
    ("w", "h", "quality", "micros", "enterprise"),
    [
        (1024, 1024, "low", 5_880, 7_056),
        (1024, 1024, "medium", 52_680, 63_216),
        (1024, 1024, "high", 210_720, 252_864),
        (1536, 1024, "low", 4_740, 5_688),
        (1536, 1024, "medium", 41_160, 49_392),
        (1536, 1024, "high", 164_640, 197_568),
    ],
)
def test_gpt_image_2_image_prices_and_the_enterprise_multiplier(
    w: int, h: int, quality: str, micros: int, enterprise: int
) -> None:
    usage = Usage(output_image_tokens=output_image_tokens("gpt-image-2", w, h, quality))
    base = usage_price(usage, GPT2, ONE)
    plus = usage_price(usage, GPT2, ENTERPRISE)
    assert (base.micros, plus.micros) == (micros, enterprise)
    assert Decimal(plus.basis["exact_micros"]) == Decimal(micros) * ENTERPRISE  # exact, no rounding needed
    assert plus.multiplier == ENTERPRISE and plus.basis["multiplier"] == "1.2"
    assert_well_typed(plus)


@pytest.mark.parametrize(
    ("usage", "model", "multiplier", "exact", "micros"),
    [
        (Usage(cached_text_tokens=1, input_text_tokens=1), "gpt-image-1-mini", ONE, "0.20", 0),
        (Usage(cached_image_tokens=1, input_image_tokens=1), "gpt-image-1-mini", ONE, "0.25", 0),
        (Usage(cached_image_tokens=2, input_image_tokens=2), "gpt-image-1-mini", ONE, "0.50", 1),  # tie -> up
        (Usage(cached_image_tokens=3, input_image_tokens=3), "gpt-image-1-mini", ONE, "0.75", 1),
        (Usage(input_image_tokens=1), "gpt-image-1-mini", ONE, "2.50", 3),  # tie -> up, not to even
        (Usage(input_image_tokens=1), "gpt-image-1", ONE, "10.00", 10),
        (Usage(cached_text_tokens=5, input_text_tokens=5), "gpt-image-2", ENTERPRISE, "7.5000", 8),
        (Usage(cached_text_tokens=1, input_text_tokens=1), "gpt-image-2", ENTERPRISE, "1.5000", 2),
        # rounded once, on the total: 0.20 + 0.25 + 0.20 would round to 0 line by line
        (
            Usage(input_text_tokens=2, cached_text_tokens=2, input_image_tokens=1, cached_image_tokens=1),
            "gpt-image-1-mini",
            ONE,
            "0.65",
            1,
        ),
        (Usage(cached_text_tokens=3, input_text_tokens=3), "gpt-image-1-mini", Decimal("0.5"), "0.300", 0),
    ],
)
def test_rounding_is_half_up_once_on_the_total(
    usage: Usage, model: str, multiplier: Decimal, exact: str, micros: int
) -> None:
    quote = usage_price(usage, prices_for(model), multiplier)
    assert Decimal(quote.basis["exact_micros"]) == Decimal(exact)
    assert quote.micros == micros


def test_zero_usage_costs_nothing() -> None:
    quote = usage_price(Usage(), GPT2, ENTERPRISE)
    assert quote.micros == 0 and quote.usage == Usage() and quote.basis["usage_source"] == "reported"


@pytest.mark.parametrize("bad", [1.2, True])
def test_float_multipliers_are_refused(bad: Any) -> None:
    with pytest.raises(TypeError):
        usage_price(Usage(output_image_tokens=1), GPT2, bad)


def test_negative_multiplier_is_refused() -> None:
    with pytest.raises(ValueError):
        usage_price(Usage(output_image_tokens=1), GPT2, Decimal(-1))


def test_string_and_int_multipliers_are_exact() -> None:
    usage = Usage(output_image_tokens=7_024)
    assert usage_price(usage, GPT2, "1.2").micros == 252_864  # type: ignore[arg-type]
    assert usage_price(usage, GPT2, 2).multiplier == Decimal(2)  # type: ignore[arg-type]


def test_default_catalog_enterprise_route_prices() -> None:
    cat = load_catalog()
    pure = cat.route("GPTImage2 Enterprise", "gpt-image-2")
    mixed = cat.route("Sora2Official", "gpt-image-2")
    assert pure and mixed and pure.prices and mixed.prices
    usage = Usage(input_text_tokens=100, input_image_tokens=4_354, output_image_tokens=7_024)
    base = 100 * 5 + 4_354 * 8 + 7_024 * 30  # 246_052 µ$
    assert usage_price(usage, mixed.prices, mixed.group.multiplier).micros == base
    assert usage_price(usage, pure.prices, pure.group.multiplier).micros == 295_262  # 295_262.4 -> down


# --------------------------------------------------------------------------- worst case


def test_worst_case_explicit_size_and_quality() -> None:
    req = request(prompt="a cat wearing a space suit", n=2, quality="high", size="2048x2048")
    quote = worst_case_quote(req, route(), GPT2, ONE, 2048, 2048)
    per_image = output_image_tokens("gpt-image-2", 2048, 2048, "high")
    assert quote.micros == 2 * per_image * 30 + 2 * 8 * 5
    assert quote.basis["usage_source"] == "estimated_worst_case"
    assert quote.basis["size"] == "2048x2048" and quote.basis["size_basis"] == "requested"
    assert quote.basis["quality"] == "high" and quote.basis["n"] == 2
    assert quote.usage is not None and quote.usage.output_image_tokens == 2 * per_image
    assert_well_typed(quote)


@pytest.mark.parametrize("quality", [None, "auto"])
def test_worst_case_auto_size_and_quality(quality: str | None) -> None:
    req = request(prompt="x", quality=quality, size="auto")
    quote = worst_case_quote(req, route(), GPT2, ENTERPRISE, None, None)
    # auto size: the most expensive of the three standard sizes (1024x1024 for gpt-image-2)
    assert quote.basis["size"] == "1024x1024" and quote.basis["quality"] == "high"
    assert quote.micros == usd_to_micros(Decimal(7_024 * 30 + 1 * 5) * ENTERPRISE / 1_000_000)
    legacy = worst_case_quote(req, route("gpt-image-1"), prices_for("gpt-image-1"), ONE, None, None)
    assert legacy.basis["size"] == "1024x1536" and legacy.usage and legacy.usage.output_image_tokens == 6_240


def test_worst_case_partials_and_inputs_per_output_image() -> None:
    imgs = (image(1024, 1024), image(1536, 1024, "image[1]"))
    req = request(prompt="a cat wearing a space suit", images=imgs, n=3, quality="low", stream=True, partial_images=3)
    quote = worst_case_quote(req, route(), GPT2, ONE, 1024, 1024)
    assert quote.usage == Usage(
        input_text_tokens=3 * 8,
        input_image_tokens=3 * ((194 + 4_160) + (323 + 6_240)),
        output_image_tokens=3 * (196 + 300),
    )
    assert quote.basis["input_images"] == [[1024, 1024], [1536, 1024]]
    assert quote.basis["partial_images"] == 3 and quote.basis["stream"] is True


def test_worst_case_uses_the_price_model() -> None:
    r = route("gpt-image-2-custom", upstream_model="gpt-image-1", price_model="gpt-image-1-mini")
    assert price_model(r) == "gpt-image-1-mini"
    assert price_model(route("x", upstream_model="gpt-image-1")) == "gpt-image-1"
    assert price_model(route("gpt-image-2")) == "gpt-image-2"
    quote = worst_case_quote(request(quality="high"), r, prices_for("gpt-image-1-mini"), ONE, None, None)
    assert quote.basis["model"] == "gpt-image-1-mini" and quote.basis["size"] == "1024x1536"


def test_usage_route_without_prices_is_an_error() -> None:
    for fn in (worst_case_quote, fallback_quote):
        with pytest.raises(ValueError):
            fn(request(), route(), None, ONE, None, None)


# --------------------------------------------------------------------------- fallback


def test_fallback_quality_auto_is_medium_and_auto_size_follows_the_input() -> None:
    req = request(prompt="x", images=(image(1920, 1080),), quality="auto")
    quote = fallback_quote(req, route(), GPT2, ONE, None, None)
    assert quote.basis["usage_source"] == "estimated_fallback"
    assert quote.basis["size"] == "1536x1024" and quote.basis["quality"] == "medium"
    assert quote.usage == simulated_usage(req, "gpt-image-2", 1536, 1024)
    assert quote.micros == 1 * 5 + (323 + 6_240) * 8 + 1_372 * 30  # 1920x1080 -> 910x512: 2 tiles
    assert_well_typed(quote)


def test_fallback_explicit_parameters() -> None:
    req = request(prompt="a cat wearing a space suit", n=2, quality="low", size="1024x1536")
    quote = fallback_quote(req, route(), GPT2, ENTERPRISE, 1024, 1536)
    assert quote.micros == usd_to_micros(Decimal(8 * 5 + 2 * 158 * 30) * ENTERPRISE / 1_000_000)
    assert quote.basis["size_basis"] == "requested"


# --------------------------------------------------------------------------- worst >= actual


def actual_quotes(req: ImageRequest, model: str, prices: ModelPrices, mult: Decimal, w: int | None, h: int | None):  # type: ignore[no-untyped-def]
    """Every usage the simulator can report for ``req``: any rendered size for auto,
    any concrete quality for auto, streaming or not, with or without cache hits."""
    sizes = [(w, h)] if w is not None and h is not None else list(STANDARD_SIZES)
    qualities = list(QUALITIES) if req.quality in (None, "auto") else [req.quality]
    for (sw, sh), q in itertools.product(sizes, qualities):
        usage = simulated_usage(replace(req, quality=q), model, sw, sh)
        yield usage_price(usage, prices, mult)
        cached = replace(usage, cached_text_tokens=usage.input_text_tokens // 2)
        yield usage_price(cached, prices, mult)


def check_bounds(req: ImageRequest, model: str, mult: Decimal, w: int | None, h: int | None) -> None:
    r, prices = route(model), prices_for(model)
    worst = worst_case_quote(req, r, prices, mult, w, h)
    fallback = fallback_quote(req, r, prices, mult, w, h)
    assert fallback.micros <= worst.micros
    for actual in actual_quotes(req, model, prices, mult, w, h):
        assert actual.micros <= worst.micros


GRID_SIZES: list[tuple[int | None, int | None]] = [
    (None, None),
    (1024, 1024),
    (1536, 1024),
    (1024, 1536),
    (2048, 2048),
    (3840, 2160),
    (1280, 544),
    (2880, 2880),
]


@pytest.mark.parametrize("model", list(PRICE_TABLE))
@pytest.mark.parametrize("size", GRID_SIZES)
def test_worst_case_bounds_every_outcome_grid(model: str, size: tuple[int | None, int | None]) -> None:
    w, h = size
    inputs = ((), (image(1024, 1024),), (image(3000, 1000), image(640, 640, "image[1]")))
    for quality, n, partials, stream, imgs, mult in itertools.product(
        (None, "auto", *QUALITIES), (1, 3), (0, 3), (False, True), inputs, (ONE, ENTERPRISE)
    ):
        req = request(quality=quality, n=n, partial_images=partials, stream=stream, images=imgs)
        check_bounds(req, model, mult, w, h)


if HAVE_HYPOTHESIS:
    legal_edge = st.integers(min_value=16, max_value=240).map(lambda k: 16 * k)

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        model=st.sampled_from(list(PRICE_TABLE)),
        w=legal_edge,
        h=legal_edge,
        auto=st.booleans(),
        quality=st.sampled_from([None, "auto", *QUALITIES]),
        n=st.integers(min_value=1, max_value=10),
        partials=st.integers(min_value=0, max_value=3),
        stream=st.booleans(),
        prompt=st.text(max_size=400),
        inputs=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000)), max_size=4),
        fidelity=st.sampled_from([None, "low", "high"]),
        mult=st.sampled_from([ONE, ENTERPRISE, Decimal("0.85"), Decimal(3)]),
    )
    def test_worst_case_bounds_every_outcome_property(
        model: str,
        w: int,
        h: int,
        auto: bool,
        quality: str | None,
        n: int,
        partials: int,
        stream: bool,
        prompt: str,
        inputs: list[tuple[int, int]],
        fidelity: str | None,
        mult: Decimal,
    ) -> None:
        assume(max(w, h) <= 3 * min(w, h) and 655_360 <= w * h <= 8_294_400)
        imgs = tuple(image(iw, ih, f"image[{i}]") for i, (iw, ih) in enumerate(inputs))
        params = {"input_fidelity": fidelity} if fidelity else {}
        req = request(
            prompt=prompt,
            quality=quality,
            n=n,
            partial_images=partials,
            stream=stream,
            images=imgs,
            upstream_params=params,
            size="auto" if auto else f"{w}x{h}",
        )
        check_bounds(req, model, mult, None if auto else w, None if auto else h)
        quote = worst_case_quote(req, route(model), prices_for(model), mult, None if auto else w, None if auto else h)
        assert_well_typed(quote)
        assert quote.usage is not None and quote.usage.input_text_tokens == n * text_tokens(prompt)

else:  # pragma: no cover

    def test_worst_case_bounds_every_outcome_property() -> None:
        pytest.skip("hypothesis is not installed (pip install hypothesis)")
