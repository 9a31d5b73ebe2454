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
    # Routes whose pool none of ``channels`` serves get the simulator: the gateway refuses
    # to start with a route nobody serves, and a test about some routes leaves the rest be.
    served = {pool for ch in channels for pool in ch.get("pools", [])}
    spare = sorted({route["pool"] for route in doc["routes"]} - served)
    doc["channels"] = [
        *channels,
        *([{"name": "simulator-spare", "type": "simulator", "pools": spare}] if spare else []),
    ]
    for route in doc["routes"]:
        route.update(route_updates.get(route["name"], {}))
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
