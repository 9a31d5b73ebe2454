"""The built-in offline ``simulator`` channel: renders real images locally.

It answers like an official GPT image upstream (base64 images, response-level
size/quality/background/output_format, ``usage`` counted the official way) so the
whole gateway, billing included, works on a machine with no upstream credentials.
Rendering is CPU work, so it runs in a worker thread and never stalls the event loop.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio

from imagerelay.domain.types import ImageRequest
from imagerelay.domain.usage import simulated_usage
from imagerelay.simulation.render import render_image, resolve_dimensions
from imagerelay.upstreams.base import CallTarget, StreamEvent, UpstreamResult


def _render_b64(
    request: ImageRequest, width: int, height: int, index: int, partial: tuple[int, int] | None = None
) -> str:
    data = render_image(
        prompt=request.prompt,
        width=width,
        height=height,
        output_format=request.effective_output_format,
        background=request.background,
        output_compression=request.output_compression,
        index=index,
        sources=[img.data for img in request.images],
        partial=partial,
    )
    return base64.b64encode(data).decode("ascii")


class SimulatorConnector:
    type: ClassVar[str] = "simulator"

    def _dimensions(self, target: CallTarget, request: ImageRequest) -> tuple[int, int]:
        first = (request.images[0].width, request.images[0].height) if request.images else None
        return resolve_dimensions(request.size, target.default_size, first)

    def _meta(self, request: ImageRequest, width: int, height: int) -> dict[str, Any]:
        return {
            "size": f"{width}x{height}",
            "quality": request.quality if request.quality not in (None, "auto") else "medium",
            "background": "transparent" if request.background == "transparent" else "opaque",
            "output_format": request.effective_output_format,
        }

    async def images(self, target: CallTarget, request: ImageRequest) -> UpstreamResult:
        width, height = self._dimensions(target, request)

        def _work() -> list[dict[str, Any]]:
            return [{"b64_json": _render_b64(request, width, height, i)} for i in range(request.n)]

        items = await anyio.to_thread.run_sync(_work)
        return UpstreamResult(
            items=items,
            usage=simulated_usage(request, target.upstream_model, width, height),
            meta=self._meta(request, width, height),
            created=int(time.time()),
        )

    async def stream(self, target: CallTarget, request: ImageRequest) -> AsyncIterator[StreamEvent]:
        width, height = self._dimensions(target, request)
        prefix = "image_generation" if request.endpoint == "generations" else "image_edit"
        meta = self._meta(request, width, height)
        partials = request.partial_images or 0
        for i in range(partials):
            b64 = await anyio.to_thread.run_sync(_render_b64, request, width, height, 0, (i, partials))
            yield StreamEvent(
                {
                    "type": f"{prefix}.partial_image",
                    "b64_json": b64,
                    "partial_image_index": i,
                    "created_at": int(time.time()),
                    **meta,
                }
            )
        usage = simulated_usage(request, target.upstream_model, width, height)
        for index in range(request.n):
            b64 = await anyio.to_thread.run_sync(_render_b64, request, width, height, index)
            yield StreamEvent(
                {
                    "type": f"{prefix}.completed",
                    "b64_json": b64,
                    "created_at": int(time.time()),
                    **meta,
                    "usage": usage.to_official(),
                }
            )

    async def aclose(self) -> None:
        return None
