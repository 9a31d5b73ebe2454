"""Channel type -> connector. Adding a provider is adding one module and one line here.

``tests/unit/test_registry.py`` checks that every channel type the catalog schema
allows has a connector.
"""

from __future__ import annotations

from collections.abc import Callable

from imagerelay.upstreams.base import Connector
from imagerelay.upstreams.transport import DEFAULT_MAX_ANSWER_BYTES


def _simulator(max_answer_bytes: int) -> Connector:
    from imagerelay.upstreams.simulator import SimulatorConnector

    return SimulatorConnector()


def _openai(max_answer_bytes: int) -> Connector:
    from imagerelay.upstreams.openai import OpenAIConnector

    return OpenAIConnector(max_answer_bytes=max_answer_bytes)


def _azure(max_answer_bytes: int) -> Connector:
    from imagerelay.upstreams.azure import AzureConnector

    return AzureConnector(max_answer_bytes=max_answer_bytes)


def _compatible(max_answer_bytes: int) -> Connector:
    from imagerelay.upstreams.compatible import CompatibleConnector

    return CompatibleConnector(max_answer_bytes=max_answer_bytes)


CONNECTOR_FACTORIES: dict[str, Callable[[int], Connector]] = {
    "simulator": _simulator,
    "openai": _openai,
    "azure": _azure,
    "openai-compatible": _compatible,
}


def build_connectors(max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES) -> dict[str, Connector]:
    return {name: factory(max_answer_bytes) for name, factory in CONNECTOR_FACTORIES.items()}
