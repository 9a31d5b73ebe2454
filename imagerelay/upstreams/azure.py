"""``azure``: Azure OpenAI, a URL-and-auth variation of the OpenAI dialect.

- deployment form: ``{base}/openai/deployments/{deployment}/images/{endpoint}?api-version=``
  with ``model`` stripped from the body (gpt-image-2 deployments reject it);
- v1 form: ``{base}/openai/v1/images/{endpoint}`` with the deployment name as ``model``;
- ``api-key`` header; Azure's content-filter errors map to ``moderation_blocked``;
- Azure cannot produce webp: we ask for png and transcode, so a mixed pool serves
  every official request shape.
"""

from __future__ import annotations

import base64
import io
from typing import Any, ClassVar
from urllib.parse import quote

from PIL import Image

from imagerelay.domain.b64 import B64Payload, decode_lenient
from imagerelay.domain.types import ImageRequest
from imagerelay.errors import ApiError
from imagerelay.upstreams.base import CallTarget
from imagerelay.upstreams.http_dialect import OpenAIDialectConnector

DEFAULT_API_VERSION = "2025-04-01-preview"
_FILTER_CODES = {"contentfilter", "content_filter", "responsibleaipolicyviolation", "moderation_blocked"}


class AzureConnector(OpenAIDialectConnector):
    type: ClassVar[str] = "azure"

    def url(self, target: CallTarget, endpoint: str) -> str:
        base = (target.channel.base_url or "").rstrip("/")
        if target.channel.azure_form == "v1":
            version = target.channel.api_version
            query = f"?api-version={quote(version, safe='')}" if version and version != "v1" else ""
            return f"{base}/openai/v1/images/{endpoint}{query}"
        version = quote(target.channel.api_version or DEFAULT_API_VERSION, safe="")
        # The deployment is one path segment whatever it holds (a space, "/", non-ASCII).
        deployment = quote(target.upstream_model, safe="")
        return f"{base}/openai/deployments/{deployment}/images/{endpoint}?api-version={version}"

    def auth_headers(self, target: CallTarget) -> dict[str, str]:
        return {"api-key": target.api_key} if target.api_key else {}

    def body_model(self, target: CallTarget) -> str | None:
        return target.upstream_model if target.channel.azure_form == "v1" else None

    def adapt_params(self, target: CallTarget, request: ImageRequest) -> dict[str, Any]:
        params = dict(request.upstream_params)
        if params.get("output_format") == "webp":
            params["output_format"] = "png"
            params.pop("output_compression", None)
        return params

    def transform_b64(self, request: ImageRequest, b64: B64Payload) -> B64Payload:
        if request.output_format != "webp":
            return b64
        try:
            raw = decode_lenient(b64)
            img = Image.open(io.BytesIO(raw))
            out = io.BytesIO()
            quality = request.output_compression if request.output_compression is not None else 100
            img.save(out, "WEBP", quality=quality, lossless=quality == 100)
        except Exception:  # noqa: BLE001 - undecodable: let the relay refuse it as usual
            return b64
        return base64.b64encode(out.getvalue()).decode("ascii")

    def client_error(self, status: int, error: dict[str, Any]) -> ApiError:
        codes = {str(error.get("code", "")).lower()}
        inner = error.get("inner_error") or error.get("innererror")
        if isinstance(inner, dict):
            codes.add(str(inner.get("code", "")).lower())
        if codes & _FILTER_CODES:
            return ApiError(
                "Your request was rejected by the upstream safety system; change the prompt or image and try again.",
                status=400,
                type="image_generation_user_error",
                code="moderation_blocked",
            )
        return super().client_error(status, error)
