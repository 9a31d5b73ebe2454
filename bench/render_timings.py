"""How long the simulator's renderer takes per case (best of 3): the upstream stand-in's
own cost, which a benchmark must keep well below the gateway's.

    .venv/bin/python bench/render_timings.py
"""

from __future__ import annotations

import io
import time

from PIL import Image

from imagerelay.simulation.render import render_image


def _source() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1024, 1024), (200, 100, 50)).save(buf, "PNG")
    return buf.getvalue()


CASES: list[tuple[str, dict[str, object]]] = [
    ("1024x1024 png", {"width": 1024, "height": 1024}),
    ("1024x1024 png transparent", {"width": 1024, "height": 1024, "background": "transparent"}),
    ("1024x1024 jpeg", {"width": 1024, "height": 1024, "output_format": "jpeg"}),
    ("1024x1024 webp", {"width": 1024, "height": 1024, "output_format": "webp"}),
    ("1024x1024 png edit", {"width": 1024, "height": 1024, "sources": [_source()]}),
    ("3840x2160 png", {"width": 3840, "height": 2160}),
    ("3840x2160 jpeg", {"width": 3840, "height": 2160, "output_format": "jpeg"}),
    ("3840x2160 webp", {"width": 3840, "height": 2160, "output_format": "webp"}),
    ("3840x2160 png incompressible", {"width": 3840, "height": 2160, "incompressible": True}),
]


def main() -> None:
    render_image(prompt="warm up", width=64, height=64)
    print("render_image timings (best of 3):")
    for label, kw in CASES:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            data = render_image(prompt="a fox in the snow at dawn", **kw)  # type: ignore[arg-type]
            best = min(best, time.perf_counter() - start)
        print(f"  {label:32s} {best * 1000:7.1f} ms  {len(data) / 1e6:7.2f} MB")


if __name__ == "__main__":
    main()
