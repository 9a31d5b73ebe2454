"""Per-route request validation: pure functions from (body, route, profile, hints) to an
:class:`ImageRequest`, or a 4xx that names the parameter and says what to do instead.

Why this is strict:

- Routes reject, they never clamp. An out-of-range value changes what the caller gets and
  pays for, so it is an error with a concrete alternative, not a silent correction.
- Official routes pass the caller's parameters upstream; anything we let through must be
  something the upstream accepts, in the native JSON type it expects (``n`` is ``2``, not
  ``"2"``). Multipart can only carry strings, so edits sent as multipart get their
  numbers and booleans parsed here; JSON bodies must already use the right types.
- A JSON ``null`` means "not given": the official SDK never sends one, other clients do.
- A parameter the route does not take is answered with where it *is* taken (another
  model of the same group, or another group), computed from the catalog by
  :func:`build_hints`, so the advice stays true when the operator edits the catalog.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from imagerelay.catalog.model import ParamProfile, RouteSpec
from imagerelay.domain.params import ALWAYS, BY_NAME, HINTED, ON_REQUEST, PARAMS, UPSTREAM, ParamRule, accepts
from imagerelay.domain.sizes import check_official_size, check_table_size
from imagerelay.domain.types import ImageRequest, InputImage
from imagerelay.errors import InvalidRequest, PayloadTooLarge, UnknownParameter

# Keys that carry files; in an edit they arrive as ``images``/``mask`` arguments instead.
FILE_KEYS = ("image", "images", "mask")
# dall-e values that people carry over to GPT image models.
_DALLE_VALUES = {("quality", "hd"): "high", ("quality", "standard"): "medium"}
_DALLE_PARAMS = ("style",)
_MULTIPART_INT = re.compile(r"\s*([+-]?[0-9]{1,9})\s*")
_JSON_DIGITS = re.compile(r"[+-]?[0-9]{1,9}")


def _or(items: Sequence[str]) -> str:
    return " or ".join(items)


@dataclass(frozen=True, slots=True)
class RouteHints:
    """For one route (group, model): where else each parameter it rejects is accepted.

    - ``same_group_models[param]``: other models of the same group that accept ``param``
      (the caller's token works for them as is);
    - ``other_groups[param]``: groups whose route for the *same model* accepts ``param``;
      when no such group exists, the groups where any model accepts it;
    - ``other_group_models[param]``: in the fallback case, the models to use in those
      groups (empty when the same model name works there).
    """

    group: str
    model: str
    same_group_models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    other_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    other_group_models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def advice(self, param: str) -> str:
        """What to do instead, e.g. "use group Sora2Official or GPTImage2 Enterprise for quality control"."""
        rule = BY_NAME.get(param)
        purpose = rule.purpose if rule is not None and rule.purpose is not None else param
        models = self.same_group_models.get(param, ())
        groups = self.other_groups.get(param, ())
        group_models = self.other_group_models.get(param, ())
        with_model = f", with model {_or(group_models)}" if group_models else ""
        if models and groups:
            return f"use model {_or(models)} for {purpose}, or group {_or(groups)}{with_model}"
        if models:
            return f"use model {_or(models)} for {purpose}"
        if groups:
            return f"use group {_or(groups)} for {purpose}{with_model}"
        return f"remove {param} from the request"


def build_hints(routes: Iterable[RouteSpec], profiles: Mapping[str, ParamProfile]) -> dict[tuple[str, str], RouteHints]:
    """``(group, model) -> RouteHints`` for every route, computed from the catalog alone.

    Names keep catalog order, without duplicates. A route whose profile is missing from
    ``profiles`` is a catalog error and raises ``KeyError`` (the loader prevents it).
    """
    routes = list(routes)
    takes = {(r.group, r.model): {p: accepts(profiles[r.params], p) for p in HINTED} for r in routes}
    hints: dict[tuple[str, str], RouteHints] = {}
    for route in routes:
        same: dict[str, tuple[str, ...]] = {}
        groups: dict[str, tuple[str, ...]] = {}
        group_models: dict[str, tuple[str, ...]] = {}
        for param in HINTED:
            same[param] = tuple(
                dict.fromkeys(
                    r.model
                    for r in routes
                    if r.group == route.group and r.model != route.model and takes[(r.group, r.model)][param]
                )
            )
            elsewhere = [r for r in routes if r.group != route.group and takes[(r.group, r.model)][param]]
            same_model = [r for r in elsewhere if r.model == route.model]
            chosen = same_model or elsewhere
            groups[param] = tuple(dict.fromkeys(r.group for r in chosen))
            group_models[param] = () if same_model else tuple(dict.fromkeys(r.model for r in chosen))
        hints[(route.group, route.model)] = RouteHints(
            route.group,
            route.model,
            MappingProxyType(same),
            MappingProxyType(groups),
            MappingProxyType(group_models),
        )
    return hints


# -- typed access to the body ------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


class _Reader:
    """Typed access to a body whose values are native JSON, or strings from multipart."""

    def __init__(self, body: Mapping[str, Any], from_multipart: bool) -> None:
        self.body = {k: v for k, v in body.items() if v is not None}  # JSON null = not given
        self.multipart = from_multipart

    def string(self, key: str) -> str | None:
        value = self.body.get(key)
        if value is None or isinstance(value, str):
            return value
        raise InvalidRequest(f"{key} must be a string, not {_type_name(value)}.", param=key, code="invalid_type")

    def integer(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            if self.multipart:
                match = _MULTIPART_INT.fullmatch(value)
                if match:
                    return int(match.group(1))
                raise InvalidRequest(
                    f"{key} must be a whole number, got '{_show(value)}'.", param=key, code="invalid_type"
                )
            if _JSON_DIGITS.fullmatch(value.strip()):
                raise InvalidRequest(
                    f"{key} must be an integer, not a string; send {key}: {value.strip()} without quotes.",
                    param=key,
                    code="invalid_type",
                )
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(
                f"{key} must be an integer, not {_type_name(value)} ({_show(value)}).", param=key, code="invalid_type"
            )
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.body.get(key)
        if value is None or isinstance(value, bool):
            return value
        if self.multipart and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        hint = " without quotes" if isinstance(value, str) and value.strip().lower() in ("true", "false") else ""
        raise InvalidRequest(
            f"{key} must be true or false{hint}, not {_type_name(value)} ({_show(value)}).",
            param=key,
            code="invalid_type",
        )


def _route_label(route: RouteSpec) -> str:
    return f"model {route.model} in group {route.group}"


def _choice(reader: _Reader, key: str, allowed: Sequence[str]) -> str | None:
    value = reader.string(key)
    if value is None or value in allowed:
        return value
    quoted = [f"'{a}'" for a in allowed]
    supported = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    hint = ""
    dalle = _DALLE_VALUES.get((key, value.strip().lower()))
    if dalle is not None and dalle in allowed:
        hint = f" '{value}' is a dall-e value; for GPT image models use '{dalle}'."
    elif value.strip().lower() in allowed:
        hint = f" Values are lowercase: use '{value.strip().lower()}'."
    raise InvalidRequest(
        f"Invalid value for {key}: '{_show(value)}'. Supported values are: {supported}.{hint}", param=key
    )


def _unsupported(key: str, route: RouteSpec, hints: RouteHints) -> InvalidRequest:
    return InvalidRequest(
        f"{key} is not supported by {_route_label(route)}; {hints.advice(key)}.",
        param=key,
        code="unsupported_parameter",
    )


def _check_keys(reader: _Reader, route: RouteSpec, profile: ParamProfile, hints: RouteHints, endpoint: str) -> None:
    """Unknown keys -> ``unknown_parameter``; official keys this route lacks -> advice."""
    for key in reader.body:
        if key in FILE_KEYS and endpoint == "edits":
            continue  # the files themselves arrive as the ``images``/``mask`` arguments
        rule = BY_NAME.get(key)
        if rule is not None:
            # A boolean (stream=false is harmless everywhere) is judged with its value.
            if key not in ALWAYS and rule.kind != "boolean" and not rule.accepted(profile):
                if rule.unsupported_note is not None:
                    raise InvalidRequest(
                        f"{key} is not supported by {_route_label(route)} ({rule.unsupported_note}); "
                        "remove it from the request.",
                        param=key,
                        code="unsupported_parameter",
                    )
                raise _unsupported(key, route, hints)
            continue
        offered = [p for p in BY_NAME if p in ALWAYS or accepts(profile, p)]
        if key in FILE_KEYS:
            why = f"'{key}' belongs to image edits; send it to /v1/images/edits, or remove it."
        elif key in _DALLE_PARAMS:
            why = f"'{key}' is a dall-e-3 parameter that GPT image models do not take; remove it."
        else:
            close = difflib.get_close_matches(key, offered, n=1, cutoff=0.75)
            why = f"Did you mean '{close[0]}'? " if close else ""
            why += f"{_route_label(route)} accepts: {', '.join(offered)}."
        raise UnknownParameter(f"Unknown parameter: '{_show(key)}'. {why}", param=key)


def _check_prompt(reader: _Reader, profile: ParamProfile) -> str:
    prompt = reader.body.get("prompt")
    if prompt is None:
        raise InvalidRequest(
            "prompt is required: describe the image you want.", param="prompt", code="missing_required_parameter"
        )
    if not isinstance(prompt, str):
        raise InvalidRequest(f"prompt must be a string, not {_type_name(prompt)}.", param="prompt", code="invalid_type")
    if not prompt.strip():
        raise InvalidRequest("prompt is empty: describe the image you want.", param="prompt")
    if len(prompt) > profile.max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(prompt):,} characters; the maximum is {profile.max_prompt_chars} characters. Shorten it.",
            param="prompt",
            code="string_above_max_length",
        )
    return prompt


def _out_of_range(rule: ParamRule, value: int, low: int, high: int, label: str, hints: RouteHints) -> InvalidRequest:
    key = rule.name
    if key == "n" and high == 1:
        advice = hints.advice("n")
        more = f"; {advice}" if value > 1 and not advice.startswith("remove") else ""
        return InvalidRequest(
            f"{label} makes one image per call, so n must be 1 (got {_show(value)}){more}.", param=key
        )
    where = f" for {label}" if rule.range_names_route else ""
    return InvalidRequest(f"{key} must be between {low} and {high}{where}; got {_show(value)}.", param=key)


def _read(reader: _Reader, rule: ParamRule, route: RouteSpec, profile: ParamProfile, hints: RouteHints) -> Any:
    """One parameter's value as the table types and bounds it, or ``None`` when absent."""
    key = rule.name
    if rule.kind == "choice":
        assert rule.values is not None
        return _choice(reader, key, rule.values(profile))
    if rule.kind == "integer":
        number = reader.integer(key)
        if number is not None and rule.bounds is not None:
            low, high = rule.bounds(profile)
            if not low <= number <= high:
                raise _out_of_range(rule, number, low, high, _route_label(route), hints)
        return number
    if rule.kind == "boolean":
        flag = reader.boolean(key)
        if flag and not rule.accepted(profile):
            raise _unsupported(key, route, hints)
        return flag
    text = reader.string(key)
    if rule.kind == "size" and text is not None:
        if profile.size == "official":
            check_official_size(text)
        elif profile.size == "table":
            check_table_size(text, profile.size_table, _route_label(route))
    return text


# -- rules that tie parameters together: explicit, in the order they are checked ------------


def _transparent_needs_alpha(values: Mapping[str, Any]) -> None:
    output_format = values["output_format"]
    if values["background"] == "transparent" and (output_format or "png") not in ("png", "webp"):
        raise InvalidRequest(
            f"background 'transparent' needs output_format png or webp, not {output_format}; "
            "change output_format or use background 'opaque'.",
            param="background",
        )


def _compression_needs_lossy(values: Mapping[str, Any]) -> None:
    compression = values["output_compression"]
    if compression is not None and (values["output_format"] or "png") == "png" and compression != 100:
        raise InvalidRequest(
            "output_compression applies to jpeg and webp only (png is lossless, so only 100 is accepted); "
            "set output_format to jpeg or webp, or remove output_compression.",
            param="output_compression",
        )


CROSS_RULES: tuple[Callable[[Mapping[str, Any]], None], ...] = (_transparent_needs_alpha, _compression_needs_lossy)
_ENDPOINT_NOUN = {"generations": "generation", "edits": "edit"}


def _validate_common(
    reader: _Reader, route: RouteSpec, profile: ParamProfile, hints: RouteHints, endpoint: str
) -> dict[str, Any]:
    _check_keys(reader, route, profile, hints, endpoint)
    values: dict[str, Any] = {"prompt": _check_prompt(reader, profile)}
    given = reader.body
    for rule in PARAMS:
        if rule.name in values:
            continue
        if rule.name not in given:  # absent (or null): nothing to read; most bodies carry few keys
            values[rule.name] = None
            continue
        value = values[rule.name] = _read(reader, rule, route, profile, hints)
        if value is not None and rule.endpoint is not None and rule.endpoint != endpoint:
            raise InvalidRequest(
                f"{rule.name} applies to image {rule.endpoint} only; remove it from a "
                f"{_ENDPOINT_NOUN[endpoint]} request.",
                param=rule.name,
            )
    for cross_rule in CROSS_RULES:
        cross_rule(values)
    # Forward what the caller sent, in the caller's order, as native types.
    upstream = {key: values[key] for key in reader.body if key in UPSTREAM and values.get(key) is not None}
    request = {name: default if values[name] is None else values[name] for name, default in ON_REQUEST}
    request["upstream_params"] = upstream
    return request


def _require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest(
            f"The request body must be a JSON object, not {_type_name(body)}; send "
            '{"model": "...", "prompt": "..."}.',
            code="invalid_type",
        )
    return body


def validate_generation(
    body: Mapping[str, Any], route: RouteSpec, profile: ParamProfile, hints: RouteHints
) -> ImageRequest:
    """Validate a ``POST /v1/images/generations`` JSON body for ``route``.

    ``body["model"]`` has already been resolved to ``route`` by the caller; the request
    carries ``route.model``. Raises an :class:`~imagerelay.errors.ApiError` subclass with
    ``param`` set on the first problem found.
    """
    reader = _Reader(_require_object(body), from_multipart=False)
    values = _validate_common(reader, route, profile, hints, "generations")
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
    """Validate a ``POST /v1/images/edits`` call for ``route``.

    ``fields`` are the non-file parameters: strings when ``from_multipart`` (``"2"`` for n,
    ``"true"`` for stream), native JSON types otherwise (where ``"2"`` for n is an error).
    ``images``/``mask`` were sniffed by the caller (type and dimensions come from the
    bytes); here we apply the route's count and size limits and the mask rules.
    Image sizes must be strictly below ``profile.max_image_bytes`` ("each < 50 MB").
    """
    fields = _require_object(fields)
    if not images:
        raise InvalidRequest(
            "Attach at least one image to edit: -F image=@file.png (or -F 'image[]=@a.png' -F 'image[]=@b.png' "
            "for several).",
            param="image",
            code="missing_required_parameter",
        )
    if len(images) > profile.max_input_images:
        raise InvalidRequest(
            f"{len(images)} images were sent; {_route_label(route)} takes at most {profile.max_input_images}. "
            "Send fewer images.",
            param="image",
        )
    for img in (*images, *((mask,) if mask is not None else ())):
        if len(img.data) >= profile.max_image_bytes:
            raise PayloadTooLarge(
                f"{img.part} is {len(img.data):,} bytes; each image must be smaller than "
                f"{profile.max_image_bytes:,} bytes. Send a smaller image.",
                param=img.part,
            )
    for img in images:
        if img.mime not in ("image/png", "image/jpeg", "image/webp"):
            raise InvalidRequest(
                f"{img.part} is not a PNG, JPEG or WebP image; upload one of those formats.", param=img.part
            )
    if mask is not None:
        first = images[0]
        if mask.mime != "image/png":
            raise InvalidRequest(
                f"mask must be a PNG with an alpha channel, not {mask.mime}; save it as an RGBA PNG.", param="mask"
            )
        if not mask.has_alpha:
            raise InvalidRequest(
                "mask has no alpha channel: transparent pixels mark where to edit. Save it as an RGBA PNG.",
                param="mask",
            )
        if (mask.width, mask.height) != (first.width, first.height):
            raise InvalidRequest(
                f"mask is {mask.width}x{mask.height} but the first image ({first.part}) is "
                f"{first.width}x{first.height}; they must have the same dimensions. Resize the mask.",
                param="mask",
            )
    reader = _Reader(fields, from_multipart=from_multipart)
    values = _validate_common(reader, route, profile, hints, "edits")
    return ImageRequest(endpoint="edits", model=route.model, images=tuple(images), mask=mask, **values)
