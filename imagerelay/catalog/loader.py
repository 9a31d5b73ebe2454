"""Load, validate and index the catalog once at start-up.

A broken catalog must stop start-up with a message that names the bad entry, so
every cross-reference (route -> group, model, profile, pool) is checked here and the
hot path can index the result without defensive checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from imagerelay.catalog.channel_rules import ChannelInvalid, check_channel, pool_problems
from imagerelay.catalog.model import (
    CatalogFile,
    GroupSpec,
    ModelPrices,
    ParamProfile,
    RouteSpec,
)
from imagerelay.domain.pricing import PRICERS


class CatalogError(ValueError):
    """The catalog file is invalid; the message names the offending entry."""


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """A route with everything the relay needs, resolved once."""

    spec: RouteSpec
    group: GroupSpec
    profile: ParamProfile
    prices: ModelPrices | None
    upstream_model: str


@dataclass(frozen=True, slots=True)
class Catalog:
    source: str
    file: CatalogFile
    routes: dict[tuple[str, str], ResolvedRoute]  # (group, model) -> route
    models_by_group: dict[str, tuple[str, ...]]

    @property
    def groups(self) -> dict[str, GroupSpec]:
        return self.file.groups

    def route(self, group: str, model: str) -> ResolvedRoute | None:
        return self.routes.get((group, model))


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_catalog(raw: Any, source: str = "<catalog>") -> Catalog:
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: the catalog must be a mapping with groups, models, param_profiles, routes")
    try:
        doc = CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(f"{source}: {_format_validation_error(exc)}") from None

    seen_channels: set[str] = set()
    for ch in doc.channels:
        if ch.name in seen_channels:
            raise CatalogError(f"{source}: channels: duplicate channel name {ch.name!r}")
        seen_channels.add(ch.name)

    routes: dict[tuple[str, str], ResolvedRoute] = {}
    models_by_group: dict[str, list[str]] = {g: [] for g in doc.groups}
    for i, r in enumerate(doc.routes):
        where = f"{source}: routes[{i}] ({r.group} / {r.model})"
        if r.group not in doc.groups:
            raise CatalogError(f"{where}: unknown group {r.group!r}; known groups: {sorted(doc.groups)}")
        if r.model not in doc.models:
            raise CatalogError(f"{where}: unknown model {r.model!r}; declare it under models")
        profile = doc.param_profiles.get(r.params)
        if profile is None:
            raise CatalogError(f"{where}: unknown param profile {r.params!r}; known: {sorted(doc.param_profiles)}")
        if (r.group, r.model) in routes:
            raise CatalogError(f"{where}: duplicate route for this group and model")
        if profile.size == "table" and not profile.size_table:
            raise CatalogError(f"{where}: profile {r.params!r} has size: table but no size_table")
        upstream_model = r.upstream_model or r.model
        price_model = r.price_model or upstream_model
        prices = doc.models[price_model].prices_per_million if price_model in doc.models else None
        problem = PRICERS[r.billing.mode].problem(r.billing, prices, price_model, profile)
        if problem is not None:
            raise CatalogError(f"{where}: {problem}")
        routes[(r.group, r.model)] = ResolvedRoute(
            spec=r,
            group=doc.groups[r.group],
            profile=profile,
            prices=prices,
            upstream_model=upstream_model,
        )
        models_by_group[r.group].append(r.model)
    _check_channels(doc, source)
    return Catalog(
        source=source,
        file=doc,
        routes=routes,
        models_by_group={g: tuple(ms) for g, ms in models_by_group.items()},
    )


def _check_channels(doc: CatalogFile, source: str) -> None:
    """The same field checks as channels added at run time, and no pool where enabled
    simulator and real channels meet unless ``mixed_simulator_pools`` says so."""
    pools = {r.pool for r in doc.routes}
    for i, ch in enumerate(doc.channels):
        try:
            check_channel(ch, None, pools)
        except ChannelInvalid as exc:
            raise CatalogError(f"{source}: channels[{i}] ({ch.name}): {exc}") from None
    unknown = sorted(set(doc.mixed_simulator_pools) - pools)
    if unknown:
        raise CatalogError(f"{source}: mixed_simulator_pools: no route uses pool(s) {', '.join(unknown)}")
    mixed = pool_problems({}, doc.channels, doc.mixed_simulator_pools).mixed
    if mixed:
        raise CatalogError(
            f"{source}: channels: {mixed[0]}; disable or remove the simulator channels, or list the pool "
            "under mixed_simulator_pools to allow it"
        )


def route_pools(catalog: Catalog) -> dict[str, str]:
    """Route label (as error messages name it) -> the pool that serves it."""
    return {f"route {r.spec.name} ({group} / {model})": r.spec.pool for (group, model), r in catalog.routes.items()}


def default_catalog_text() -> str:
    return resources.files("imagerelay.catalog").joinpath("default.yaml").read_text("utf-8")


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load the catalog at ``path`` or the shipped default."""
    if path is None:
        text, source = default_catalog_text(), "default catalog"
    else:
        p = Path(path)
        try:
            text = p.read_text("utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read catalog {p}: {exc.strerror}") from None
        source = str(p)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CatalogError(f"{source}: not valid YAML/JSON{where}: {problem}") from None
    return parse_catalog(raw, source)
