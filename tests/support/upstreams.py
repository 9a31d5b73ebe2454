"""Simulated upstreams for the mixed route matrix: one simulator server per channel."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from imagerelay_sim.server import DEFAULT_MODELS, create_upstream_app
from tests.support.servers import run_asgi


@contextlib.contextmanager
def simulated_channels(
    keys: Mapping[str, str], *, log_level: str = "warning"
) -> Iterator[tuple[dict[str, str], list[dict[str, Any]]]]:
    """Start the simulators and yield (channel name -> base URL, catalog channel entries).

    - ``legacy``: openai-compatible reseller for the legacy pools (``LEGACY_KEY``);
    - ``azure-1``: Azure deployment form, priority 10 in official-mixed (``AZURE_KEY``);
    - ``openai-a``: official-mixed and official-pure (``OPENAI_A_KEY``);
    - ``openai-b``: official-pure, only when ``keys`` has ``OPENAI_B_KEY``.
    Each channel reads its key from the environment variable of that name. ``log_level``
    "critical" keeps quiet about calls a test leaves sleeping upstream (a killed gateway's).
    """
    with contextlib.ExitStack() as stack:

        def serve(protocol: str, key_env: str, **options: Any) -> str:
            return stack.enter_context(
                run_asgi(create_upstream_app(protocol, api_keys=[keys[key_env]], **options), log_level=log_level)
            )

        urls = {
            "legacy": serve("openai", "LEGACY_KEY", models=(*DEFAULT_MODELS, "gpt-image-2-vip")),
            "azure-1": serve("azure", "AZURE_KEY", deployments={"img2-deploy": "gpt-image-2"}),
            "openai-a": serve("openai", "OPENAI_A_KEY"),
        }
        channels: list[dict[str, Any]] = [
            {
                "name": "legacy",
                "type": "openai-compatible",
                "base_url": urls["legacy"] + "/v1",
                "api_key_env": "LEGACY_KEY",
                "pools": ["legacy", "legacy-vip"],
            },
            {
                "name": "azure-1",
                "type": "azure",
                "base_url": urls["azure-1"],
                "api_key_env": "AZURE_KEY",
                "model_map": {"gpt-image-2": "img2-deploy"},
                "pools": ["official-mixed"],
                "priority": 10,
            },
            {
                "name": "openai-a",
                "type": "openai",
                "base_url": urls["openai-a"] + "/v1",
                "api_key_env": "OPENAI_A_KEY",
                "pools": ["official-mixed", "official-pure"],
            },
        ]
        if "OPENAI_B_KEY" in keys:
            urls["openai-b"] = serve("openai", "OPENAI_B_KEY")
            channels.append(
                {
                    "name": "openai-b",
                    "type": "openai",
                    "base_url": urls["openai-b"] + "/v1",
                    "api_key_env": "OPENAI_B_KEY",
                    "pools": ["official-pure"],
                }
            )
        yield urls, channels
