"""Per-route request validation: pure functions from (body, route, profile) to an
:class:`ImageRequest`, or a 4xx that names the parameter and says what to do instead.

Routes reject, they never clamp: an out-of-range value changes what a caller pays,
so it is an error, not a silent correction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagerelay.catalog.model import ParamProfile, RouteSpec
from imagerelay.domain.sizes import check_official_size, check_table_size
from imagerelay.domain.types import ImageRequest, InputImage
from imagerelay.errors import InvalidRequest, PayloadTooLarge, UnknownParameter

# Parameters of the official Images API that a route may or may not accept.
OPTIONAL_PARAMS = (
    "size", "quality", "background", "output_format", "output_compression", "moderation",
    "stream", "partial_images", "input_fidelity",
)
ALWAYS = ("prompt", "model", "n", "response_format", "user", "safety_identifier")
PURPOSE = {"size": "explicit sizes", "quality": "quality control", "n": "several images per call",
           "stream": "streaming", "partial_images": "streaming partial images"}
PASSTHROUGH = ("n", "size", "quality", "background", "output_format", "output_compression", "moderation",
               "partial_images", "user", "safety_identifier", "input_fidelity")


def accepts(profile: ParamProfile, param: str) -> bool:
    """Whether a route with ``profile`` accepts ``param`` at all."""
    if param == "size":
        return profile.size != "reject"
    if param in ("quality", "background", "moderation"):
        return getattr(profile, param) is not None
    if param == "output_format":
        return profile.output_formats is not None
    if param == "output_compression":
        return profile.output_compression
    if param == "stream":
        return profile.streaming
    if param == "partial_images":
        return profile.streaming and profile.partial_images_max > 0
    if param == "input_fidelity":
        return profile.input_fidelity
    if param == "n":
        return profile.n_max > 1
    return param in ALWAYS


@dataclass(frozen=True, slots=True)
class RouteHints:
    """Where else a parameter this route rejects is accepted, for helpful messages."""

    group: str
    model: str
    same_group_models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # param -> models
    other_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # param -> groups

    def advice(self, param: str) -> str:
        options = []
        models = self.same_group_models.get(param, ())
        if models:
            options.append(f"use model {' or '.join(models)}")
        groups = self.other_groups.get(param, ())
        if groups:
            options.append(f"{'or ' if options else 'use '}group {' or '.join(groups)}")
        purpose = PURPOSE.get(param, param)
        if not options:
            return f"remove {param} from the request"
        return f"{', '.join(options)} for {purpose}"


def build_hints(routes: Iterable[RouteSpec], profiles: Mapping[str, ParamProfile]) -> dict[tuple[str, str], RouteHints]:
    routes = list(routes)
    hints: dict[tuple[str, str], RouteHints] = {}
    for route in routes:
        same: dict[str, tuple[str, ...]] = {}
        other: dict[str, tuple[str, ...]] = {}
        for param in (*OPTIONAL_PARAMS, "n"):
            same[param] = tuple(dict.fromkeys(
                r.model for r in routes
                if r.group == route.group and r.model != route.model and accepts(profiles[r.params], param)
            ))
            other[param] = tuple(dict.fromkeys(
                r.group for r in routes if r.group != route.group and accepts(profiles[r.params], param)
            ))
        hints[(route.group, route.model)] = RouteHints(route.group, route.model, same, other)
    return hints


class _Reader:
    """Typed access to a body whose values are native JSON, or strings from multipart."""

    def __init__(self, body: Mapping[str, Any], from_multipart: bool) -> None:
        self.body = {k: v for k, v in body.items() if v is not None}  # JSON null = not given
        self.multipart = from_multipart

    def has(self, key: str) -> bool:
        return key in self.body

    def string(self, key: str) -> str | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidRequest(f"{key} must be a string, not {_type_name(value)}.", param=key, code="invalid_type")
        return value

    def integer(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if self.multipart and isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit() and len(text) < 10:
                return int(text)
            raise InvalidRequest(f"{key} must be an integer, got '{value[:40]}'.", param=key, code="invalid_type")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{key} must be an integer, not {_type_name(value)}.", param=key, code="invalid_type")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.body.get(key)
        if value is None:
            return None
        if self.multipart and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise InvalidRequest(f"{key} must be true or false, not {_type_name(value)}.", param=key, code="invalid_type")
        return value


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _choice(reader: _Reader, key: str, allowed: Sequence[str]) -> str | None:
    value = reader.string(key)
    if value is not None and value not in allowed:
        raise InvalidRequest(
            f"Invalid value for {key}: '{value[:60]}'. Supported values are: {', '.join(repr(a) for a in allowed)}.",
            param=key,
        )
    return value


def _route_label(route: RouteSpec) -> str:
    return f"model {route.model} in group {route.group}"


def _reject_unsupported(reader: _Reader, route: RouteSpec, profile: ParamProfile, hints: RouteHints,
                        endpoint: str) -> None:
    known = set(ALWAYS) | set(OPTIONAL_PARAMS)
    for key in reader.body:
        if key not in known:
            raise UnknownParameter(
                f"Unknown parameter: '{key}'. {_route_label(route)} accepts: "
                f"{', '.join(p for p in (*ALWAYS, *OPTIONAL_PARAMS) if accepts(profile, p) or p in ALWAYS)}.",
                param=key,
            )
        if key in OPTIONAL_PARAMS and not accepts(profile, key):
            if key == "input_fidelity":
                raise InvalidRequest(
                    f"input_fidelity is not supported by {_route_label(route)} (gpt-image-2 always uses high "
                    "fidelity); remove it from the request.",
                    param=key, code="unsupported_parameter",
                )
            raise InvalidRequest(
                f"{key} is not supported by {_route_label(route)}; {hints.advice(key)}.",
                param=key, code="unsupported_parameter",
            )


def _validate_common(reader: _Reader, route: RouteSpec, profile: ParamProfile, hints: RouteHints,
                     endpoint: str, first_image: InputImage | None) -> dict[str, Any]:
    _reject_unsupported(reader, route, profile, hints, endpoint)
    prompt = reader.body.get("prompt")
    if prompt is None:
        raise InvalidRequest("prompt is required: describe the image you want.", param="prompt",
                             code="missing_required_parameter")
    if not isinstance(prompt, str):
        raise InvalidRequest(f"prompt must be a string, not {_type_name(prompt)}.", param="prompt", code="invalid_type")
    if not prompt.strip():
        raise InvalidRequest("prompt is empty: describe the image you want.", param="prompt")
    if len(prompt) > profile.max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(prompt):,} characters; the maximum is {profile.max_prompt_chars} characters. Shorten it.",
            param="prompt", code="string_above_max_length",
        )
    out: dict[str, Any] = {"prompt": prompt}

    n = reader.integer("n")
    if n is not None and not 1 <= n <= profile.n_max:
        advice = hints.advice("n")
        more = f" {advice[0].upper()}{advice[1:]}." if n > 1 and profile.n_max == 1 else ""
        raise InvalidRequest(
            f"n must be between 1 and {profile.n_max} for {_route_label(route)}; got {n}.{more}".rstrip(),
            param="n",
        )
    out["n"] = n

    size = reader.string("size")
    if size is not None:
        if profile.size == "official":
            check_official_size(size)
        elif profile.size == "table":
            check_table_size(size, profile.size_table, _route_label(route))
    out["size"] = size

    out["quality"] = _choice(reader, "quality", profile.quality or ())
    output_format = _choice(reader, "output_format", profile.output_formats or ())
    out["output_format"] = output_format
    background = _choice(reader, "background", profile.background or ())
    if background == "transparent" and (output_format or "png") not in ("png", "webp"):
        raise InvalidRequest(
            f"background 'transparent' needs output_format png or webp, not {output_format}; "
            "change output_format or use an opaque background.",
            param="background",
        )
    out["background"] = background

    compression = reader.integer("output_compression")
    if compression is not None:
        if not 0 <= compression <= 100:
            raise InvalidRequest(f"output_compression must be between 0 and 100; got {compression}.",
                                 param="output_compression")
        if (output_format or "png") == "png" and compression != 100:
            raise InvalidRequest(
                "output_compression applies to jpeg and webp only; set output_format to jpeg or webp, "
                "or remove output_compression.",
                param="output_compression",
            )
    out["output_compression"] = compression
    out["moderation"] = _choice(reader, "moderation", profile.moderation or ())

    stream = reader.boolean("stream")
    partial = reader.integer("partial_images")
    if partial is not None:
        if not 0 <= partial <= profile.partial_images_max:
            raise InvalidRequest(
                f"partial_images must be between 0 and {profile.partial_images_max}; got {partial}.",
                param="partial_images",
            )
    out["stream"] = bool(stream)
    out["partial_images"] = partial

    response_format = _choice(reader, "response_format", ("b64_json", "url"))
    out["response_format"] = response_format or "b64_json"
    out["user"] = reader.string("user")
    safety = reader.string("safety_identifier")
    fidelity = _choice(reader, "input_fidelity", ("high", "low")) if profile.input_fidelity else None
    if fidelity is not None and endpoint != "edits":
        raise InvalidRequest("input_fidelity applies to image edits only; remove it.", param="input_fidelity")

    params: dict[str, Any] = {}
    values = {**out, "safety_identifier": safety, "input_fidelity": fidelity}
    for key in PASSTHROUGH:
        if values.get(key) is not None:
            params[key] = values[key]
    out["upstream_params"] = params
    out["n"] = n if n is not None else 1
    return out


def validate_generation(
    body: Mapping[str, Any], route: RouteSpec, profile: ParamProfile, hints: RouteHints
) -> ImageRequest:
    reader = _Reader(body, from_multipart=False)
    values = _validate_common(reader, route, profile, hints, "generations", None)
    return ImageRequest(endpoint="generations", model=route.model, **values)


def validate_edit(
    fields: Mapping[str, Any],
    images: Sequence[InputImage],
    mask: InputImage | None,
    route: RouteSpec,
    profile: ParamProfile,
    hints: RouteHints,
    *,
    from_multipart: bool,
) -> ImageRequest:
    if not images:
        raise InvalidRequest(
            "Attach at least one image to edit: -F image=@source.png (or image[] for several).",
            param="image", code="missing_required_parameter",
        )
    if len(images) > profile.max_input_images:
        raise InvalidRequest(
            f"{len(images)} images were sent; {_route_label(route)} takes at most {profile.max_input_images}.",
            param="image",
        )
    for img in images:
        if len(img.data) > profile.max_image_bytes:
            raise PayloadTooLarge(
                f"{img.part} is larger than {profile.max_image_bytes // (1024 * 1024)} MB; send a smaller image.",
                param=img.part,
            )
    if mask is not None:
        first = images[0]
        if mask.mime != "image/png":
            raise InvalidRequest("mask must be a PNG with an alpha channel.", param="mask")
        if not mask.has_alpha:
            raise InvalidRequest(
                "mask must have an alpha channel: transparent pixels mark where to edit. Save it as RGBA PNG.",
                param="mask",
            )
        if (mask.width, mask.height) != (first.width, first.height):
            raise InvalidRequest(
                f"mask is {mask.width}x{mask.height} but the first image is {first.width}x{first.height}; "
                "they must have the same dimensions.",
                param="mask",
            )
    reader = _Reader(fields, from_multipart=from_multipart)
    values = _validate_common(reader, route, profile, hints, "edits", images[0])
    return ImageRequest(endpoint="edits", model=route.model, images=tuple(images), mask=mask, **values)
