"""``openai``: the official OpenAI Images API (``Authorization: Bearer``)."""

from __future__ import annotations

from typing import ClassVar

from imagerelay.upstreams.base import CallTarget
from imagerelay.upstreams.http_dialect import OpenAIDialectConnector

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIConnector(OpenAIDialectConnector):
    type: ClassVar[str] = "openai"

    def url(self, target: CallTarget, endpoint: str) -> str:
        base = (target.channel.base_url or OPENAI_BASE_URL).rstrip("/")
        return f"{base}/images/{endpoint}"
