"""The offline simulator's image renderer.

Both the gateway's built-in ``simulator`` channel and the standalone upstream simulator
(:mod:`imagerelay_sim.server`) answer with images made here, so the
whole stack (decoding, size checks, image store, billing by size) runs on real PNG,
JPEG and WebP bytes of exactly the requested size without any paid upstream.

Design goals, and why:

* **Real and exact.** Every answer decodes with Pillow at exactly ``width`` x
  ``height`` in the requested format; transparency is present only when asked for.
  Gateway tests check dimensions and formats, so a fake header would hide bugs.
* **Deterministic.** The same arguments give byte-identical output (the seed is
  ``sha256(index, prompt)``; no clocks, no ``os.urandom``), so tests can compare
  answers and caches can be verified.
* **Fast.** Everything is drawn with C-level Pillow primitives (gradients rendered at
  256 px and resized, ``ImageDraw`` shapes, one text line) and PNG is written with
  ``compress_level=1``: a 1024x1024 PNG takes a few tens of milliseconds and a
  3840x2160 one well under a second on two cores, so the simulator is never the
  bottleneck of a benchmark.
* **Incompressible on request.** Benchmarks of 4K answers need realistic payloads
  (25-33 MB of base64). ``incompressible=True`` blends seeded noise into the picture
  and stores PNG data uncompressed (deflate "stored" blocks written directly, which is
  several times faster than letting zlib fail to compress noise).
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import random
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from imagerelay.domain.types import InputImage
from imagerelay.domain.usage import auto_size

__all__ = ["OUTPUT_FORMATS", "render_image", "resolve_dimensions"]

#: Formats the renderer writes (the official ``output_format`` values).
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

#: Largest edge the renderer accepts; guards against accidental gigapixel requests.
MAX_EDGE = 16384

_WORK = 256  # side of the small canvas the background gradient is computed on
_MARGIN = 0.05  # shapes stay inside this relative margin, so corners stay background
_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9'&.-]*")

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]


# --------------------------------------------------------------------------- sizes


def resolve_dimensions(size: str | None, default_size: str, first_source: tuple[int, int] | None) -> tuple[int, int]:
    """The pixel size an answer is rendered at.

    ``"WxH"`` is taken as is; ``None`` (the caller gave no size) falls back to
    ``default_size``; ``"auto"`` is what the official API does for GPT image models:
    1024x1024 for generations, and for edits the standard size whose orientation
    matches the first input image (1536x1024 landscape, 1024x1536 portrait, square
    otherwise). The orientation rule is :func:`imagerelay.domain.usage.auto_size`, the
    same one pricing uses for holds, so a simulated answer is billed consistently.

    Raises :class:`ValueError` for anything that is neither ``auto`` nor ``WxH``.
    """
    chosen = size if size is not None else default_size
    if chosen is None or chosen.strip().lower() == "auto":
        if first_source is None:
            return auto_size(None)
        w, h = first_source
        if w <= 0 or h <= 0:
            raise ValueError(f"source image size must be positive; got {w}x{h}")
        probe = InputImage(data=b"", mime="image/png", width=w, height=h, part="image")
        return auto_size(probe)
    m = _SIZE_RE.match(chosen)
    if not m:
        raise ValueError(f"size must be 'auto' or 'WIDTHxHEIGHT'; got {chosen!r}")
    width, height = int(m.group(1)), int(m.group(2))
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive; got {chosen!r}")
    return width, height


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class _Shape:
    kind: str  # ellipse | rect | polygon
    cx: float  # relative centre, 0..1
    cy: float
    r: float  # relative to min(width, height)
    sides: int
    rotation: float
    color: RGBA


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything random about one picture, drawn from the seed once.

    All geometry is relative, so a low-detail streaming preview rendered on a small
    canvas shows the same composition as the final image.
    """

    palette: tuple[RGB, ...]
    orientation: int
    radial_mix: float
    shapes: tuple[_Shape, ...]
    text: str
    text_color: RGB
    stroke_color: RGB
    tint: RGB
    seed: int


def _seed(prompt: str, index: int) -> int:
    digest = hashlib.sha256(f"{index}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _color(rng: random.Random, hue: float, s: tuple[float, float], v: tuple[float, float]) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*s), rng.uniform(*v))
    return int(r * 255), int(g * 255), int(b * 255)


def _caption(prompt: str) -> str:
    """The first words of the prompt, ASCII only (the default font covers Latin)."""
    words = _WORD_RE.findall(prompt)[:4]
    return " ".join(words)[:40]


def _plan(prompt: str, index: int, *, edit: bool) -> _Plan:
    seed = _seed(prompt, index)
    rng = random.Random(seed)
    hue = rng.random()
    palette = (
        _color(rng, hue, (0.55, 0.9), (0.25, 0.55)),
        _color(rng, hue + rng.uniform(0.25, 0.45), (0.45, 0.85), (0.75, 1.0)),
        _color(rng, hue + rng.uniform(0.55, 0.75), (0.5, 0.9), (0.5, 0.85)),
        _color(rng, hue + rng.uniform(0.08, 0.2), (0.6, 1.0), (0.8, 1.0)),
    )
    shapes = []
    count = rng.randint(2, 3) if edit else rng.randint(5, 8)
    max_r = 0.12 if edit else 0.24
    alpha = (110, 160) if edit else (170, 235)
    for _ in range(count):
        base = palette[rng.randrange(1, 4)]
        jitter = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in base)
        shapes.append(
            _Shape(
                kind=rng.choice(("ellipse", "rect", "polygon")),
                cx=rng.uniform(0.15, 0.85),
                cy=rng.uniform(0.15, 0.8),
                r=rng.uniform(0.05, max_r),
                sides=rng.randint(3, 7),
                rotation=rng.uniform(0, 360),
                color=(jitter[0], jitter[1], jitter[2], rng.randint(*alpha)),
            )
        )
    light = sum(palette[0]) < 3 * 128
    return _Plan(
        palette=palette,
        orientation=rng.randrange(4),
        radial_mix=rng.uniform(0.2, 0.6),
        shapes=tuple(shapes),
        text=_caption(prompt),
        text_color=(250, 250, 245) if light else (15, 15, 20),
        stroke_color=(15, 15, 20) if light else (250, 250, 245),
        tint=palette[rng.randrange(1, 4)],
        seed=seed,
    )


# --------------------------------------------------------------------------- drawing


_TRANSPOSE = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
)


def _background(plan: _Plan, width: int, height: int) -> Image.Image:
    """A colourised mix of a linear and a radial gradient, computed at 256 px."""
    lin = Image.linear_gradient("L")
    op = _TRANSPOSE[plan.orientation]
    if op is not None:
        lin = lin.transpose(op)
    gray = Image.blend(lin, Image.radial_gradient("L"), plan.radial_mix)
    small = ImageOps.colorize(gray, black=plan.palette[0], white=plan.palette[1], mid=plan.palette[2])
    return small.resize((width, height), Image.Resampling.BILINEAR)


def _open_source(data: bytes, width: int, height: int) -> Image.Image:
    """Decode an edit input and crop/resize it to cover ``width`` x ``height``."""
    img: Image.Image = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (width, height))  # decode at reduced scale when it is much larger
    img.load()
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    return ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)


def _shape_box(shape: _Shape, width: int, height: int) -> tuple[float, float, float] | None:
    """Centre and radius in pixels, shrunk so the shape stays inside the margin."""
    cx, cy = shape.cx * width, shape.cy * height
    r = shape.r * min(width, height)
    mx, my = _MARGIN * width, _MARGIN * height
    r = min(r, cx - mx, width - mx - cx, cy - my, height - my - cy)
    if r < 1:
        return None
    return cx, cy, r


def _draw_shapes(plan: _Plan, canvas: Image.Image, mask: Image.Image | None, width: int, height: int) -> None:
    draw = ImageDraw.Draw(canvas, "RGBA")
    mdraw = ImageDraw.Draw(mask) if mask is not None else None
    for shape in plan.shapes:
        box = _shape_box(shape, width, height)
        if box is None:
            continue
        cx, cy, r = box
        targets: list[tuple[ImageDraw.ImageDraw, RGBA | int]] = [(draw, shape.color)]
        if mdraw is not None:
            targets.append((mdraw, 255))
        for d, fill in targets:
            if shape.kind == "ellipse":
                d.ellipse((cx - r, cy - r * 0.75, cx + r, cy + r * 0.75), fill=fill)
            elif shape.kind == "rect":
                # Plain rectangles: Pillow's rounded_rectangle blends its corners twice
                # when the fill is translucent.
                d.rectangle((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), fill=fill)
            else:
                d.regular_polygon((cx, cy, r), shape.sides, rotation=shape.rotation, fill=fill)


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _draw_caption(plan: _Plan, canvas: Image.Image, mask: Image.Image | None, width: int, height: int) -> None:
    if not plan.text or min(width, height) < 48:
        return
    size = max(8, min(width, height) // 12)
    font = _font(size)
    length = font.getlength(plan.text)
    room = width * (1 - 3 * _MARGIN)
    if length > room:
        size = max(6, int(size * room / length))
        font = _font(size)
    xy = (width * 1.5 * _MARGIN, height * (1 - 1.5 * _MARGIN) - size)
    stroke = max(1, size // 14)
    ImageDraw.Draw(canvas).text(
        xy, plan.text, fill=plan.text_color, font=font, stroke_width=stroke, stroke_fill=plan.stroke_color
    )
    if mask is not None:
        ImageDraw.Draw(mask).text(xy, plan.text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)


def _compose(
    plan: _Plan, width: int, height: int, sources: Sequence[bytes], transparent: bool
) -> tuple[Image.Image, Image.Image | None]:
    """The RGB picture and, when transparent, its alpha mask (background = 0)."""
    mask = Image.new("L", (width, height), 0) if transparent else None
    if sources:
        src = _open_source(sources[0], width, height)
        canvas = Image.blend(src.convert("RGB"), Image.new("RGB", (width, height), plan.tint), 0.25)
        if mask is not None:
            if src.mode == "RGBA":
                mask.paste(src.getchannel("A"))
            else:
                # An opaque source keeps its content, inset so the corners show the
                # requested transparency.
                mx, my = int(_MARGIN * width), int(_MARGIN * height)
                ImageDraw.Draw(mask).rounded_rectangle(
                    (mx, my, width - 1 - mx, height - 1 - my), radius=min(width, height) // 12, fill=255
                )
        _paste_thumbnails(canvas, mask, sources[1:], width, height)
    else:
        canvas = _background(plan, width, height)
    _draw_shapes(plan, canvas, mask, width, height)
    _draw_caption(plan, canvas, mask, width, height)
    return canvas, mask


def _paste_thumbnails(
    canvas: Image.Image, mask: Image.Image | None, others: Sequence[bytes], width: int, height: int
) -> None:
    """Further edit inputs appear as a row of thumbnails along the top edge."""
    if not others:
        return
    side = max(1, min(width, height) // 5)
    gap = max(1, int(_MARGIN * min(width, height) / 2))
    x, y = int(_MARGIN * width), int(_MARGIN * height)
    for data in others:
        if x + side > width - int(_MARGIN * width):
            break
        thumb = _open_source(data, side, side).convert("RGB")
        canvas.paste(thumb, (x, y))
        if mask is not None:
            mask.paste(255, (x, y, x + side, y + side))
        x += side + gap


def _add_noise(img: Image.Image, seed: int) -> Image.Image:
    """Blend seeded noise in so deflate (PNG, gzip) cannot shrink the pixels.

    ``random.Random(seed).randbytes`` + ``Image.frombytes`` is C speed (about 0.1 s
    for 4K) and deterministic, unlike ``Image.effect_noise``.
    """
    w, h = img.size
    noise = Image.frombytes("RGB", (w, h), random.Random(seed ^ 0x5EED).randbytes(w * h * 3))
    return Image.blend(img, noise, 0.5)


# --------------------------------------------------------------------------- encoding


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _stored_png(img: Image.Image) -> bytes:
    """A valid PNG whose IDAT holds uncompressed deflate blocks.

    Used for incompressible output: zlib would spend ~1 s on 25 MB of noise to save
    nothing, and Pillow's ``compress_level=0`` path is also slow. Rows get filter
    type 0 (none).
    """
    mode = img.mode
    color_type, channels = (6, 4) if mode == "RGBA" else (2, 3)
    if mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    w, h = img.size
    stride = w * channels
    raw = memoryview(img.tobytes())
    parts: list[bytes | memoryview] = []
    for i in range(h):
        parts.append(b"\x00")
        parts.append(raw[i * stride : (i + 1) * stride])
    rows = b"".join(parts)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows, 0))
        + _png_chunk(b"IEND", b"")
    )


def _quality(output_compression: int | None, low: int) -> int:
    """``output_compression`` is the official 0-100 knob (default 100 = best)."""
    if output_compression is None:
        return 100
    return max(low, min(100, int(output_compression)))


def _encode(img: Image.Image, fmt: str, output_compression: int | None, incompressible: bool) -> bytes:
    if fmt == "png" and incompressible:
        return _stored_png(img)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, "JPEG", quality=_quality(output_compression, 1))
    else:
        img.save(buf, "WEBP", quality=_quality(output_compression, 0), method=0)
    return buf.getvalue()


# --------------------------------------------------------------------------- entry point


def render_image(  # noqa: PLR0913 - keyword-only render options, each named at the call
    *,
    prompt: str,
    width: int,
    height: int,
    output_format: str = "png",
    background: str | None = None,
    output_compression: int | None = None,
    index: int = 0,
    sources: Sequence[bytes] = (),
    partial: tuple[int, int] | None = None,
    incompressible: bool = False,
) -> bytes:
    """Render a real ``width`` x ``height`` image for ``prompt`` and encode it.

    * ``output_format``: ``png`` | ``jpeg`` (``jpg`` accepted) | ``webp``.
    * ``background="transparent"`` with png/webp gives RGBA whose background (all four
      corners included) is fully transparent; anything else is opaque. JPEG is always
      opaque (the official API rejects transparent JPEG before rendering).
    * ``output_compression`` (0-100) is the JPEG/WebP quality; PNG ignores it.
    * ``index`` is the position within ``n``: each image of a call differs.
    * ``sources`` are edit inputs (PNG/JPEG/WebP bytes): the picture is the first one
      cropped to size and tinted, with shapes drawn over it and the others pasted as
      thumbnails.
    * ``partial=(i, total)`` renders streaming preview ``i`` of ``total``: the same
      composition rendered at 1/2**(total-i+1) scale and upscaled, so later previews
      are sharper.
    * ``incompressible`` adds seeded noise (and stores PNG uncompressed) for
      benchmark-sized answers.

    Raises :class:`ValueError` on a bad size, format or partial index, and whatever
    Pillow raises (``PIL.UnidentifiedImageError``, an ``OSError``) on an undecodable
    source.
    """
    fmt = output_format.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}; got {output_format!r}")
    if not (0 < width <= MAX_EDGE and 0 < height <= MAX_EDGE):
        raise ValueError(f"size must be between 1 and {MAX_EDGE} px per edge; got {width}x{height}")
    if partial is not None:
        i, total = partial
        if not (total >= 1 and 0 <= i < total):
            raise ValueError(f"partial must be (i, total) with 0 <= i < total; got {partial!r}")
    transparent = background == "transparent" and fmt in ("png", "webp")
    plan = _plan(prompt, index, edit=bool(sources))

    work_w, work_h = width, height
    if partial is not None:
        factor = 2 ** (partial[1] - partial[0] + 1)
        work_w, work_h = max(1, -(-width // factor)), max(1, -(-height // factor))
    img, mask = _compose(plan, work_w, work_h, sources, transparent)
    if (work_w, work_h) != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        if mask is not None:
            mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    if incompressible:
        img = _add_noise(img, plan.seed)
    if mask is not None:
        img = img.convert("RGBA")
        img.putalpha(mask)
    return _encode(img, fmt, output_compression, incompressible)
