from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagerelay.catalog.loader import CatalogError, default_catalog_text, load_catalog, parse_catalog


def raw() -> dict[str, Any]:
    return yaml.safe_load(default_catalog_text())


def test_default_catalog_is_the_route_matrix() -> None:
    cat = load_catalog()
    assert set(cat.groups) == {"default", "Sora2Official", "GPTImage2 Enterprise"}
    assert cat.models_by_group["default"] == ("gpt-image-2", "gpt-image-2-vip")
    legacy = cat.route("default", "gpt-image-2")
    vip = cat.route("default", "gpt-image-2-vip")
    mixed = cat.route("Sora2Official", "gpt-image-2")
    pure = cat.route("GPTImage2 Enterprise", "gpt-image-2")
    assert legacy and vip and mixed and pure
    assert legacy.spec.billing.price_per_call == Decimal("0.03") == vip.spec.billing.price_per_call
    assert legacy.profile.size == "reject" and legacy.profile.quality is None
    assert vip.profile.size == "table" and vip.profile.quality is None and len(vip.profile.table_sizes()) == 30
    assert mixed.spec.billing.mode == pure.spec.billing.mode == "usage"
    assert mixed.group.multiplier == Decimal("1") and pure.group.multiplier == Decimal("1.2")
    assert mixed.profile.quality == ("low", "medium", "high", "auto")
    assert cat.route("Sora2Official", "gpt-image-2-vip") is None
    assert mixed.prices is not None and mixed.prices.image_output == Decimal("30.00")


def _broken(mutate: Any) -> str:
    doc = copy.deepcopy(raw())
    mutate(doc)
    with pytest.raises(CatalogError) as info:
        parse_catalog(doc, "test.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["routes"][1].update(group="nope"), "routes[1] (nope / gpt-image-2-vip): unknown group 'nope'"),
        (lambda d: d["routes"][0].update(model="dall-e-9"), "routes[0] (default / dall-e-9): unknown model"),
        (lambda d: d["routes"][2].update(params="fancy"), "unknown param profile 'fancy'"),
        (lambda d: d["routes"].append(dict(d["routes"][0])), "duplicate route"),
        (
            lambda d: d["routes"][0]["billing"].pop("price_per_call"),
            "routes[0] (default / gpt-image-2): per_call billing needs",
        ),
        (lambda d: d["models"]["gpt-image-2"].pop("prices_per_million"), "usage billing needs prices_per_million"),
        (lambda d: d["param_profiles"]["vip"]["size_table"]["1:1"].update({"1K": "big"}), "size_table['1:1']['1K']"),
        (
            lambda d: d["param_profiles"]["official-gpt-image-2"].update(n_max=0),
            "param_profiles.official-gpt-image-2.n_max",
        ),
        (lambda d: d["groups"]["default"].update(multiplier="lots"), "groups.default.multiplier"),
        (
            lambda d: d["channels"].append({"name": "x", "type": "azure", "pools": ["legacy"]}),
            "type azure needs base_url",
        ),
        (
            lambda d: d["channels"].append({"name": "simulator-legacy", "type": "simulator", "pools": []}),
            "duplicate channel name",
        ),
        (lambda d: d.update(extra_key=1), "extra_key"),
    ],
)
def test_broken_catalog_names_the_entry(mutate: Any, expected: str) -> None:
    assert expected in _broken(mutate)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)
    bad.write_text("- just a list")
    with pytest.raises(CatalogError, match="must be a mapping"):
        load_catalog(bad)


def test_operator_adds_a_group_without_code(tmp_path: Path) -> None:
    doc = raw()
    doc["groups"]["Partners"] = {"multiplier": "0.9"}
    doc["routes"].append(
        {
            "group": "Partners",
            "model": "gpt-image-2",
            "name": "partners",
            "params": "official-gpt-image-2",
            "billing": {"mode": "usage"},
            "pool": "official-pure",
        }
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    cat = load_catalog(path)
    route = cat.route("Partners", "gpt-image-2")
    assert route is not None and route.group.multiplier == Decimal("0.9")
    assert route.spec.pool == "official-pure"
