"""A new image model is a catalog edit: no code names its qualities, formats or sizes.

The catalog below declares a gpt-image-2.5-style model with a quality ("ultra") and an
output format ("avif") that appear nowhere in the code, and its own size table. Loading,
validation, pass-through, the published capabilities and the price all follow from the
catalog alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from imagerelay.catalog.loader import Catalog, CatalogError, ResolvedRoute, default_catalog_text, parse_catalog
from imagerelay.domain.capabilities import capabilities
from imagerelay.domain.pricing import final_quote, worst_case_quote
from imagerelay.domain.validation import build_hints, validate_generation
from imagerelay.errors import InvalidRequest

GROUP, MODEL = "GPTImage2 Enterprise", "gpt-image-2.5"


def _catalog() -> Catalog:
    doc = yaml.safe_load(default_catalog_text())
    doc["models"][MODEL] = {"description": "next generation"}
    doc["param_profiles"]["next"] = {
        "size": "table",
        "size_table": {"1:1": {"2K": "2048x2048", "8K": "8192x8192"}},
        "default_size": "2048x2048",
        "quality": ["standard", "ultra"],
        "output_formats": ["png", "avif"],
        "output_compression": True,
        "background": ["transparent", "opaque"],
        "n_max": 2,
    }
    doc["routes"].append(
        {
            "group": GROUP,
            "model": MODEL,
            "name": "next",
            "params": "next",
            "billing": {"mode": "per_call", "price_per_call": "0.25"},
            "pool": "official-pure",
        }
    )
    return parse_catalog(doc)


def _route(catalog: Catalog) -> ResolvedRoute:
    route = catalog.route(GROUP, MODEL)
    assert route is not None
    return route


def _validate(catalog: Catalog, body: dict[str, Any]) -> Any:
    route = _route(catalog)
    hints = build_hints([r.spec for r in catalog.routes.values()], catalog.file.param_profiles)
    return validate_generation(
        {"model": MODEL, "prompt": "a lighthouse", **body}, route.spec, route.profile, hints[(GROUP, MODEL)]
    )


def test_new_values_are_accepted_passed_upstream_and_priced() -> None:
    catalog = _catalog()
    request = _validate(
        catalog, {"quality": "ultra", "output_format": "avif", "output_compression": 60, "size": "8192x8192", "n": 2}
    )
    assert (request.quality, request.output_format, request.output_compression) == ("ultra", "avif", 60)
    assert request.upstream_params == {
        "quality": "ultra",
        "output_format": "avif",
        "output_compression": 60,
        "size": "8192x8192",
        "n": 2,
    }
    route = _route(catalog)
    for quote in (
        worst_case_quote(request, route.spec, route.prices, route.group.multiplier, 8192, 8192),
        final_quote(request, route.spec, route.prices, route.group.multiplier, None, 8192, 8192),
    ):
        assert quote.micros == 250_000 and quote.mode == "per_call"


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"quality": "high"}, "quality", "Supported values are: 'standard' and 'ultra'."),
        ({"output_format": "jpeg"}, "output_format", "Supported values are: 'png' and 'avif'."),
        ({"size": "1024x1024"}, "size", "2048x2048"),
        ({"n": 3}, "n", "n must be between 1 and 2"),
        # the explicit cross-field rule still applies to a format it has never heard of
        ({"background": "transparent", "output_format": "avif"}, "background", "needs output_format png or webp"),
    ],
)
def test_values_outside_the_catalog_are_refused(body: dict[str, Any], param: str, text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _validate(_catalog(), body)
    assert caught.value.param == param and text in caught.value.message


def test_parameters_the_profile_leaves_out_are_refused_with_advice() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _validate(_catalog(), {"moderation": "low"})
    assert caught.value.param == "moderation"
    assert "use model gpt-image-2 for moderation control" in caught.value.message


def test_a_usage_billed_route_with_an_unpriced_quality_is_refused_at_load() -> None:
    """Usage prices come from token rules per quality: a quality they lack would pass
    validation and then fail to price, so the loader names it instead."""
    doc = yaml.safe_load(default_catalog_text())
    doc["param_profiles"]["official-gpt-image-2"]["quality"] = ["low", "ultra", "auto"]
    with pytest.raises(CatalogError, match="no token rule for quality 'ultra'"):
        parse_catalog(doc)


def test_capabilities_publish_the_new_values() -> None:
    caps = capabilities(_route(_catalog()))
    assert caps["quality"] == ["standard", "ultra"]
    assert caps["output_format"] == ["png", "avif"]
    assert caps["moderation"] is None and caps["output_compression"] is True
    assert caps["size"]["values"] == ["2048x2048", "8192x8192"]
    assert caps["billing"] == {"mode": "per_call", "price_per_call_usd": "0.25"}
