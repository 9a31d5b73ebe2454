"""Value objects shared by validation, connectors, pricing and the relay service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Endpoint = Literal["generations", "edits"]
ResponseFormat = Literal["b64_json", "url"]


@dataclass(frozen=True, slots=True)
class InputImage:
    """One uploaded image (or mask), already sniffed: ``mime`` comes from the bytes."""

    data: bytes
    mime: str  # image/png | image/jpeg | image/webp
    width: int
    height: int
    part: str  # where the client put it: "image", "image[1]", "mask", "images[0].image_url"
    filename: str = "image.png"
    has_alpha: bool = False


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A request that passed the route's validation.

    ``upstream_params`` holds the official parameters the caller sent (minus ``model``,
    ``prompt``, ``response_format`` and ``stream`` which the relay handles), exactly as
    given, so official routes can pass the body through unchanged.
    """

    endpoint: Endpoint
    model: str
    prompt: str
    n: int = 1
    size: str | None = None  # None = caller gave none; else "auto" or "WxH"
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None  # None = caller gave none (png)
    output_compression: int | None = None
    moderation: str | None = None
    partial_images: int | None = None
    stream: bool = False
    response_format: ResponseFormat = "b64_json"
    user: str | None = None
    upstream_params: dict[str, Any] = field(default_factory=dict)
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None

    @property
    def effective_output_format(self) -> str:
        return self.output_format or "png"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the official API reports it (all integers)."""

    input_text_tokens: int = 0
    input_image_tokens: int = 0
    cached_text_tokens: int = 0
    cached_image_tokens: int = 0
    output_image_tokens: int = 0
    output_text_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        return self.input_text_tokens + self.input_image_tokens

    @property
    def output_tokens(self) -> int:
        return self.output_image_tokens + self.output_text_tokens

    def to_official(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "total_tokens": self.input_tokens + self.output_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_tokens_details": {
                "text_tokens": self.input_text_tokens,
                "image_tokens": self.input_image_tokens,
            },
            "output_tokens_details": {
                "image_tokens": self.output_image_tokens,
                "text_tokens": self.output_text_tokens,
            },
        }
        if self.cached_text_tokens or self.cached_image_tokens:
            body["input_tokens_details"]["cached_tokens"] = self.cached_text_tokens + self.cached_image_tokens
            body["input_tokens_details"]["cached_tokens_details"] = {
                "text_tokens": self.cached_text_tokens,
                "image_tokens": self.cached_image_tokens,
            }
        return body

    @classmethod
    def from_official(cls, raw: Any) -> Usage | None:
        """Parse an upstream ``usage`` object; ``None`` when absent or unusable."""
        if not isinstance(raw, dict):
            return None

        def _int(obj: Any, key: str) -> int:
            value = obj.get(key) if isinstance(obj, dict) else None
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        inp = raw.get("input_tokens_details") or {}
        out = raw.get("output_tokens_details") or {}
        cached = inp.get("cached_tokens_details") or {} if isinstance(inp, dict) else {}
        text_in = _int(inp, "text_tokens")
        image_in = _int(inp, "image_tokens")
        if not inp and _int(raw, "input_tokens"):
            text_in = _int(raw, "input_tokens")
        image_out = _int(out, "image_tokens")
        text_out = _int(out, "text_tokens")
        if not out and _int(raw, "output_tokens"):
            image_out = _int(raw, "output_tokens")
        cached_text = _int(cached, "text_tokens")
        cached_image = _int(cached, "image_tokens")
        if not cached and _int(inp, "cached_tokens"):
            cached_text = _int(inp, "cached_tokens")
        return cls(
            input_text_tokens=text_in,
            input_image_tokens=image_in,
            cached_text_tokens=cached_text,
            cached_image_tokens=cached_image,
            output_image_tokens=image_out,
            output_text_tokens=text_out,
        )
