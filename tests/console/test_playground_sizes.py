"""The playground's size check (static/sizes.js) says exactly what the gateway says.

The JavaScript port of ``imagerelay/domain/sizes.py`` runs in the same Debian chromium the
console tests use (no Node): every size in the table goes through both, and the verdict,
the nearest valid size and the full message must be identical.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagerelay.domain import sizes
from imagerelay.errors import InvalidRequest

SIZES_JS = Path(__file__).parents[2] / "imagerelay" / "console" / "static" / "sizes.js"

# Boundaries of every rule, spelling near-misses, junk, and the sizes the docs name.
STRINGS = [
    "auto",
    "AUTO",
    " auto ",
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "3840x2160",
    "2160x3840",
    "3840x1280",
    "1280x3840",
    "3840x1264",
    "3840x1296",
    "3856x1280",
    "4096x4096",
    "256x256",
    "1024X1024",
    "1024 x 1024",
    "1024*1024",
    "1024\u00d71024",
    "01024x1024",
    "1000x1000",
    "1792x936",
    "3840x2176",
    "1024x624",
    "800x800",
    "810x810",
    "816x816",
    "3200x1024",
    "3216x1072",
    "1206x400",
    "2880x2880",
    "2880x2896",
    "640x1024",
    "1x1",
    "999999x1",
    "1x999999",
    "abc",
    "",
    "x",
    "1024x",
    "-1024x1024",
    "1024x1024x1024",
    "4000x1000",
    "1600x533",
    "1600x528",
    "1000x3001",
    "2048 X 512",
    "a" * 60,
    "1023x1024",
    "3840x3840",
    "3600x1200",
    "3601x1200",
]


def _random_sizes(count: int) -> list[str]:
    rng = random.Random(12)  # fixed: a failure must reproduce
    out = []
    for _ in range(count):
        if rng.random() < 0.5:
            w, h = rng.randrange(16, 4200, 16), rng.randrange(16, 4200, 16)
        else:
            w, h = rng.randrange(1, 5000), rng.randrange(1, 5000)
        out.append(f"{w}x{h}")
    return out


def python_message(size: str) -> str | None:
    try:
        sizes.check_official_size(size)
    except InvalidRequest as err:
        return err.message
    return None


@pytest.fixture(scope="module")
def js(browser: Any) -> Iterator[Any]:
    """A blank page holding only sizes.js (the harness's session chromium)."""
    context = browser.new_context()
    page = context.new_page()
    page.goto("about:blank")
    page.add_script_tag(content=SIZES_JS.read_text())
    yield page
    context.close()


def test_messages_match_the_gateway(js: Any) -> None:
    cases = STRINGS + _random_sizes(400)
    got = js.evaluate("(cases) => cases.map((s) => window.ImagerelaySizes.checkOfficialSize(s))", cases)
    expected = [python_message(s) for s in cases]
    mismatches = [(s, e, g) for s, e, g in zip(cases, expected, got, strict=True) if e != g]
    assert not mismatches, mismatches[:5]
    assert any(e is None for e in expected) and any(e is not None for e in expected)  # both verdicts exercised


def test_nearest_and_problems_match(js: Any) -> None:
    rng = random.Random(7)
    pairs = [(rng.randrange(1, 6000), rng.randrange(1, 6000)) for _ in range(300)]
    pairs += [(16, 16), (3840, 3840), (1, 3), (5000, 16), (3200, 1024), (1206, 400)]
    got = js.evaluate(
        "(pairs) => pairs.map(([w, h]) => [window.ImagerelaySizes.officialProblems(w, h),"
        " window.ImagerelaySizes.nearestOfficial(w, h)])",
        pairs,
    )
    expected = [[sizes.official_problems(w, h), list(sizes.nearest_official(w, h))] for w, h in pairs]
    mismatches = [(p, e, g) for p, e, g in zip(pairs, expected, got, strict=True) if e != g]
    assert not mismatches, mismatches[:5]
