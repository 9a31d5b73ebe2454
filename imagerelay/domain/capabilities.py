"""What a route accepts and what it costs, as data a client can build a form from.

Pure functions of the catalog's own objects (the parameter profile, the size rules in
``domain/sizes.py``, the billing and the usage prices): the playground and clients read
the result from ``GET /v1/models/{id}`` instead of hard-coding the route matrix.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from imagerelay.catalog.loader import ResolvedRoute
from imagerelay.catalog.model import ParamProfile
from imagerelay.domain import sizes
from imagerelay.domain.money import plain_decimal
from imagerelay.domain.params import PARAMS, accepts
from imagerelay.domain.pricing import PRICERS


def size_rules(profile: ParamProfile) -> dict[str, Any]:
    """The sizes a route takes: none, a table of named sizes, or the official rules."""
    if profile.size == "reject":
        return {"mode": "fixed", "default": profile.default_size}
    if profile.size == "table":
        return {
            "mode": "table",
            "default": profile.default_size,
            "table": {ratio: dict(tiers) for ratio, tiers in profile.size_table.items()},
            "values": sorted(profile.table_sizes(), key=_pixels),
        }
    return {
        "mode": "rules",
        "default": profile.default_size,
        "auto": True,
        "multiple_of": sizes.OFFICIAL_STEP,
        "max_edge": sizes.OFFICIAL_MAX_EDGE,
        "max_aspect_ratio": sizes.OFFICIAL_MAX_RATIO,
        "min_pixels": sizes.OFFICIAL_MIN_PIXELS,
        "max_pixels": sizes.OFFICIAL_MAX_PIXELS,
        "examples": list(sizes.OFFICIAL_EXAMPLES),
    }


def _pixels(size: str) -> tuple[int, str]:
    w, _, h = size.partition("x")
    return int(w) * int(h), size


def published_params(profile: ParamProfile) -> dict[str, Any]:
    """The table's published parameters: a value list (``None``: refused) or a flag."""
    shown: dict[str, Any] = {}
    for rule in PARAMS:
        if rule.published == "values":
            assert rule.values is not None
            shown[rule.name] = list(rule.values(profile)) if rule.accepted(profile) else None
        elif rule.published == "flag":
            shown[rule.name] = rule.accepted(profile)
    return shown


def billing(route: ResolvedRoute) -> dict[str, Any]:
    """The route's price for its group, as ``GET /v1/pricing`` shows it (USD strings)."""
    billing = route.spec.billing
    return PRICERS[billing.mode].describe(billing, route.prices, route.group.multiplier)


def capabilities(route: ResolvedRoute) -> dict[str, Any]:
    """Everything a caller may send on ``route`` and what it is billed.

    A list is the accepted values; ``None`` means the parameter is refused on this route.
    """
    profile = route.profile
    return {
        "group": route.spec.group,
        "route": route.spec.name,
        "description": route.spec.description,
        "endpoints": list(route.spec.endpoints),
        "size": size_rules(profile),
        **published_params(profile),
        "n": {"min": 1, "max": profile.n_max},
        "streaming": {"supported": accepts(profile, "stream"), "partial_images_max": profile.partial_images_max},
        "prompt_max_chars": profile.max_prompt_chars,
        "edits": {"max_images": profile.max_input_images, "max_image_bytes": profile.max_image_bytes},
        "billing": billing(route),
    }


def model_object(route: ResolvedRoute) -> dict[str, Any]:
    """The official model object, with the route's capabilities as an extension field."""
    return {
        "id": route.spec.model,
        "object": "model",
        "created": 0,
        "owned_by": "imagerelay",
        "imagerelay": capabilities(route),
    }


def example_body(route: ResolvedRoute, prompt: str = "a white ceramic mug on a gray desk") -> dict[str, Any]:
    """The smallest generation body this route accepts, for snippets and the demo's
    printed curl: a table route needs one of its sizes (``auto`` is refused)."""
    body: dict[str, Any] = {"model": route.spec.model, "prompt": prompt}
    rules = size_rules(route.profile)
    if rules["mode"] == "table":
        values = rules["values"]
        body["size"] = "2048x2048" if "2048x2048" in values else values[0]
    return body


def billing_summary(route: ResolvedRoute) -> str:
    """``$0.03 per call`` or ``official price x1.2``, from the route's billing."""
    price = billing(route)
    if price["mode"] == "per_call":
        return f"${plain_decimal(Decimal(price['price_per_call_usd']))} per call"
    return f"official price \u00d7{price['multiplier']}"


def params_summary(route: ResolvedRoute) -> str:
    """What a caller controls on the route, in words: ``no size or quality``,
    ``quality and custom sizes``, ``one of 30 sizes, no quality``."""
    profile = route.profile
    rules = size_rules(profile)
    quality = profile.quality is not None
    if rules["mode"] == "fixed":
        text = "quality, no size" if quality else "no size or quality"
    elif rules["mode"] == "table":
        text = f"one of {len(rules['values'])} sizes" + ("" if quality else ", no quality")
    else:
        text = "quality and custom sizes" if quality else "custom sizes, no quality"
    if profile.streaming and profile.partial_images_max:
        text += ", streamed partial images"
    return text
