"""Table-driven tests of the per-route validation (imagerelay.domain.validation).

The route matrix is built here, mirroring SPEC §1, instead of being loaded from the
shipped catalog: legacy (no size, no quality, n up to 4), vip (legacy + the 30-size
table) and official (every official parameter), plus the two official groups.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from PIL import Image

from imagerelay.catalog.loader import load_catalog
from imagerelay.catalog.model import Billing, ParamProfile, RouteSpec
from imagerelay.domain.imagesniff import sniff_image
from imagerelay.domain.types import ImageRequest, InputImage
from imagerelay.domain.validation import RouteHints, build_hints, validate_edit, validate_generation
from imagerelay.errors import ApiError, InvalidRequest, PayloadTooLarge, UnknownParameter
from tests.unit.test_sizes import VIP_TABLE

S, E = "Sora2Official", "GPTImage2 Enterprise"
LEGACY = ("default", "gpt-image-2")
VIP = ("default", "gpt-image-2-vip")
MIXED = (S, "gpt-image-2")
PURE = (E, "gpt-image-2")
ALL = [LEGACY, VIP, MIXED, PURE]
OFFICIAL = [MIXED, PURE]
DEFAULT_GROUP = [LEGACY, VIP]

PROFILES: dict[str, ParamProfile] = {
    "legacy": ParamProfile(size="reject", default_size="1024x1024", n_max=4),
    "vip": ParamProfile(size="table", size_table=VIP_TABLE, default_size="2048x2048", n_max=4),
    "official": ParamProfile(
        size="official",
        default_size="auto",
        quality=("low", "medium", "high", "auto"),
        n_max=10,
        background=("transparent", "opaque", "auto"),
        output_formats=("png", "jpeg", "webp"),
        output_compression=True,
        moderation=("low", "auto"),
        streaming=True,
        partial_images_max=3,
    ),
}


def route_spec(group: str, model: str, params: str) -> RouteSpec:
    billing = Billing(mode="per_call", price_per_call=Decimal("0.03")) if group == "default" else Billing(mode="usage")
    return RouteSpec(group=group, model=model, name=f"{group}-{model}", params=params, billing=billing, pool=params)


ROUTES = [
    route_spec(*LEGACY, "legacy"),
    route_spec(*VIP, "vip"),
    route_spec(*MIXED, "official"),
    route_spec(*PURE, "official"),
]


@dataclass(frozen=True)
class Matrix:
    """The route matrix and its hints, with shortcuts to validate against one route."""

    routes: Mapping[tuple[str, str], RouteSpec]
    profiles: Mapping[str, ParamProfile]
    hints: Mapping[tuple[str, str], RouteHints]

    def profile(self, key: tuple[str, str]) -> ParamProfile:
        return self.profiles[self.routes[key].params]

    def gen(self, key: tuple[str, str], body: Any = None, /, **fields: Any) -> ImageRequest:
        if body is None:
            body = {"prompt": "a cat", **fields}
        return validate_generation(body, self.routes[key], self.profile(key), self.hints[key])

    def edit(
        self,
        key: tuple[str, str],
        images: Sequence[InputImage] | None = None,
        mask: InputImage | None = None,
        *,
        multipart: bool = True,
        **fields: Any,
    ) -> ImageRequest:
        images = [png()] if images is None else images
        return validate_edit(
            {"prompt": "make it red", **fields},
            images,
            mask,
            self.routes[key],
            self.profile(key),
            self.hints[key],
            from_multipart=multipart,
        )


@pytest.fixture(scope="module")
def m() -> Matrix:
    return Matrix({(r.group, r.model): r for r in ROUTES}, PROFILES, build_hints(ROUTES, PROFILES))


def matrix_with(**profile_changes: Any) -> Matrix:
    """The same matrix with the official profile changed (limits, input_fidelity...)."""
    profiles = {**PROFILES, "official": PROFILES["official"].model_copy(update=profile_changes)}
    legacy = PROFILES["legacy"].model_copy(update={k: v for k, v in profile_changes.items() if k != "input_fidelity"})
    profiles["legacy"] = legacy
    return Matrix({(r.group, r.model): r for r in ROUTES}, profiles, build_hints(ROUTES, profiles))


def image_bytes(fmt: str = "PNG", w: int = 64, h: int = 64, mode: str = "RGB", **save: Any) -> bytes:
    buf = io.BytesIO()
    color = {"RGBA": (10, 20, 30, 0), "LA": (10, 0), "P": 0, "L": 0}.get(mode, (10, 20, 30))
    Image.new(mode, (w, h), color).save(buf, fmt, **save)  # type: ignore[arg-type]
    return buf.getvalue()


def png(w: int = 64, h: int = 64, mode: str = "RGB", part: str = "image", **save: Any) -> InputImage:
    return sniff_image(image_bytes("PNG", w, h, mode, **save), part, None)


def rejects(exc_type: type[ApiError], param: str | None, fn: Any, *args: Any, **kw: Any) -> ApiError:
    with pytest.raises(exc_type) as info:
        fn(*args, **kw)
    error = info.value
    assert error.param == param, error
    assert 400 <= error.status < 500
    assert error.message and error.message[-1] in ".?", error.message  # full sentences
    return error


def as_multipart(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


# -- every route accepts the basics -----------------------------------------------------------------


@pytest.mark.parametrize("key", ALL)
def test_minimal_generation(m: Matrix, key: tuple[str, str]) -> None:
    req = m.gen(key)
    assert (req.endpoint, req.model, req.prompt, req.n, req.size, req.stream, req.response_format) == (
        "generations",
        key[1],
        "a cat",
        1,
        None,
        False,
        "b64_json",
    )
    assert req.upstream_params == {} and req.images == () and req.mask is None
    assert req.effective_output_format == "png"


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("multipart", [True, False])
def test_minimal_edit(m: Matrix, key: tuple[str, str], multipart: bool) -> None:
    image = png()
    req = m.edit(key, [image], multipart=multipart)
    assert (req.endpoint, req.model, req.prompt, req.images, req.upstream_params) == (
        "edits",
        key[1],
        "make it red",
        (image,),
        {},
    )


@pytest.mark.parametrize("key", ALL)
def test_model_in_the_body_is_the_callers_business(m: Matrix, key: tuple[str, str]) -> None:
    req = m.gen(key, model="whatever-the-caller-resolved")
    assert req.model == key[1] and "model" not in req.upstream_params


# -- parameter x route matrix ------------------------------------------------------------------------

OK = "ok"
# (param, value, extra body, {profile: OK or the advice the rejection must contain})
PARAM_MATRIX: list[tuple[str, Any, dict[str, Any], dict[str, str]]] = [
    (
        "size",
        "1024x1024",
        {},
        {
            "legacy": f"use model gpt-image-2-vip for explicit sizes, or group {S} or {E}",
            "vip": "nearest allowed size is 1280x1280 (1:1, 1K)",
            "official": OK,
        },
    ),
    ("size", "2048x2048", {}, {"legacy": "use model gpt-image-2-vip", "vip": OK, "official": OK}),
    (
        "size",
        "auto",
        {},
        {"legacy": "use model gpt-image-2-vip", "vip": "2048x2048, 2048x1152 or 1152x2048", "official": OK},
    ),
    (
        "quality",
        "high",
        {},
        {
            "legacy": f"use group {S} or {E} for quality control.",
            "vip": f"use group {S} or {E} for quality control, with model gpt-image-2.",
            "official": OK,
        },
    ),
    ("quality", "auto", {}, {"legacy": "for quality control", "vip": "for quality control", "official": OK}),
    (
        "background",
        "opaque",
        {},
        {
            "legacy": f"use group {S} or {E} for background control.",
            "vip": "for background control, with model gpt-image-2",
            "official": OK,
        },
    ),
    (
        "output_format",
        "jpeg",
        {},
        {"legacy": f"use group {S} or {E} for jpeg or webp output.", "vip": "with model gpt-image-2", "official": OK},
    ),
    (
        "output_format",
        "png",
        {},
        {"legacy": "for jpeg or webp output", "vip": "for jpeg or webp output", "official": OK},
    ),
    (
        "output_compression",
        100,
        {},
        {"legacy": f"use group {S} or {E} for output compression.", "vip": "for output compression", "official": OK},
    ),
    (
        "moderation",
        "low",
        {},
        {"legacy": f"use group {S} or {E} for moderation control.", "vip": "for moderation control", "official": OK},
    ),
    (
        "stream",
        True,
        {},
        {
            "legacy": f"use group {S} or {E} for streaming.",
            "vip": f"use group {S} or {E} for streaming, with model gpt-image-2.",
            "official": OK,
        },
    ),
    ("stream", False, {}, {"legacy": OK, "vip": OK, "official": OK}),
    ("partial_images", 1, {"stream": True}, {"legacy": "for streaming", "vip": "for streaming", "official": OK}),
    (
        "partial_images",
        0,
        {},
        {
            "legacy": f"use group {S} or {E} for streaming partial images.",
            "vip": "for streaming partial images",
            "official": OK,
        },
    ),
    (
        "input_fidelity",
        "high",
        {},
        {
            "legacy": "remove it from the request",
            "vip": "remove it from the request",
            "official": "remove it from the request",
        },
    ),
    ("input_fidelity", "low", {}, {"legacy": "remove it", "vip": "remove it", "official": "remove it"}),
    ("n", 1, {}, {"legacy": OK, "vip": OK, "official": OK}),
    ("n", 4, {}, {"legacy": OK, "vip": OK, "official": OK}),
    ("n", 5, {}, {"legacy": "n must be between 1 and 4", "vip": "n must be between 1 and 4", "official": OK}),
    ("n", 10, {}, {"legacy": "between 1 and 4", "vip": "between 1 and 4", "official": OK}),
    ("response_format", "url", {}, {"legacy": OK, "vip": OK, "official": OK}),
    ("response_format", "b64_json", {}, {"legacy": OK, "vip": OK, "official": OK}),
    ("user", "user-1234", {}, {"legacy": OK, "vip": OK, "official": OK}),
    ("safety_identifier", "hash-abc", {}, {"legacy": OK, "vip": OK, "official": OK}),
]
MATRIX_CASES = [
    pytest.param(key, param, value, extra, expected[profile_name], id=f"{key[0]}/{key[1]}-{param}={value}")
    for param, value, extra, expected in PARAM_MATRIX
    for key, profile_name in ((LEGACY, "legacy"), (VIP, "vip"), (MIXED, "official"), (PURE, "official"))
]


def _check_matrix_case(call: Any, key: tuple[str, str], param: str, value: Any, expected: str) -> None:
    if expected == OK:
        req = call()
        if param in ("response_format", "stream"):
            assert getattr(req, param) == value and param not in req.upstream_params
        else:
            assert req.upstream_params[param] == value and type(req.upstream_params[param]) is type(value)
        return
    with pytest.raises(InvalidRequest) as info:
        call()
    error = info.value
    assert error.param == param and error.status == 400
    assert expected in error.message, error.message
    if param in ("size", "n") or error.code != "unsupported_parameter":
        return
    assert error.message.startswith(f"{param} is not supported by model {key[1]} in group {key[0]}")
    assert not isinstance(error, UnknownParameter)


@pytest.mark.parametrize(("key", "param", "value", "extra", "expected"), MATRIX_CASES)
def test_param_matrix_generation(
    m: Matrix, key: tuple[str, str], param: str, value: Any, extra: dict[str, Any], expected: str
) -> None:
    _check_matrix_case(lambda: m.gen(key, **extra, **{param: value}), key, param, value, expected)


@pytest.mark.parametrize(("key", "param", "value", "extra", "expected"), MATRIX_CASES)
def test_param_matrix_multipart_edit(
    m: Matrix, key: tuple[str, str], param: str, value: Any, extra: dict[str, Any], expected: str
) -> None:
    fields = {k: as_multipart(v) for k, v in {**extra, param: value}.items()}
    _check_matrix_case(lambda: m.edit(key, **fields), key, param, value, expected)


@pytest.mark.parametrize(("key", "param", "value", "extra", "expected"), MATRIX_CASES)
def test_param_matrix_json_edit(
    m: Matrix, key: tuple[str, str], param: str, value: Any, extra: dict[str, Any], expected: str
) -> None:
    _check_matrix_case(lambda: m.edit(key, multipart=False, **extra, **{param: value}), key, param, value, expected)


# -- the exact advice messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "body", "message"),
    [
        (
            VIP,
            {"quality": "high"},
            f"quality is not supported by model gpt-image-2-vip in group default; use group {S} or {E} for quality "
            "control, with model gpt-image-2.",
        ),
        (
            LEGACY,
            {"quality": "high"},
            f"quality is not supported by model gpt-image-2 in group default; use group {S} or {E} for quality control.",
        ),
        (
            LEGACY,
            {"size": "1024x1024"},
            "size is not supported by model gpt-image-2 in group default; use model gpt-image-2-vip for explicit sizes, "
            f"or group {S} or {E}.",
        ),
        (
            LEGACY,
            {"size": "auto"},
            "size is not supported by model gpt-image-2 in group default; use model gpt-image-2-vip for explicit sizes, "
            f"or group {S} or {E}.",
        ),
        (
            MIXED,
            {"input_fidelity": "high"},
            f"input_fidelity is not supported by model gpt-image-2 in group {S} (gpt-image-2 always processes input "
            "images at high fidelity); remove it from the request.",
        ),
        (
            VIP,
            {"size": "3840x2000"},
            "size 3840x2000 is not supported by model gpt-image-2-vip in group default; the nearest allowed size is "
            "3840x2160 (16:9, 4K). The route takes 30 sizes: 1K/2K/4K for ratios 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, "
            "9:16, 16:9, 21:9.",
        ),
        (
            PURE,
            {"size": "1792x936"},
            "Invalid size '1792x936'. Width and height must both be divisible by 16; the nearest valid size is 1792x944.",
        ),
    ],
)
def test_exact_messages(m: Matrix, key: tuple[str, str], body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        m.gen(key, **body)
    assert info.value.message == message


def test_the_spec_example_is_a_prefix_of_the_vip_quality_message(m: Matrix) -> None:
    error = rejects(InvalidRequest, "quality", m.gen, VIP, size="2048x2048", quality="high")
    assert error.message.startswith(
        f"quality is not supported by model gpt-image-2-vip in group default; use group {S} or {E} for quality control"
    )
    assert error.code == "unsupported_parameter"


def test_one_image_routes_point_at_routes_with_n() -> None:
    single = {
        **PROFILES,
        "legacy": PROFILES["legacy"].model_copy(update={"n_max": 1}),
        "vip": PROFILES["vip"].model_copy(update={"n_max": 1}),
    }
    mx = Matrix({(r.group, r.model): r for r in ROUTES}, single, build_hints(ROUTES, single))
    error = rejects(InvalidRequest, "n", mx.gen, LEGACY, n=2)
    assert error.message == (
        f"model gpt-image-2 in group default makes one image per call, so n must be 1 (got 2); "
        f"use group {S} or {E} for several images per call."
    )
    assert "use group" not in rejects(InvalidRequest, "n", mx.gen, LEGACY, n=0).message
    assert mx.gen(LEGACY, n=1).upstream_params == {"n": 1}


# -- build_hints --------------------------------------------------------------------------------------------


def test_hints_cover_every_route(m: Matrix) -> None:
    assert set(m.hints) == set(ALL)
    for key, hints in m.hints.items():
        assert (hints.group, hints.model) == key


def test_hints_prefer_the_same_model_in_other_groups(m: Matrix) -> None:
    legacy = m.hints[LEGACY]
    assert legacy.same_group_models["size"] == ("gpt-image-2-vip",)
    assert legacy.other_groups["size"] == (S, E)
    assert legacy.other_group_models["size"] == ()
    assert legacy.same_group_models["quality"] == ()
    assert legacy.other_groups["quality"] == (S, E)


def test_hints_fall_back_to_other_models_and_name_them(m: Matrix) -> None:
    vip = m.hints[VIP]
    assert vip.same_group_models["size"] == ()  # legacy does not take size
    assert vip.other_groups["quality"] == (S, E)
    assert vip.other_group_models["quality"] == ("gpt-image-2",)


def test_hints_of_official_routes(m: Matrix) -> None:
    mixed = m.hints[MIXED]
    assert mixed.other_groups["quality"] == (E,)  # the other official group
    assert mixed.other_groups["input_fidelity"] == () and mixed.same_group_models["input_fidelity"] == ()
    assert mixed.advice("input_fidelity") == "remove input_fidelity from the request"
    assert mixed.other_groups["n"] == ("default", E)


def test_hints_follow_the_catalog_data() -> None:
    """A new group is advice as soon as it is in the catalog: nothing is hard-coded."""
    profiles = {**PROFILES, "hq": ParamProfile(size="reject", quality=("high",))}
    routes = [*ROUTES, route_spec("Studio", "gpt-image-2", "hq")]
    hints = build_hints(routes, profiles)
    assert hints[LEGACY].other_groups["quality"] == (S, E, "Studio")
    # Same model name first: default/gpt-image-2 rejects size, so only the official groups are named.
    assert hints[("Studio", "gpt-image-2")].advice("size") == f"use group {S} or {E} for explicit sizes"
    lonely = build_hints([route_spec("solo", "m", "legacy")], PROFILES)[("solo", "m")]
    assert lonely.advice("quality") == "remove quality from the request"


def test_hints_are_immutable(m: Matrix) -> None:
    hints = m.hints[LEGACY]
    with pytest.raises(FrozenInstanceError):
        hints.group = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        hints.other_groups["quality"] = ()  # type: ignore[index]


def test_build_hints_is_pure() -> None:
    first = build_hints(ROUTES, PROFILES)
    second = build_hints(iter(ROUTES), PROFILES)  # any iterable
    assert first == second


# -- values of the official parameters ------------------------------------------------------------------------


@pytest.mark.parametrize("key", OFFICIAL)
@pytest.mark.parametrize(
    ("param", "value"),
    [
        *[("quality", v) for v in ("low", "medium", "high", "auto")],
        *[("background", v) for v in ("transparent", "opaque", "auto")],
        *[("output_format", v) for v in ("png", "jpeg", "webp")],
        *[("moderation", v) for v in ("low", "auto")],
    ],
)
def test_official_values_accepted(m: Matrix, key: tuple[str, str], param: str, value: str) -> None:
    req = m.gen(key, **{param: value})
    assert getattr(req, param) == value and req.upstream_params == {param: value}


@pytest.mark.parametrize(
    ("param", "value", "text"),
    [
        (
            "quality",
            "ultra",
            "Invalid value for quality: 'ultra'. Supported values are: 'low', 'medium', 'high' and 'auto'.",
        ),
        ("quality", "hd", "'hd' is a dall-e value; for GPT image models use 'high'."),
        ("quality", "standard", "use 'medium'"),
        ("quality", "HIGH", "Values are lowercase: use 'high'."),
        ("quality", "", "Supported values are"),
        ("background", "clear", "Supported values are: 'transparent', 'opaque' and 'auto'."),
        ("background", "Transparent", "use 'transparent'"),
        ("output_format", "gif", "Supported values are: 'png', 'jpeg' and 'webp'."),
        ("output_format", "jpg", "Supported values are: 'png', 'jpeg' and 'webp'."),
        ("moderation", "none", "Supported values are: 'low' and 'auto'."),
        ("moderation", "high", "Supported values are: 'low' and 'auto'."),
        ("response_format", "png", "Supported values are: 'b64_json' and 'url'."),
        ("response_format", "URL", "use 'url'"),
        ("response_format", "b64", "Supported values are"),
    ],
)
def test_official_values_rejected(m: Matrix, param: str, value: str, text: str) -> None:
    error = rejects(InvalidRequest, param, m.gen, MIXED, **{param: value})
    assert text in error.message and error.code == "invalid_value"


@pytest.mark.parametrize(
    ("background", "output_format", "ok"),
    [
        ("transparent", None, True),
        ("transparent", "png", True),
        ("transparent", "webp", True),
        ("transparent", "jpeg", False),
        ("opaque", "jpeg", True),
        ("opaque", "png", True),
        ("auto", "jpeg", True),
        ("auto", None, True),
    ],
)
def test_transparent_background_needs_png_or_webp(
    m: Matrix, background: str, output_format: str | None, ok: bool
) -> None:
    body = {"background": background, "output_format": output_format}
    if ok:
        assert m.gen(MIXED, **body).background == background
    else:
        error = rejects(InvalidRequest, "background", m.gen, MIXED, **body)
        assert "needs output_format png or webp" in error.message


@pytest.mark.parametrize(
    ("output_format", "compression", "param_error"),
    [
        (None, 100, None),
        ("png", 100, None),
        (None, 0, "jpeg or webp"),
        (None, 50, "jpeg or webp"),
        (None, 99, "jpeg or webp"),
        ("png", 0, "jpeg or webp"),
        ("png", 80, "jpeg or webp"),
        ("jpeg", 0, None),
        ("jpeg", 50, None),
        ("jpeg", 100, None),
        ("webp", 0, None),
        ("webp", 100, None),
        ("jpeg", 101, "between 0 and 100"),
        ("webp", -1, "between 0 and 100"),
        ("png", 101, "between 0 and 100"),
        (None, -5, "between 0 and 100"),
    ],
)
def test_output_compression(m: Matrix, output_format: str | None, compression: int, param_error: str | None) -> None:
    body = {"output_format": output_format, "output_compression": compression}
    if param_error is None:
        req = m.gen(MIXED, **body)
        assert req.output_compression == compression and req.upstream_params["output_compression"] == compression
    else:
        assert param_error in rejects(InvalidRequest, "output_compression", m.gen, MIXED, **body).message


@pytest.mark.parametrize(
    ("stream", "partial", "ok"),
    [
        (True, 0, True),
        (True, 1, True),
        (True, 2, True),
        (True, 3, True),
        (True, 4, False),
        (True, -1, False),
        (None, 2, True),
        (False, 3, True),
        (False, 4, False),
    ],
)
def test_partial_images_bounds(m: Matrix, stream: bool | None, partial: int, ok: bool) -> None:
    body = {"stream": stream, "partial_images": partial}
    if ok:
        req = m.gen(MIXED, **body)
        assert req.partial_images == partial and req.stream is bool(stream)
        assert req.upstream_params == {"partial_images": partial}
    else:
        assert "between 0 and 3" in rejects(InvalidRequest, "partial_images", m.gen, MIXED, **body).message


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("n", [0, -1, 11, 10**20])
def test_n_out_of_range(m: Matrix, key: tuple[str, str], n: int) -> None:
    error = rejects(InvalidRequest, "n", m.gen, key, n=n)
    assert f"between 1 and {m.profile(key).n_max}" in error.message and len(error.message) < 200


@pytest.mark.parametrize("key", ALL)
def test_n_at_the_limits(m: Matrix, key: tuple[str, str]) -> None:
    n_max = m.profile(key).n_max
    assert m.gen(key, n=1).n == 1
    assert m.gen(key, n=n_max).n == n_max


# -- prompt --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        (None, "missing_required_parameter"),
        ("", "invalid_value"),
        ("   ", "invalid_value"),
        ("\n\t", "invalid_value"),
        (3, "invalid_type"),
        (["a"], "invalid_type"),
        ({"text": "a"}, "invalid_type"),
        (True, "invalid_type"),
    ],
)
def test_prompt_rejections(m: Matrix, key: tuple[str, str], prompt: Any, code: str) -> None:
    assert rejects(InvalidRequest, "prompt", m.gen, key, prompt=prompt).code == code


def test_prompt_is_required_when_absent(m: Matrix) -> None:
    error = rejects(InvalidRequest, "prompt", m.gen, MIXED, {"model": "gpt-image-2"})
    assert error.code == "missing_required_parameter" and "describe the image" in error.message


@pytest.mark.parametrize("key", ALL)
def test_prompt_length_limit(m: Matrix, key: tuple[str, str]) -> None:
    assert len(m.gen(key, prompt="x" * 32000).prompt) == 32000
    assert len(m.gen(key, prompt="🎨" * 32000).prompt) == 32000  # characters, not bytes
    error = rejects(InvalidRequest, "prompt", m.gen, key, prompt="é" * 32001)
    assert "32,001 characters" in error.message and "maximum is 32000" in error.message
    assert error.code == "string_above_max_length"


def test_prompt_limit_comes_from_the_profile() -> None:
    mx = matrix_with(max_prompt_chars=10)
    assert mx.gen(MIXED, prompt="0123456789").prompt == "0123456789"
    error = rejects(InvalidRequest, "prompt", mx.gen, MIXED, prompt="0123456789A")
    assert "11 characters" in error.message and "maximum is 10" in error.message


# -- types --------------------------------------------------------------------------------------------------

BAD_INTS = [True, False, 1.0, 2.5, "2", "two", [], [1], {}, {"n": 1}]
BAD_STRINGS = [1, 1.5, True, [], ["a"], {}, {"a": "b"}]


@pytest.mark.parametrize("param", ["n", "output_compression", "partial_images"])
@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
def test_json_integers_must_be_integers(m: Matrix, param: str, value: Any) -> None:
    body = {param: value, "output_format": "jpeg"}
    error = rejects(InvalidRequest, param, m.gen, MIXED, **body)
    assert error.code == "invalid_type" and "must be an integer" in error.message


def test_json_digit_string_gets_the_fix(m: Matrix) -> None:
    error = rejects(InvalidRequest, "n", m.gen, MIXED, n="2")
    assert error.message == "n must be an integer, not a string; send n: 2 without quotes."


@pytest.mark.parametrize(
    "param",
    ["size", "quality", "background", "output_format", "moderation", "response_format", "user", "safety_identifier"],
)
@pytest.mark.parametrize("value", BAD_STRINGS, ids=repr)
def test_json_strings_must_be_strings(m: Matrix, param: str, value: Any) -> None:
    error = rejects(InvalidRequest, param, m.gen, MIXED, **{param: value})
    assert error.code == "invalid_type" and error.message.startswith(f"{param} must be a string")


@pytest.mark.parametrize("value", ["true", "false", 1, 0, 1.0, "yes", [], {}], ids=repr)
def test_json_stream_must_be_a_boolean(m: Matrix, value: Any) -> None:
    error = rejects(InvalidRequest, "stream", m.gen, MIXED, stream=value)
    assert error.code == "invalid_type" and "must be true or false" in error.message


def test_json_stream_string_gets_the_fix(m: Matrix) -> None:
    assert "without quotes" in rejects(InvalidRequest, "stream", m.gen, MIXED, stream="true").message


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("2", 2), (" 3 ", 3), ("+4", 4), ("10", 10), ("0010", 10)])
def test_multipart_integers(m: Matrix, text: str, value: int) -> None:
    req = m.edit(MIXED, n=text)
    assert req.n == value and req.upstream_params == {"n": value}


@pytest.mark.parametrize("text", ["two", "1.5", "", " ", "0x10", "²", "١", "--5", "1e3", "12345678901", "2 2"])
def test_multipart_integers_bad_text(m: Matrix, text: str) -> None:
    assert rejects(InvalidRequest, "n", m.edit, MIXED, n=text).code == "invalid_type"


@pytest.mark.parametrize("text", ["0", "-1", "11"])
def test_multipart_integers_out_of_range(m: Matrix, text: str) -> None:
    assert rejects(InvalidRequest, "n", m.edit, MIXED, n=text).code == "invalid_value"


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("True", True), ("TRUE", True), ("false", False), (" false ", False)]
)
def test_multipart_booleans(m: Matrix, text: str, value: bool) -> None:
    assert m.edit(MIXED, stream=text).stream is value


@pytest.mark.parametrize("text", ["yes", "1", "0", "", "on"])
def test_multipart_booleans_bad_text(m: Matrix, text: str) -> None:
    assert rejects(InvalidRequest, "stream", m.edit, MIXED, stream=text).code == "invalid_type"


def test_multipart_stream_false_is_fine_on_routes_without_streaming(m: Matrix) -> None:
    for key in DEFAULT_GROUP:
        assert m.edit(key, stream="false").stream is False


def test_json_edit_types_are_strict(m: Matrix) -> None:
    rejects(InvalidRequest, "n", m.edit, MIXED, multipart=False, n="2")
    rejects(InvalidRequest, "stream", m.edit, MIXED, multipart=False, stream="true")
    rejects(
        InvalidRequest,
        "output_compression",
        m.edit,
        MIXED,
        multipart=False,
        output_format="jpeg",
        output_compression="80",
    )
    assert m.edit(MIXED, multipart=False, n=2, stream=True).n == 2


def test_multipart_edit_upstream_params_are_native(m: Matrix) -> None:
    req = m.edit(
        MIXED,
        n="2",
        size="1024x1024",
        quality="low",
        background="opaque",
        output_format="webp",
        output_compression="80",
        moderation="low",
        stream="true",
        partial_images="1",
        user="u",
        safety_identifier="s",
        response_format="url",
    )
    assert req.upstream_params == {
        "n": 2,
        "size": "1024x1024",
        "quality": "low",
        "background": "opaque",
        "output_format": "webp",
        "output_compression": 80,
        "moderation": "low",
        "partial_images": 1,
        "user": "u",
        "safety_identifier": "s",
    }
    assert req.stream is True and req.response_format == "url"


# -- null and unknown parameters ----------------------------------------------------------------------------------

NULLABLE = [
    "n",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "stream",
    "partial_images",
    "response_format",
    "user",
    "safety_identifier",
    "input_fidelity",
    "model",
]


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("param", NULLABLE)
def test_null_means_not_given_on_every_route(m: Matrix, key: tuple[str, str], param: str) -> None:
    req = m.gen(key, **{param: None})
    assert req.upstream_params == {} and req.n == 1 and req.response_format == "b64_json"


@pytest.mark.parametrize("key", ALL)
def test_all_nulls_at_once(m: Matrix, key: tuple[str, str]) -> None:
    assert m.gen(key, **dict.fromkeys(NULLABLE)).upstream_params == {}
    assert m.edit(key, multipart=False, **dict.fromkeys(NULLABLE)).upstream_params == {}


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize(
    ("param", "text"),
    [
        ("colour", "accepts: prompt, model, n, response_format"),
        ("negative_prompt", "accepts:"),
        ("style", "'style' is a dall-e-3 parameter"),
        ("image", "send it to /v1/images/edits"),
        ("images", "send it to /v1/images/edits"),
        ("mask", "send it to /v1/images/edits"),
        ("Prompt", "Did you mean 'prompt'?"),
        ("response-format", "Did you mean 'response_format'?"),
        ("", "accepts:"),
    ],
)
def test_unknown_parameters(m: Matrix, key: tuple[str, str], param: str, text: str) -> None:
    error = rejects(UnknownParameter, param, m.gen, key, **{param: "x"})
    assert error.code == "unknown_parameter" and error.message.startswith(f"Unknown parameter: '{param}'.")
    assert text in error.message


def test_unknown_parameter_suggests_only_what_the_route_takes(m: Matrix) -> None:
    assert "Did you mean 'quality'?" in rejects(UnknownParameter, "qualty", m.gen, MIXED, qualty="high").message
    legacy = rejects(UnknownParameter, "qualty", m.gen, LEGACY, qualty="high").message
    assert "quality" not in legacy  # the legacy route does not take quality at all
    assert "accepts: prompt, model, n, response_format, user, safety_identifier." in legacy


def test_unknown_parameter_list_of_the_vip_route(m: Matrix) -> None:
    message = rejects(UnknownParameter, "colour", m.gen, VIP, colour="red").message
    assert message.endswith("accepts: prompt, model, n, response_format, user, safety_identifier, size.")


def test_unknown_parameter_even_when_null_is_ignored(m: Matrix) -> None:
    assert m.gen(MIXED, colour=None).upstream_params == {}


def test_file_keys_in_edit_fields_are_not_parameters(m: Matrix) -> None:
    fields = {"prompt": "p", "images": [{"image_url": "data:..."}], "mask": {"image_url": "data:..."}, "image": "x"}
    req = validate_edit(fields, [png()], None, m.routes[MIXED], m.profile(MIXED), m.hints[MIXED], from_multipart=False)
    assert req.upstream_params == {} and req.mask is None


# -- upstream params ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", OFFICIAL)
def test_official_body_passes_through_in_the_callers_order(m: Matrix, key: tuple[str, str]) -> None:
    body = {
        "moderation": "low",
        "size": "1536x1024",
        "quality": "high",
        "n": 3,
        "background": "opaque",
        "output_format": "jpeg",
        "output_compression": 70,
        "user": "u",
        "safety_identifier": "s",
    }
    req = m.gen(key, model="gpt-image-2", response_format="url", stream=True, partial_images=2, **body)
    assert req.upstream_params == {"partial_images": 2, **body}
    assert list(req.upstream_params) == ["partial_images", *body]
    assert (req.n, req.quality, req.effective_output_format, req.stream, req.response_format) == (
        3,
        "high",
        "jpeg",
        True,
        "url",
    )


@pytest.mark.parametrize("key", DEFAULT_GROUP)
def test_legacy_upstream_params(m: Matrix, key: tuple[str, str]) -> None:
    req = m.gen(key, n=2, user="u", safety_identifier="s", response_format="url")
    assert req.upstream_params == {"n": 2, "user": "u", "safety_identifier": "s"}


def test_validation_does_not_touch_its_input(m: Matrix) -> None:
    body = {"prompt": "a", "n": 2, "size": "1024x1024", "stream": True, "partial_images": 1, "user": None}
    before = copy.deepcopy(body)
    m.gen(MIXED, body)
    assert body == before
    m.gen(MIXED, MappingProxyType(body))  # a read-only mapping is fine


@pytest.mark.parametrize("body", [[], ["prompt"], "a cat", 3, 2.5, True, b"{}"], ids=repr)
def test_body_must_be_an_object(m: Matrix, body: Any) -> None:
    error = rejects(InvalidRequest, None, m.gen, MIXED, body)
    assert "must be a JSON object" in error.message


# -- official size rules through validation -------------------------------------------------------------------------


@pytest.mark.parametrize("key", OFFICIAL)
@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ("auto", True),
        ("1024x1024", True),
        ("3840x2160", True),
        ("3840x1280", True),
        ("1280x512", True),
        ("2880x2880", True),
        ("1792x936", False),
        ("3856x2144", False),
        ("3840x1264", False),
        ("1264x512", False),
        ("2896x2880", False),
        ("1024X1024", False),
        ("AUTO", False),
        (" 1024x1024", False),
    ],
)
def test_official_size_rules(m: Matrix, key: tuple[str, str], size: str, ok: bool) -> None:
    if ok:
        assert m.gen(key, size=size).upstream_params == {"size": size}
    else:
        message = rejects(InvalidRequest, "size", m.gen, key, size=size).message
        assert "nearest valid size is" in message or "did you mean" in message


@pytest.mark.parametrize("size", sorted({s for tiers in VIP_TABLE.values() for s in tiers.values()}))
def test_all_thirty_vip_sizes_through_validation(m: Matrix, size: str) -> None:
    assert m.gen(VIP, size=size).upstream_params == {"size": size}
    assert m.edit(VIP, size=size).size == size


# -- edits: images and mask -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("count", [1, 2, 16])
def test_edit_image_counts_accepted(m: Matrix, key: tuple[str, str], count: int) -> None:
    images = [png(part=f"image[{i}]") for i in range(count)]
    assert len(m.edit(key, images).images) == count


@pytest.mark.parametrize("key", ALL)
def test_edit_without_images(m: Matrix, key: tuple[str, str]) -> None:
    error = rejects(InvalidRequest, "image", m.edit, key, [])
    assert "-F image=@file.png" in error.message and error.code == "missing_required_parameter"


@pytest.mark.parametrize("key", ALL)
def test_edit_with_too_many_images(m: Matrix, key: tuple[str, str]) -> None:
    error = rejects(InvalidRequest, "image", m.edit, key, [png() for _ in range(17)])
    assert "17 images were sent" in error.message and "at most 16" in error.message


def test_image_count_limit_comes_from_the_profile() -> None:
    mx = matrix_with(max_input_images=4)
    assert len(mx.edit(MIXED, [png() for _ in range(4)]).images) == 4
    assert "at most 4" in rejects(InvalidRequest, "image", mx.edit, MIXED, [png() for _ in range(5)]).message


def fake(size: int, part: str, mime: str = "image/png") -> InputImage:
    return InputImage(data=b"x" * size, mime=mime, width=64, height=64, part=part, has_alpha=True)


@pytest.mark.parametrize(("size", "ok"), [(999, True), (1000, False), (5000, False)])
def test_image_size_limit_is_exclusive_and_from_the_profile(size: int, ok: bool) -> None:
    mx = matrix_with(max_image_bytes=1000)
    images = [png(), fake(size, "image[1]")]
    if ok:
        assert len(mx.edit(MIXED, images).images) == 2
    else:
        error = rejects(PayloadTooLarge, "image[1]", mx.edit, MIXED, images)
        assert error.status == 413 and "smaller than 1,000 bytes" in error.message


def test_mask_size_limit() -> None:
    mx = matrix_with(max_image_bytes=1000)
    rejects(PayloadTooLarge, "mask", mx.edit, MIXED, [png()], fake(1000, "mask"))


def test_default_limit_is_50_mb(m: Matrix) -> None:
    rejects(PayloadTooLarge, "image[3]", m.edit, MIXED, [png(), png(), png(), fake(50 * 1024 * 1024, "image[3]")])


def test_image_with_an_unsupported_mime_is_rejected(m: Matrix) -> None:
    rejects(InvalidRequest, "image[1]", m.edit, MIXED, [png(), fake(10, "image[1]", mime="image/gif")])


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_edit_formats_accepted(m: Matrix, key: tuple[str, str], fmt: str, mime: str) -> None:
    image = sniff_image(image_bytes(fmt, 80, 60), "image", None)
    assert m.edit(key, [image]).images[0].mime == mime


def test_mixed_formats_in_one_edit(m: Matrix) -> None:
    images = [sniff_image(image_bytes(fmt), f"image[{i}]", None) for i, fmt in enumerate(("PNG", "JPEG", "WEBP"))]
    assert [i.mime for i in m.edit(MIXED, images).images] == ["image/png", "image/jpeg", "image/webp"]


def upload_then_validate(m: Matrix, parts: list[tuple[str, bytes]]) -> ImageRequest:
    """What the HTTP layer does: sniff each part, then validate the call."""
    images = [sniff_image(data, part, None) for part, data in parts]
    return m.edit(MIXED, images)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"definitely not an image", "image[1] is not a PNG, JPEG or WebP image (detected: unknown)"),
        (image_bytes("GIF"), "image[1] is not a PNG, JPEG or WebP image (detected: gif)"),
        (image_bytes("BMP"), "(detected: bmp)"),
        (image_bytes("PNG", 300, 300)[:200], "image[1] could not be decoded as a PNG image (truncated or corrupt)"),
        (b"", "image[1] is empty"),
    ],
)
def test_bad_uploads_name_their_part(m: Matrix, data: bytes, text: str) -> None:
    error = rejects(
        InvalidRequest, "image[1]", upload_then_validate, m, [("image[0]", image_bytes()), ("image[1]", data)]
    )
    assert text in error.message


@pytest.mark.parametrize(
    ("mask", "ok", "text"),
    [
        (png(100, 80, "RGBA", part="mask"), True, ""),
        (png(100, 80, "LA", part="mask"), True, ""),
        (png(100, 80, "P", part="mask", transparency=0), True, ""),  # palette + tRNS
        (png(50, 50, "RGBA", part="mask"), False, "mask is 50x50 but the first image (image) is 100x80"),
        (png(80, 100, "RGBA", part="mask"), False, "mask is 80x100 but the first image (image) is 100x80"),
        (png(100, 80, "RGB", part="mask"), False, "no alpha channel"),
        (png(100, 80, "L", part="mask"), False, "no alpha channel"),
        (sniff_image(image_bytes("JPEG", 100, 80), "mask", None), False, "mask must be a PNG with an alpha channel"),
        (sniff_image(image_bytes("WEBP", 100, 80, "RGBA"), "mask", None), False, "not image/webp"),
    ],
)
def test_mask_rules(m: Matrix, mask: InputImage, ok: bool, text: str) -> None:
    images = [png(100, 80), png(50, 50, part="image[1]")]  # only the first image's size matters
    if ok:
        assert m.edit(MIXED, images, mask).mask is mask
    else:
        assert text in rejects(InvalidRequest, "mask", m.edit, MIXED, images, mask).message


@pytest.mark.parametrize("key", DEFAULT_GROUP)
def test_mask_on_legacy_routes(m: Matrix, key: tuple[str, str]) -> None:
    first = png(100, 80)
    assert m.edit(key, [first], png(100, 80, "RGBA", part="mask")).mask is not None
    rejects(InvalidRequest, "mask", m.edit, key, [first], png(64, 64, "RGBA", part="mask"))


def test_images_are_checked_before_fields(m: Matrix) -> None:
    # No image and no prompt: the missing image is the first thing to fix.
    rejects(
        InvalidRequest,
        "image",
        validate_edit,
        {},
        [],
        None,
        m.routes[MIXED],
        m.profile(MIXED),
        m.hints[MIXED],
        from_multipart=True,
    )


# -- input_fidelity on a route that takes it ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["high", "low"])
def test_input_fidelity_where_the_profile_allows_it(value: str) -> None:
    mx = matrix_with(input_fidelity=True)
    assert mx.edit(MIXED, input_fidelity=value).upstream_params == {"input_fidelity": value}
    error = rejects(InvalidRequest, "input_fidelity", mx.gen, MIXED, input_fidelity=value)
    assert "applies to image edits only" in error.message


def test_input_fidelity_values_where_allowed() -> None:
    mx = matrix_with(input_fidelity=True)
    assert (
        "Supported values are: 'high' and 'low'."
        in rejects(InvalidRequest, "input_fidelity", mx.edit, MIXED, input_fidelity="medium").message
    )
    assert mx.hints[LEGACY].other_groups["input_fidelity"] == (S, E)


# -- merged from test_route_validation.py: Table-driven tests of the per-route validation (pure
# functions, default catalog).

CATALOG = load_catalog()
HINTS = build_hints([r.spec for r in CATALOG.routes.values()], CATALOG.file.param_profiles)
# LEGACY, VIP, MIXED, PURE, ALL and OFFICIAL: the same routes as above.


def gen(route: tuple[str, str], **body: Any):  # type: ignore[no-untyped-def]
    r = CATALOG.route(*route)
    assert r is not None
    return validate_generation({"prompt": "a cat", **body}, r.spec, r.profile, HINTS[route])


def edit(
    route: tuple[str, str],
    images: list[InputImage],
    mask: InputImage | None = None,
    *,
    multipart: bool = True,
    **fields: Any,
):  # type: ignore[no-untyped-def]
    r = CATALOG.route(*route)
    assert r is not None
    return validate_edit(
        {"prompt": "make it red", **fields}, images, mask, r.spec, r.profile, HINTS[route], from_multipart=multipart
    )


def route_png(w: int = 64, h: int = 64, mode: str = "RGB", part: str = "image") -> InputImage:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 20, 30, 0) if mode == "RGBA" else (10, 20, 30)).save(buf, "PNG")
    return sniff_image(buf.getvalue(), part, "x.png")


def rejects_message(exc_type: type[ApiError], param: str, fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args, **kw)
    assert info.value.param == param, info.value
    assert 400 <= info.value.status < 500
    return info.value.message


# -- what every route accepts ----------------------------------------------------------------


@pytest.mark.parametrize("route", ALL)
def test_minimal_request(route: tuple[str, str]) -> None:
    req = gen(route)
    assert req.prompt == "a cat" and req.n == 1 and req.size is None and req.response_format == "b64_json"
    assert req.upstream_params == {}


@pytest.mark.parametrize("route", ALL)
@pytest.mark.parametrize("fmt", ["url", "b64_json"])
def test_response_format_everywhere_but_never_upstream(route: tuple[str, str], fmt: str) -> None:
    req = gen(route, response_format=fmt, user="u-1")
    assert req.response_format == fmt
    assert "response_format" not in req.upstream_params and req.upstream_params["user"] == "u-1"


@pytest.mark.parametrize("route", ALL)
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({"prompt": "x" * 32001}, "prompt"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"n": "1"}, "n"),
        ({"n": 1.0}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"user": 5}, "user"),
        ({"colour": "red"}, "colour"),
        ({"style": "vivid"}, "style"),
        ({"input_fidelity": "high"}, "input_fidelity"),
    ],
)
def test_common_rejections(route: tuple[str, str], body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        gen(route, **body)
    assert info.value.param == param


def test_null_means_not_given() -> None:
    req = gen(MIXED, size=None, quality=None, n=None)
    assert req.size is None and req.quality is None and req.n == 1


def test_prompt_at_the_limit() -> None:
    assert len(gen(MIXED, prompt="x" * 32000).prompt) == 32000
    message = rejects_message(InvalidRequest, "prompt", gen, MIXED, prompt="é" * 32001)
    assert "32000" in message and "32,001" in message


def test_unknown_parameter_has_its_code() -> None:
    with pytest.raises(UnknownParameter) as info:
        gen(MIXED, colour="red")
    assert info.value.code == "unknown_parameter" and "colour" in info.value.message


# -- the legacy and vip routes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "param", "hint"),
    [
        (LEGACY, {"size": "1024x1024"}, "size", "gpt-image-2-vip"),
        (LEGACY, {"size": "auto"}, "size", "Sora2Official"),
        (LEGACY, {"quality": "high"}, "quality", "Sora2Official or GPTImage2 Enterprise"),
        (LEGACY, {"quality": "auto"}, "quality", "quality control"),
        (VIP, {"quality": "high"}, "quality", "use group Sora2Official or GPTImage2 Enterprise for quality control"),
        (VIP, {"background": "transparent"}, "background", "Sora2Official"),
        (VIP, {"output_format": "webp"}, "output_format", "Sora2Official"),
        (VIP, {"output_compression": 50}, "output_compression", "Sora2Official"),
        (VIP, {"moderation": "low"}, "moderation", "Sora2Official"),
        (VIP, {"stream": True}, "stream", "streaming"),
        (VIP, {"partial_images": 1}, "partial_images", "Sora2Official"),
        (LEGACY, {"n": 2}, "n", "Sora2Official"),
    ],
)
def test_legacy_routes_reject_official_parameters_with_advice(
    route: tuple[str, str], body: dict[str, Any], param: str, hint: str
) -> None:
    message = rejects_message(InvalidRequest, param, gen, route, **body)
    assert f"model {route[1]} in group {route[0]}" in message
    assert hint in message


def test_exact_spec_message_for_quality_on_vip() -> None:
    message = rejects_message(InvalidRequest, "quality", gen, VIP, size="2048x2048", quality="high")
    assert message.startswith(
        "quality is not supported by model gpt-image-2-vip in group default; "
        "use group Sora2Official or GPTImage2 Enterprise for quality control"
    )


def test_vip_sizes_and_auto() -> None:
    table = CATALOG.file.param_profiles["vip"].table_sizes()
    for size in table:
        assert gen(VIP, size=size).upstream_params == {"size": size}
    assert "2048x2048" in rejects_message(InvalidRequest, "size", gen, VIP, size="auto")
    assert "3840x2160 (16:9, 4K)" in rejects_message(InvalidRequest, "size", gen, VIP, size="3840x2000")
    assert "1024x1024" not in table
    rejects_message(InvalidRequest, "size", gen, VIP, size="1024x1024")


# -- official routes ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", OFFICIAL)
def test_official_full_request_passes_through(route: tuple[str, str]) -> None:
    body = {
        "size": "1536x1024",
        "quality": "high",
        "n": 3,
        "background": "opaque",
        "output_format": "jpeg",
        "output_compression": 70,
        "moderation": "low",
        "user": "u",
        "safety_identifier": "s",
    }
    req = gen(route, **body)
    assert req.upstream_params == body
    assert req.n == 3 and req.quality == "high" and req.effective_output_format == "jpeg"


@pytest.mark.parametrize("route", OFFICIAL)
@pytest.mark.parametrize("quality", ["low", "medium", "high", "auto"])
def test_official_qualities(route: tuple[str, str], quality: str) -> None:
    assert gen(route, quality=quality).quality == quality


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"quality": "hd"}, "quality"),
        ({"quality": "standard"}, "quality"),
        ({"quality": "HIGH"}, "quality"),
        ({"n": 11}, "n"),
        ({"n": -1}, "n"),
        ({"size": "1792x936"}, "size"),
        ({"size": "4096x4096"}, "size"),
        ({"size": "256x256"}, "size"),
        ({"background": "clear"}, "background"),
        ({"output_format": "gif"}, "output_format"),
        ({"background": "transparent", "output_format": "jpeg"}, "background"),
        ({"output_compression": 101, "output_format": "jpeg"}, "output_compression"),
        ({"output_compression": -1, "output_format": "webp"}, "output_compression"),
        ({"output_compression": 50}, "output_compression"),  # png (the default) is lossless
        ({"output_compression": "50", "output_format": "jpeg"}, "output_compression"),
        ({"moderation": "none"}, "moderation"),
        ({"stream": "true"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream": True, "partial_images": 4}, "partial_images"),
        ({"partial_images": -1}, "partial_images"),
        ({"input_fidelity": "high"}, "input_fidelity"),
    ],
)
def test_official_rejections(body: dict[str, Any], param: str) -> None:
    rejects_message(InvalidRequest, param, gen, MIXED, **body)


@pytest.mark.parametrize(
    "body",
    [
        {"background": "transparent"},
        {"background": "transparent", "output_format": "webp"},
        {"background": "transparent", "output_format": "png"},
        {"output_compression": 100},
        {"output_compression": 0, "output_format": "webp"},
        {"stream": True, "partial_images": 3},
        {"stream": False},
        {"partial_images": 0},
        {"size": "auto"},
        {"size": "3840x1280"},
    ],
)
def test_official_edges_accepted(body: dict[str, Any]) -> None:
    """Values on the edge of the official rules pass, each landing on the request as sent,
    and everything but ``stream`` goes upstream unchanged."""
    req = gen(MIXED, **body)
    for name, value in body.items():
        assert getattr(req, name) == value, name
    assert req.upstream_params == {k: v for k, v in body.items() if k != "stream"}


def test_stream_flag_kept_out_of_upstream_params() -> None:
    req = gen(MIXED, stream=True, partial_images=2)
    assert req.stream and req.partial_images == 2
    assert "stream" not in req.upstream_params and req.upstream_params["partial_images"] == 2


# -- edits ---------------------------------------------------------------------------------------


def test_edit_multipart_strings_are_typed() -> None:
    req = edit(
        MIXED,
        [route_png()],
        n="2",
        output_format="webp",
        output_compression="80",
        stream="true",
        partial_images="1",
        quality="low",
        size="1024x1024",
    )
    assert req.n == 2 and req.stream is True and req.partial_images == 1
    assert req.upstream_params == {
        "n": 2,
        "output_format": "webp",
        "output_compression": 80,
        "partial_images": 1,
        "quality": "low",
        "size": "1024x1024",
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": "two"}, "n"),
        ({"n": "1.5"}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"output_compression": ""}, "output_compression"),
    ],
)
def test_edit_multipart_bad_strings(fields: dict[str, Any], param: str) -> None:
    rejects_message(InvalidRequest, param, edit, MIXED, [route_png()], **fields)


def test_edit_json_form_types_are_strict() -> None:
    rejects_message(InvalidRequest, "n", edit, MIXED, [route_png()], multipart=False, n="2")
    assert edit(MIXED, [route_png()], multipart=False, n=2).n == 2


@pytest.mark.parametrize("count", [1, 2, 16])
def test_edit_image_counts_accepted_mixed(count: int) -> None:
    images = [route_png(part=f"image[{i}]") for i in range(count)]
    assert len(edit(MIXED, images).images) == count


def test_edit_image_counts_rejected() -> None:
    assert "-F image=@" in rejects_message(InvalidRequest, "image", edit, MIXED, [])
    assert "at most 16" in rejects_message(InvalidRequest, "image", edit, MIXED, [route_png() for _ in range(17)])


def test_edit_legacy_routes() -> None:
    assert edit(LEGACY, [route_png()]).images
    assert edit(VIP, [route_png()], size="2048x2048").size == "2048x2048"
    rejects_message(InvalidRequest, "size", edit, LEGACY, [route_png()], size="1024x1024")
    rejects_message(InvalidRequest, "quality", edit, VIP, [route_png()], size="2048x2048", quality="high")


def test_mask_rules_messages() -> None:
    first = route_png(100, 80)
    ok = edit(MIXED, [first], route_png(100, 80, "RGBA", part="mask"))
    assert ok.mask is not None
    message = rejects_message(InvalidRequest, "mask", edit, MIXED, [first], route_png(50, 50, "RGBA", part="mask"))
    assert "50x50" in message and "100x80" in message
    assert "alpha" in rejects_message(
        InvalidRequest, "mask", edit, MIXED, [first], route_png(100, 80, "RGB", part="mask")
    )
    jpeg = io.BytesIO()
    Image.new("RGB", (100, 80)).save(jpeg, "JPEG")
    rejects_message(InvalidRequest, "mask", edit, MIXED, [first], sniff_image(jpeg.getvalue(), "mask", None))


def test_image_size_limit_from_profile() -> None:
    big = InputImage(data=b"x" * (50 * 1024 * 1024 + 1), mime="image/png", width=1, height=1, part="image[3]")
    with pytest.raises(PayloadTooLarge) as info:
        edit(MIXED, [route_png(), big])
    assert info.value.param == "image[3]" and info.value.status == 413


def test_input_fidelity_must_be_omitted_on_gpt_image_2_edits() -> None:
    message = rejects_message(InvalidRequest, "input_fidelity", edit, MIXED, [route_png()], input_fidelity="high")
    assert "remove it" in message
