"""Validation speed: 100k generation bodies against every shipped route, best of 5.

Run on two trees in the same session to compare (``PYTHONPATH=<tree> python
bench/validation.py``): the bodies mix the common shapes and one unknown key, so both
the accepting path and an error path are timed.
"""

from __future__ import annotations

import time
from typing import Any

from imagerelay.catalog.loader import load_catalog
from imagerelay.domain.validation import build_hints, validate_generation
from imagerelay.errors import ApiError

BODIES: list[dict[str, Any]] = [
    {"model": "m", "prompt": "a cat"},
    {"model": "m", "prompt": "a cat", "n": 2, "size": "1024x1024", "quality": "high"},
    {"model": "m", "prompt": "a cat", "output_format": "webp", "output_compression": 80, "background": "opaque"},
    {"model": "m", "prompt": "a cat", "stream": True, "partial_images": 2, "moderation": "low"},
    {"model": "m", "prompt": "a cat", "qualty": "high"},
]


def main(count: int = 100_000, repeats: int = 5) -> float:
    catalog = load_catalog()
    routes = list(catalog.routes.values())
    hints = build_hints([r.spec for r in routes], catalog.file.param_profiles)
    work = [(body, route) for route in routes for body in BODIES]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            body, route = work[i % len(work)]
            try:  # noqa: SIM105 - contextlib.suppress would add its own cost to every measured call
                validate_generation(body, route.spec, route.profile, hints[(route.spec.group, route.spec.model)])
            except ApiError:
                pass
        best = min(best, time.perf_counter() - start)
    print(f"{count} validations: best of {repeats} {best:.3f}s ({best / count * 1e6:.2f} us each)")
    return best


if __name__ == "__main__":
    main()
