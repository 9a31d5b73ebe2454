"""Catalog files for tests: the default route matrix with other channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imagerelay.catalog.loader import default_catalog_text


def write_catalog(path: Path, channels: list[dict[str, Any]], **route_updates: dict[str, Any]) -> Path:
    """The default catalog with ``channels`` instead of the simulator ones.

    ``route_updates`` maps a route name to fields to change (e.g. keepalive_s).
    """
    doc = yaml.safe_load(default_catalog_text())
    doc["channels"] = channels
    for route in doc["routes"]:
        route.update(route_updates.get(route["name"], {}))
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
