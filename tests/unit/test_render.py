"""The simulator's renderer: real, exact, deterministic images, fast enough for benchmarks."""

from __future__ import annotations

import base64
import io
import zlib

import pytest
from PIL import Image, ImageFilter, ImageStat

from imagerelay.domain.types import InputImage
from imagerelay.domain.usage import auto_size
from imagerelay.simulation.render import render_image, resolve_dimensions

PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
SIZES = {
    "square-1k": (1024, 1024),
    "portrait": (1024, 1536),
    "wide-21x9": (1280, 544),
    "tiny-odd": (17, 9),
}


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (512, 384), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def _mean(img: Image.Image) -> list[float]:
    return ImageStat.Stat(img.convert("RGB")).mean


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("size_class", list(SIZES))
@pytest.mark.parametrize("background", [None, "auto", "opaque", "transparent"])
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_every_format_background_and_size_decodes_exactly(fmt: str, background: str | None, size_class: str) -> None:
    width, height = SIZES[size_class]
    data = render_image(
        prompt="a lighthouse at dusk", width=width, height=height, output_format=fmt, background=background
    )
    img = _open(data)
    assert img.format == PIL_FORMAT[fmt]
    assert img.size == (width, height)
    if background == "transparent" and fmt != "jpeg":
        assert img.mode == "RGBA"
        alpha = img.getchannel("A")
        lo, hi = alpha.getextrema()
        assert lo == 0 and hi == 255, "transparent background and opaque content"
        if min(width, height) >= 64:
            for corner in [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)]:
                assert alpha.getpixel(corner) == 0
    else:
        assert img.mode == "RGB", "no alpha channel unless transparency was asked for"


def test_jpg_alias_and_case() -> None:
    assert _open(render_image(prompt="x", width=64, height=64, output_format="JPG")).format == "JPEG"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_format": "gif"},
        {"width": 0},
        {"height": 20000},
        {"partial": (3, 3)},
        {"partial": (0, 0)},
        {"partial": (-1, 2)},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"prompt": "x", "width": 64, "height": 64, **kwargs}
    with pytest.raises(ValueError):
        render_image(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_same_arguments_give_identical_bytes(fmt: str) -> None:
    kwargs = {
        "prompt": "two cats on a sofa",
        "width": 640,
        "height": 480,
        "output_format": fmt,
        "background": "transparent",
    }
    assert render_image(**kwargs) == render_image(**kwargs)  # type: ignore[arg-type]


def test_different_prompts_and_indexes_differ() -> None:
    a = render_image(prompt="a red bicycle", width=256, height=256)
    b = render_image(prompt="a blue boat", width=256, height=256)
    a1 = render_image(prompt="a red bicycle", width=256, height=256, index=1)
    assert len({a, b, a1}) == 3
    # And not just in metadata: the pixels differ.
    assert _open(a).tobytes() != _open(b).tobytes()


def test_non_ascii_prompt_renders() -> None:
    img = _open(render_image(prompt="一只猫 в шляпе 🎩", width=128, height=128))
    assert img.size == (128, 128)


# --------------------------------------------------------------------------- edits


@pytest.mark.parametrize("src_fmt", ["PNG", "JPEG", "WEBP"])
def test_edit_is_derived_from_the_first_source(src_fmt: str) -> None:
    red = render_image(prompt="make it pop", width=512, height=512, sources=[_solid((220, 20, 20), fmt=src_fmt)])
    blue = render_image(prompt="make it pop", width=512, height=512, sources=[_solid((20, 20, 220), fmt=src_fmt)])
    r_mean, b_mean = _mean(_open(red)), _mean(_open(blue))
    assert r_mean[0] > r_mean[2] + 60, r_mean
    assert b_mean[2] > b_mean[0] + 60, b_mean
    # The same prompt drew the same overlay; only the source changed.
    assert abs((r_mean[0] - b_mean[0]) - (b_mean[2] - r_mean[2])) < 40


def test_edit_output_size_is_independent_of_source_size() -> None:
    src = _solid((10, 200, 10), size=(300, 700))
    img = _open(render_image(prompt="x", width=1536, height=1024, sources=[src]))
    assert img.size == (1536, 1024)


def test_further_sources_appear_as_thumbnails() -> None:
    red, green = _solid((220, 20, 20)), _solid((20, 220, 20))
    single = _open(render_image(prompt="collage", width=500, height=500, sources=[red]))
    double = _open(render_image(prompt="collage", width=500, height=500, sources=[red, green]))
    # Thumbnails go along the top-left edge (inset by the 5 % margin, 1/5 of the short side).
    box = (30, 30, 120, 120)
    assert _mean(double.crop(box))[1] > 150 > _mean(single.crop(box))[1]


def test_transparent_edit_keeps_corners_transparent() -> None:
    img = _open(
        render_image(prompt="x", width=400, height=300, background="transparent", sources=[_solid((0, 0, 255))])
    )
    assert img.mode == "RGBA"
    assert img.getchannel("A").getpixel((0, 0)) == 0
    assert img.getchannel("A").getpixel((200, 150)) == 255


def test_source_alpha_is_kept_for_transparent_edits() -> None:
    buf = io.BytesIO()
    src = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    src.paste((255, 0, 0, 255), (50, 50, 150, 150))
    src.save(buf, "PNG")
    img = _open(render_image(prompt="x", width=200, height=200, background="transparent", sources=[buf.getvalue()]))
    alpha = img.getchannel("A")
    assert alpha.getpixel((20, 100)) == 0  # transparent in the source
    assert alpha.getpixel((100, 100)) == 255


# --------------------------------------------------------------------------- compression, partials


def test_output_compression_changes_jpeg_and_webp_size() -> None:
    kw = {"prompt": "a busy market street", "width": 768, "height": 768}
    for fmt in ("jpeg", "webp"):
        low = render_image(**kw, output_format=fmt, output_compression=10)  # type: ignore[arg-type]
        high = render_image(**kw, output_format=fmt, output_compression=95)  # type: ignore[arg-type]
        default = render_image(**kw, output_format=fmt)  # type: ignore[arg-type]
        assert len(low) < len(high) <= len(default), fmt


def test_png_ignores_output_compression() -> None:
    kw = {"prompt": "x", "width": 128, "height": 128}
    assert render_image(**kw, output_compression=5) == render_image(**kw)  # type: ignore[arg-type]


def _detail(img: Image.Image) -> float:
    return ImageStat.Stat(img.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0]


def test_partials_are_full_size_previews_with_increasing_detail() -> None:
    kw = {"prompt": "a mountain lake with a small cabin", "width": 1024, "height": 768}
    final = _open(render_image(**kw))  # type: ignore[arg-type]
    partials = [_open(render_image(**kw, partial=(i, 3))) for i in range(3)]  # type: ignore[arg-type]
    assert all(p.size == (1024, 768) for p in partials)
    details = [_detail(p) for p in partials] + [_detail(final)]
    assert details == sorted(details), details
    assert details[0] < details[-1]
    # A preview shows the same composition: mean colour close to the final image's.
    for p in partials:
        assert max(abs(a - b) for a, b in zip(_mean(p), _mean(final), strict=True)) < 25


def test_incompressible_4k_png_is_benchmark_sized_and_deterministic() -> None:
    kw = {"prompt": "bench", "width": 3840, "height": 2160, "incompressible": True}
    data = render_image(**kw)  # type: ignore[arg-type]
    b64_len = len(base64.b64encode(data))
    assert 25_000_000 <= b64_len <= 34_000_000, b64_len
    img = _open(data)
    assert (img.format, img.size, img.mode) == ("PNG", (3840, 2160), "RGB")
    raw = img.tobytes()
    sample = raw[len(raw) // 2 : len(raw) // 2 + 2_000_000]
    assert len(zlib.compress(sample, 6)) > 0.8 * len(sample), "pixels must not deflate well"
    assert render_image(**kw) == data  # type: ignore[arg-type]
    # Transparent incompressible output is a valid RGBA PNG too.
    small = _open(render_image(prompt="b", width=300, height=200, incompressible=True, background="transparent"))
    assert (small.size, small.mode) == ((300, 200), "RGBA")


# --------------------------------------------------------------------------- dimensions


@pytest.mark.parametrize(
    ("size", "default", "source", "expected"),
    [
        ("1536x1024", "1024x1024", None, (1536, 1024)),
        ("2048X1152", "1024x1024", (10, 10), (2048, 1152)),
        (None, "1280x720", None, (1280, 720)),
        (None, "auto", None, (1024, 1024)),
        ("auto", "1280x720", None, (1024, 1024)),
        ("auto", "1024x1024", (1600, 900), (1536, 1024)),
        ("auto", "1024x1024", (900, 1600), (1024, 1536)),
        ("auto", "1024x1024", (1100, 1000), (1024, 1024)),
        (None, "auto", (2000, 1000), (1536, 1024)),
    ],
)
def test_resolve_dimensions(
    size: str | None, default: str, source: tuple[int, int] | None, expected: tuple[int, int]
) -> None:
    assert resolve_dimensions(size, default, source) == expected


@pytest.mark.parametrize("size", ["big", "1024", "0x100", "-5x5", "1024x"])
def test_resolve_dimensions_rejects_garbage(size: str) -> None:
    with pytest.raises(ValueError):
        resolve_dimensions(size, "1024x1024", None)


@pytest.mark.parametrize("source", [(1000, 1000), (1250, 1000), (1251, 1000), (1000, 1251), (3000, 100), (100, 3000)])
def test_auto_size_for_edits_matches_pricing(source: tuple[int, int]) -> None:
    """Pricing holds and the simulator must agree on what ``auto`` renders."""
    probe = InputImage(data=b"", mime="image/png", width=source[0], height=source[1], part="image")
    assert resolve_dimensions("auto", "1024x1024", source) == auto_size(probe)


# --------------------------------------------------------------------------- the benchmark's cases


RENDER_CASES = [
    ("1024x1024 png", {"width": 1024, "height": 1024}, "PNG", "RGB"),
    ("1024x1024 png transparent", {"width": 1024, "height": 1024, "background": "transparent"}, "PNG", "RGBA"),
    ("1024x1024 jpeg", {"width": 1024, "height": 1024, "output_format": "jpeg"}, "JPEG", "RGB"),
    ("1024x1024 webp", {"width": 1024, "height": 1024, "output_format": "webp"}, "WEBP", "RGB"),
    ("3840x2160 png", {"width": 3840, "height": 2160}, "PNG", "RGB"),
    ("3840x2160 png incompressible", {"width": 3840, "height": 2160, "incompressible": True}, "PNG", "RGB"),
]


@pytest.mark.parametrize(("label", "kw", "fmt", "mode"), RENDER_CASES, ids=[c[0] for c in RENDER_CASES])
def test_benchmark_render_cases_decode(label: str, kw: dict[str, object], fmt: str, mode: str) -> None:
    """The cases bench/render_timings.py times are real images of the asked size, format and
    mode; the incompressible 4K case is as large as a real 4K answer (what the 4K benchmark relies on)."""
    data = render_image(prompt="a fox in the snow at dawn", **kw)  # type: ignore[arg-type]
    img = _open(data)
    assert (img.width, img.height, img.format, img.mode) == (kw["width"], kw["height"], fmt, mode)
    if kw.get("incompressible"):  # a realistic 4K payload: over 20 MB, and zlib saves under 10%
        assert len(data) > 20_000_000 and len(zlib.compress(data, 1)) > 0.9 * len(data)
