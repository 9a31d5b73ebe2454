"""Capabilities are derived from the catalog's data alone (pure functions)."""

from __future__ import annotations

import yaml

from imagerelay.catalog.loader import default_catalog_text, load_catalog, parse_catalog
from imagerelay.domain.capabilities import capabilities, size_rules


def test_every_default_route_has_capabilities_matching_its_profile() -> None:
    catalog = load_catalog()
    for (group, _model), route in catalog.routes.items():
        caps = capabilities(route)
        assert caps["group"] == group and caps["n"]["max"] == route.profile.n_max
        assert caps["quality"] == (list(route.profile.quality) if route.profile.quality else None)


def test_table_sizes_sorted_by_pixels() -> None:
    profile = load_catalog().file.param_profiles["vip"]
    values = size_rules(profile)["values"]
    pixels = [int(w) * int(h) for w, h in (v.split("x") for v in values)]
    assert pixels == sorted(pixels) and len(values) == 30


def test_a_changed_catalog_changes_the_capabilities() -> None:
    doc = yaml.safe_load(default_catalog_text())
    doc["param_profiles"]["official-gpt-image-2"]["quality"] = ["high"]
    doc["groups"]["GPTImage2 Enterprise"]["multiplier"] = "1.5"
    route = parse_catalog(doc).route("GPTImage2 Enterprise", "gpt-image-2")
    assert route is not None
    caps = capabilities(route)
    assert caps["quality"] == ["high"]
    assert caps["billing"]["usd_per_million_tokens"]["image_output"] == "45"
