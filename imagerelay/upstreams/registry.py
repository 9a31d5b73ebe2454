"""Channel type -> connector. Adding a provider is adding one module and one line here.

``tests/unit/test_registry.py`` checks that every channel type the catalog schema
allows has a connector.
"""

from __future__ import annotations

from collections.abc import Callable

from imagerelay.upstreams.base import Connector


def _simulator() -> Connector:
    from imagerelay.upstreams.simulator import SimulatorConnector

    return SimulatorConnector()


def _openai() -> Connector:
    from imagerelay.upstreams.openai import OpenAIConnector

    return OpenAIConnector()


def _azure() -> Connector:
    from imagerelay.upstreams.azure import AzureConnector

    return AzureConnector()


def _compatible() -> Connector:
    from imagerelay.upstreams.compatible import CompatibleConnector

    return CompatibleConnector()


CONNECTOR_FACTORIES: dict[str, Callable[[], Connector]] = {
    "simulator": _simulator,
    "openai": _openai,
    "azure": _azure,
    "openai-compatible": _compatible,
}


def build_connectors() -> dict[str, Connector]:
    return {name: factory() for name, factory in CONNECTOR_FACTORIES.items()}
