"""Channel type -> connector. Adding a provider is adding one module and one line here.

``tests/unit/test_registry.py`` checks that every channel type the catalog schema
allows has a connector.
"""

from __future__ import annotations

from collections.abc import Callable

from imagerelay.upstreams.base import Connector
from imagerelay.upstreams.transport import DEFAULT_ANSWER_MEMORY_BYTES, DEFAULT_MAX_ANSWER_BYTES, AnswerMemory


def _simulator(max_answer_bytes: int, memory: AnswerMemory) -> Connector:
    from imagerelay.upstreams.simulator import SimulatorConnector

    return SimulatorConnector()


def _openai(max_answer_bytes: int, memory: AnswerMemory) -> Connector:
    from imagerelay.upstreams.openai import OpenAIConnector

    return OpenAIConnector(max_answer_bytes=max_answer_bytes, answer_memory=memory)


def _azure(max_answer_bytes: int, memory: AnswerMemory) -> Connector:
    from imagerelay.upstreams.azure import AzureConnector

    return AzureConnector(max_answer_bytes=max_answer_bytes, answer_memory=memory)


def _compatible(max_answer_bytes: int, memory: AnswerMemory) -> Connector:
    from imagerelay.upstreams.compatible import CompatibleConnector

    return CompatibleConnector(max_answer_bytes=max_answer_bytes, answer_memory=memory)


CONNECTOR_FACTORIES: dict[str, Callable[[int, AnswerMemory], Connector]] = {
    "simulator": _simulator,
    "openai": _openai,
    "azure": _azure,
    "openai-compatible": _compatible,
}


def build_connectors(
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES, answer_memory_bytes: int = DEFAULT_ANSWER_MEMORY_BYTES
) -> dict[str, Connector]:
    """One connector per channel type, sharing one answer-memory budget (the process's)."""
    memory = AnswerMemory(answer_memory_bytes)
    return {name: factory(max_answer_bytes, memory) for name, factory in CONNECTOR_FACTORIES.items()}
