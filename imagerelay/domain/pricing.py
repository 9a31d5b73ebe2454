"""The pricing engine: pure functions from a call's parameters or usage to a price.

Money is integer micro-dollars (1 USD = 1_000_000 µ$). Arithmetic is ``Decimal`` with
enough precision to be exact (no float anywhere; passing one is a ``TypeError``), and
is rounded ONCE, on the total, half up to the micro-dollar (the policy in
:mod:`imagerelay.domain.money`). Prices per 1M tokens
times tokens are already micro-dollars (USD/1M tokens x tokens x 1M µ$/USD / 1M), so
a usage price is ``round_half_up(sum(tokens x price_per_million) x multiplier)``.

Every result is a :class:`PriceQuote` whose ``basis`` (JSON-serialisable) says what
drove the price; the relay stores it with the usage record.

* :func:`per_call_price` - fixed-price routes.
* :func:`usage_price` - usage routes, from the upstream's reported ``usage``.
* :func:`worst_case_quote` - the hold placed before the call: an upper bound.
* :func:`fallback_quote` - the charge when an upstream succeeded without ``usage``:
  the estimate for the request as sent, never above :func:`worst_case_quote`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any, Literal, Protocol

from imagerelay.catalog.model import Billing, ModelPrices, ParamProfile, RouteSpec
from imagerelay.domain import usage as token_rules
from imagerelay.domain.money import PRECISION, plain_decimal, round_micros, to_decimal, to_micros
from imagerelay.domain.types import ImageRequest, Usage

__all__ = [
    "PRICERS",
    "PerCallPricer",
    "Pricer",
    "UsagePricer",
    "final_quote",
    "PriceQuote",
    "fallback_quote",
    "per_call_price",
    "price_model",
    "usage_price",
    "worst_case_quote",
]


UsageSource = Literal["reported", "estimated_worst_case", "estimated_fallback"]


@dataclass(frozen=True)
class PriceQuote:
    """A price and what drove it.

    ``multiplier`` is the group multiplier applied (``1`` for per-call routes, which
    it does not scale); ``usage`` is the usage priced (reported or estimated), ``None``
    for per-call routes.
    """

    micros: int
    mode: Literal["per_call", "usage"]
    multiplier: Decimal
    usage: Usage | None
    basis: dict[str, Any]


# --------------------------------------------------------------------------- per call


def per_call_price(billing: Billing) -> PriceQuote:
    """The fixed price of a per-call route (``$0.03`` -> 30_000 µ$)."""
    if billing.mode != "per_call" or billing.price_per_call is None:
        raise ValueError("per_call_price needs a per_call billing with a price_per_call")
    price = to_decimal(billing.price_per_call, "price_per_call")
    return PriceQuote(
        micros=to_micros(price),
        mode="per_call",
        multiplier=Decimal(1),
        usage=None,
        basis={"mode": "per_call", "price_per_call_usd": str(price)},
    )


# --------------------------------------------------------------------------- usage


def usage_price(usage: Usage, prices: ModelPrices, multiplier: Decimal) -> PriceQuote:
    """Price a reported ``usage`` at per-million ``prices`` times the group ``multiplier``.

    Cached tokens are subsets of the input tokens (as in the official API): the cached
    part is billed at the cached price and the rest at the full price. A cached count
    above its input count (malformed upstream) is capped at the input count.
    """
    return _usage_quote(usage, prices, multiplier, "reported", {})


def _usage_quote(
    usage: Usage, prices: ModelPrices, multiplier: Decimal, source: UsageSource, extra: dict[str, Any]
) -> PriceQuote:
    mult = to_decimal(multiplier, "multiplier")
    if mult < 0:
        raise ValueError(f"multiplier must not be negative; got {mult}")
    micros, terms = _priced(_usage_lines(usage, prices), mult)
    basis: dict[str, Any] = {"mode": "usage", "usage_source": source, **terms, **extra}
    return PriceQuote(micros=micros, mode="usage", multiplier=mult, usage=usage, basis=basis)


def _usage_lines(usage: Usage, prices: ModelPrices) -> tuple[tuple[str, int, Decimal], ...]:
    cached_text = min(usage.cached_text_tokens, usage.input_text_tokens)
    cached_image = min(usage.cached_image_tokens, usage.input_image_tokens)
    return (
        ("text_input", usage.input_text_tokens - cached_text, prices.text_input),
        ("cached_text_input", cached_text, prices.cached_text_input),
        ("image_input", usage.input_image_tokens - cached_image, prices.image_input),
        ("cached_image_input", cached_image, prices.cached_image_input),
        ("image_output", usage.output_image_tokens, prices.image_output),
        ("text_output", usage.output_text_tokens, prices.text_output),
    )


@functools.lru_cache(maxsize=4096)
def _priced(lines: tuple[tuple[str, int, Decimal], ...], multiplier: Decimal) -> tuple[int, dict[str, Any]]:
    """Rounded micros of priced token lines, and the terms of their price basis (the
    multiplier, tokens and prices per line, exact micros). Memoised because every call
    prices the same few shapes twice (hold and settle): the Decimal arithmetic in a local
    context was ~3% of the gateway's CPU per call, and writing the terms out (eight
    Decimals as text) another ~1% (py-spy). The terms' dicts are shared by every quote
    of those lines: a basis is copied before anything is added to it, never changed."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        subtotal = sum((Decimal(count) * to_decimal(price, name) for name, count, price in lines), Decimal(0))
        exact = subtotal * multiplier
    terms = {
        "multiplier": str(multiplier),
        "tokens": {name: count for name, count, _ in lines},
        "prices_per_million_usd": {name: str(price) for name, _, price in lines},
        "exact_micros": str(exact),
    }
    return round_micros(exact), terms


def price_model(route: RouteSpec) -> str:
    """The model whose token rules and prices apply to a route."""
    return route.price_model or route.upstream_model or route.model


def _request_basis(request: ImageRequest, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "endpoint": request.endpoint,
        "size_requested": request.size,
        "quality_requested": request.quality,
        "n": request.n,
        "partial_images": request.partial_images or 0,
        "stream": request.stream,
        "prompt_tokens": token_rules.text_tokens(request.prompt),
        "input_images": [[image.width, image.height] for image in request.images],
        "input_fidelity": request.upstream_params.get("input_fidelity"),
    }


def _usage_prices(route: RouteSpec, prices: ModelPrices | None) -> ModelPrices:
    if prices is None:
        raise ValueError(f"route {route.name!r} is billed on usage but its model has no prices")
    return prices


class Pricer(Protocol):
    """How one billing mode prices a route: the catalog check, the hold, the charge, and
    what ``/v1/models`` and ``/v1/pricing`` publish. One instance per mode in
    :data:`PRICERS`, as connectors are per channel type: a new billing mode is a class
    here plus its name in ``catalog.model.BillingMode``."""

    def problem(self, billing: Billing, prices: ModelPrices | None, model: str, profile: ParamProfile) -> str | None:
        """Why a route with this billing cannot be priced (the loader refuses it), or None."""

    def worst_case(
        self,
        request: ImageRequest,
        route: RouteSpec,
        prices: ModelPrices | None,
        multiplier: Decimal,
        width: int | None,
        height: int | None,
    ) -> PriceQuote:
        """The most a call can cost: what to hold before it goes upstream."""

    def final(
        self,
        request: ImageRequest,
        route: RouteSpec,
        prices: ModelPrices | None,
        multiplier: Decimal,
        usage: Usage | None,
        width: int | None,
        height: int | None,
    ) -> PriceQuote:
        """The charge for a call that succeeded, with the upstream's ``usage`` if reported."""

    def describe(self, billing: Billing, prices: ModelPrices | None, multiplier: Decimal) -> dict[str, Any]:
        """The route's price as ``GET /v1/pricing`` shows it (USD strings)."""


class PerCallPricer:
    """A fixed price per successful call; the group multiplier does not scale it."""

    def problem(self, billing: Billing, prices: ModelPrices | None, model: str, profile: ParamProfile) -> str | None:
        if billing.price_per_call is None or billing.price_per_call < 0:
            return "per_call billing needs a non-negative price_per_call"
        return None

    def worst_case(
        self,
        request: ImageRequest,
        route: RouteSpec,
        prices: ModelPrices | None,
        multiplier: Decimal,
        width: int | None,
        height: int | None,
    ) -> PriceQuote:
        return per_call_price(route.billing)

    def final(
        self,
        request: ImageRequest,
        route: RouteSpec,
        prices: ModelPrices | None,
        multiplier: Decimal,
        usage: Usage | None,
        width: int | None,
        height: int | None,
    ) -> PriceQuote:
        return per_call_price(route.billing)

    def describe(self, billing: Billing, prices: ModelPrices | None, multiplier: Decimal) -> dict[str, Any]:
        return {"mode": "per_call", "price_per_call_usd": str(billing.price_per_call)}


class UsagePricer:
    """Official per-million token prices times the group multiplier."""

    def problem(self, billing: Billing, prices: ModelPrices | None, model: str, profile: ParamProfile) -> str | None:
        if prices is None:
            return f"usage billing needs prices_per_million for model {model!r}"
        # The token rules know these qualities only; another would be accepted by
        # validation and then fail to price (a 500), so the catalog is refused instead.
        unpriced = [q for q in profile.quality or () if q != "auto" and q not in token_rules.QUALITIES]
        if unpriced:
            return (
                f"usage billing has no token rule for quality {', '.join(map(repr, unpriced))} "
                f"(known: {', '.join(token_rules.QUALITIES)}, auto); bill the route per_call"
            )
        return None

    def worst_case(
        self,
        request: ImageRequest,
        route: RouteSpec,
        prices: ModelPrices | None,
        multiplier: Decimal,
        width: int | None,
        height: int | None,
    ) -> PriceQuote:
        model = price_model(route)
        worst = token_rules.worst_case_usage(request, model, width, height)
        basis = {
            **_request_basis(request, model),
            "size": f"{worst.width}x{worst.height}",
            "size_basis": (
                "requested" if width is not None and height is not None else "auto: most expensive standard size"
            ),
            "quality": worst.quality,
        }
        return _usage_quote(worst.usage, _usage_prices(route, prices), multiplier, "estimated_worst_case", basis)

    def final(
        self,
        request: ImageRequest,
        route: RouteSpec,
        prices: ModelPrices | None,
        multiplier: Decimal,
        usage: Usage | None,
        width: int | None,
        height: int | None,
    ) -> PriceQuote:
        if usage is not None:
            return usage_price(usage, _usage_prices(route, prices), multiplier)
        return self.fallback(request, route, prices, multiplier, width, height)

    def fallback(
        self,
        request: ImageRequest,
        route: RouteSpec,
        prices: ModelPrices | None,
        multiplier: Decimal,
        width: int | None,
        height: int | None,
    ) -> PriceQuote:
        model = price_model(route)
        if width is None or height is None:
            width, height = token_rules.auto_size(request.images[0] if request.images else None)
            size_basis = "auto: standard size matching the first input image (square without one)"
        else:
            size_basis = "requested"
        estimate = token_rules.simulated_usage(request, model, width, height)
        basis = {
            **_request_basis(request, model),
            "size": f"{width}x{height}",
            "size_basis": size_basis,
            "quality": token_rules.reported_quality(request.quality),
        }
        return _usage_quote(estimate, _usage_prices(route, prices), multiplier, "estimated_fallback", basis)

    def describe(self, billing: Billing, prices: ModelPrices | None, multiplier: Decimal) -> dict[str, Any]:
        assert prices is not None  # the loader refuses usage billing without prices
        return {
            "mode": "usage",
            "multiplier": str(multiplier),
            "usd_per_million_tokens": {
                name: plain_decimal(value * multiplier) for name, value in prices.model_dump().items() if value
            },
        }


PRICERS: dict[str, Pricer] = {"per_call": PerCallPricer(), "usage": UsagePricer()}


def worst_case_quote(
    request: ImageRequest,
    route: RouteSpec,
    prices: ModelPrices | None,
    multiplier: Decimal,
    width: int | None,
    height: int | None,
) -> PriceQuote:
    """The most a call can cost: what to hold before it goes upstream.

    Per-call routes: the call price. Usage routes: :func:`token_rules.worst_case_usage`
    priced without cache discount - the given size, or for ``auto``/``None`` the most
    expensive standard size (``auto`` chooses among 1024x1024, 1536x1024 and 1024x1536;
    for gpt-image-2 that is 1024x1024); quality ``auto`` -> ``high``; every partial
    image per output image; inputs counted once per output image.
    """
    return PRICERS[route.billing.mode].worst_case(request, route, prices, multiplier, width, height)


def final_quote(
    request: ImageRequest,
    route: RouteSpec,
    prices: ModelPrices | None,
    multiplier: Decimal,
    usage: Usage | None,
    width: int | None,
    height: int | None,
) -> PriceQuote:
    """The charge for a successful call: the reported ``usage`` priced, else :func:`fallback_quote`."""
    return PRICERS[route.billing.mode].final(request, route, prices, multiplier, usage, width, height)


def fallback_quote(
    request: ImageRequest,
    route: RouteSpec,
    prices: ModelPrices | None,
    multiplier: Decimal,
    width: int | None,
    height: int | None,
) -> PriceQuote:
    """What to charge when an upstream succeeded but reported no ``usage``.

    The simulated usage for the request as sent (:func:`token_rules.simulated_usage`): the
    given size, or for ``auto`` the standard size matching the first input image's
    orientation (square for generations); quality ``auto`` -> ``medium`` (what
    ``auto`` renders in practice; the customer is not charged for ``high`` on a guess);
    partial images only when streaming; inputs once; no cache discount. Every term is
    at most the worst case's, so the charge never exceeds the hold.
    """
    return PRICERS[route.billing.mode].final(request, route, prices, multiplier, None, width, height)
