"""``openai-compatible``: any upstream speaking the OpenAI Images dialect at its own
base URL (resellers, the legacy web-style routes). Same wire as ``openai``; the base
URL is mandatory (checked when the catalog loads)."""

from __future__ import annotations

from typing import ClassVar

from imagerelay.upstreams.http_dialect import OpenAIDialectConnector


class CompatibleConnector(OpenAIDialectConnector):
    type: ClassVar[str] = "openai-compatible"
