"""Table-driven tests of the per-route validation (pure functions, default catalog)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from imagerelay.catalog.loader import load_catalog
from imagerelay.domain.imagesniff import sniff_image
from imagerelay.domain.types import InputImage
from imagerelay.domain.validation import build_hints, validate_edit, validate_generation
from imagerelay.errors import ApiError, InvalidRequest, PayloadTooLarge, UnknownParameter

CATALOG = load_catalog()
HINTS = build_hints([r.spec for r in CATALOG.routes.values()], CATALOG.file.param_profiles)
LEGACY = ("default", "gpt-image-2")
VIP = ("default", "gpt-image-2-vip")
MIXED = ("Sora2Official", "gpt-image-2")
PURE = ("GPTImage2 Enterprise", "gpt-image-2")
ALL = [LEGACY, VIP, MIXED, PURE]
OFFICIAL = [MIXED, PURE]


def gen(route: tuple[str, str], **body: Any):  # type: ignore[no-untyped-def]
    r = CATALOG.route(*route)
    assert r is not None
    return validate_generation({"prompt": "a cat", **body}, r.spec, r.profile, HINTS[route])


def edit(route: tuple[str, str], images: list[InputImage], mask: InputImage | None = None, *, multipart: bool = True,
         **fields: Any):  # type: ignore[no-untyped-def]
    r = CATALOG.route(*route)
    assert r is not None
    return validate_edit({"prompt": "make it red", **fields}, images, mask, r.spec, r.profile, HINTS[route],
                         from_multipart=multipart)


def png(w: int = 64, h: int = 64, mode: str = "RGB", part: str = "image") -> InputImage:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 20, 30, 0) if mode == "RGBA" else (10, 20, 30)).save(buf, "PNG")
    return sniff_image(buf.getvalue(), part, "x.png")


def rejects(exc_type: type[ApiError], param: str, fn: Any, *args: Any, **kw: Any) -> str:
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
@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": None}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "   "}, "prompt"), ({"prompt": 3}, "prompt"),
    ({"prompt": ["a"]}, "prompt"), ({"prompt": "x" * 32001}, "prompt"), ({"n": 0}, "n"), ({"n": True}, "n"),
    ({"n": "1"}, "n"), ({"n": 1.0}, "n"), ({"response_format": "png"}, "response_format"), ({"user": 5}, "user"),
    ({"colour": "red"}, "colour"), ({"style": "vivid"}, "style"), ({"input_fidelity": "high"}, "input_fidelity"),
])
def test_common_rejections(route: tuple[str, str], body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        gen(route, **body)
    assert info.value.param == param


def test_null_means_not_given() -> None:
    req = gen(MIXED, size=None, quality=None, n=None)
    assert req.size is None and req.quality is None and req.n == 1


def test_prompt_at_the_limit() -> None:
    assert len(gen(MIXED, prompt="x" * 32000).prompt) == 32000
    message = rejects(InvalidRequest, "prompt", gen, MIXED, prompt="é" * 32001)
    assert "32000" in message and "32,001" in message


def test_unknown_parameter_has_its_code() -> None:
    with pytest.raises(UnknownParameter) as info:
        gen(MIXED, colour="red")
    assert info.value.code == "unknown_parameter" and "colour" in info.value.message


# -- the legacy and vip routes ------------------------------------------------------------------


@pytest.mark.parametrize(("route", "body", "param", "hint"), [
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
])
def test_legacy_routes_reject_official_parameters_with_advice(route: tuple[str, str], body: dict[str, Any], param: str,
                                                              hint: str) -> None:
    message = rejects(InvalidRequest, param, gen, route, **body)
    assert f"model {route[1]} in group {route[0]}" in message
    assert hint in message


def test_exact_spec_message_for_quality_on_vip() -> None:
    message = rejects(InvalidRequest, "quality", gen, VIP, size="2048x2048", quality="high")
    assert message.startswith("quality is not supported by model gpt-image-2-vip in group default; "
                              "use group Sora2Official or GPTImage2 Enterprise for quality control")


def test_vip_sizes_and_auto() -> None:
    table = CATALOG.file.param_profiles["vip"].table_sizes()
    for size in table:
        assert gen(VIP, size=size).upstream_params == {"size": size}
    assert "2048x2048" in rejects(InvalidRequest, "size", gen, VIP, size="auto")
    assert "3840x2160 (16:9, 4K)" in rejects(InvalidRequest, "size", gen, VIP, size="3840x2000")
    assert "1024x1024" not in table
    rejects(InvalidRequest, "size", gen, VIP, size="1024x1024")


# -- official routes ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", OFFICIAL)
def test_official_full_request_passes_through(route: tuple[str, str]) -> None:
    body = {"size": "1536x1024", "quality": "high", "n": 3, "background": "opaque", "output_format": "jpeg",
            "output_compression": 70, "moderation": "low", "user": "u", "safety_identifier": "s"}
    req = gen(route, **body)
    assert req.upstream_params == body
    assert req.n == 3 and req.quality == "high" and req.effective_output_format == "jpeg"


@pytest.mark.parametrize("route", OFFICIAL)
@pytest.mark.parametrize("quality", ["low", "medium", "high", "auto"])
def test_official_qualities(route: tuple[str, str], quality: str) -> None:
    assert gen(route, quality=quality).quality == quality


@pytest.mark.parametrize(("body", "param"), [
    ({"quality": "hd"}, "quality"), ({"quality": "standard"}, "quality"), ({"quality": "HIGH"}, "quality"),
    ({"n": 11}, "n"), ({"n": -1}, "n"),
    ({"size": "1792x936"}, "size"), ({"size": "4096x4096"}, "size"), ({"size": "256x256"}, "size"),
    ({"background": "clear"}, "background"), ({"output_format": "gif"}, "output_format"),
    ({"background": "transparent", "output_format": "jpeg"}, "background"),
    ({"output_compression": 101, "output_format": "jpeg"}, "output_compression"),
    ({"output_compression": -1, "output_format": "webp"}, "output_compression"),
    ({"output_compression": 50}, "output_compression"),  # png (the default) is lossless
    ({"output_compression": "50", "output_format": "jpeg"}, "output_compression"),
    ({"moderation": "none"}, "moderation"), ({"stream": "true"}, "stream"), ({"stream": 1}, "stream"),
    ({"stream": True, "partial_images": 4}, "partial_images"), ({"partial_images": -1}, "partial_images"),
    ({"input_fidelity": "high"}, "input_fidelity"),
])
def test_official_rejections(body: dict[str, Any], param: str) -> None:
    rejects(InvalidRequest, param, gen, MIXED, **body)


@pytest.mark.parametrize("body", [
    {"background": "transparent"}, {"background": "transparent", "output_format": "webp"},
    {"background": "transparent", "output_format": "png"}, {"output_compression": 100},
    {"output_compression": 0, "output_format": "webp"}, {"stream": True, "partial_images": 3},
    {"stream": False}, {"partial_images": 0}, {"size": "auto"}, {"size": "3840x1280"},
])
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
    req = edit(MIXED, [png()], n="2", output_format="webp", output_compression="80", stream="true", partial_images="1",
               quality="low", size="1024x1024")
    assert req.n == 2 and req.stream is True and req.partial_images == 1
    assert req.upstream_params == {"n": 2, "output_format": "webp", "output_compression": 80, "partial_images": 1,
                                   "quality": "low", "size": "1024x1024"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": "two"}, "n"), ({"n": "1.5"}, "n"), ({"stream": "yes"}, "stream"), ({"output_compression": ""}, "output_compression"),
])
def test_edit_multipart_bad_strings(fields: dict[str, Any], param: str) -> None:
    rejects(InvalidRequest, param, edit, MIXED, [png()], **fields)


def test_edit_json_form_types_are_strict() -> None:
    rejects(InvalidRequest, "n", edit, MIXED, [png()], multipart=False, n="2")
    assert edit(MIXED, [png()], multipart=False, n=2).n == 2


@pytest.mark.parametrize("count", [1, 2, 16])
def test_edit_image_counts_accepted(count: int) -> None:
    images = [png(part=f"image[{i}]") for i in range(count)]
    assert len(edit(MIXED, images).images) == count


def test_edit_image_counts_rejected() -> None:
    assert "-F image=@" in rejects(InvalidRequest, "image", edit, MIXED, [])
    assert "at most 16" in rejects(InvalidRequest, "image", edit, MIXED, [png() for _ in range(17)])


def test_edit_legacy_routes() -> None:
    assert edit(LEGACY, [png()]).images
    assert edit(VIP, [png()], size="2048x2048").size == "2048x2048"
    rejects(InvalidRequest, "size", edit, LEGACY, [png()], size="1024x1024")
    rejects(InvalidRequest, "quality", edit, VIP, [png()], size="2048x2048", quality="high")


def test_mask_rules() -> None:
    first = png(100, 80)
    ok = edit(MIXED, [first], png(100, 80, "RGBA", part="mask"))
    assert ok.mask is not None
    message = rejects(InvalidRequest, "mask", edit, MIXED, [first], png(50, 50, "RGBA", part="mask"))
    assert "50x50" in message and "100x80" in message
    assert "alpha" in rejects(InvalidRequest, "mask", edit, MIXED, [first], png(100, 80, "RGB", part="mask"))
    jpeg = io.BytesIO()
    Image.new("RGB", (100, 80)).save(jpeg, "JPEG")
    rejects(InvalidRequest, "mask", edit, MIXED, [first], sniff_image(jpeg.getvalue(), "mask", None))


def test_image_size_limit_from_profile() -> None:
    big = InputImage(data=b"x" * (50 * 1024 * 1024 + 1), mime="image/png", width=1, height=1, part="image[3]")
    with pytest.raises(PayloadTooLarge) as info:
        edit(MIXED, [png(), big])
    assert info.value.param == "image[3]" and info.value.status == 413


def test_input_fidelity_must_be_omitted_on_gpt_image_2_edits() -> None:
    message = rejects(InvalidRequest, "input_fidelity", edit, MIXED, [png()], input_fidelity="high")
    assert "remove it" in message
