"""The six curl examples of the public route guide, run verbatim against the real server.

The commands are extracted from a verbatim copy of the guide (tests/e2e/data), so a
change to them cannot slip in; only $BASE_URL and $LAOZHANG_API_KEY are set.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import png_bytes
from tests.support.gateway import Gateway

GUIDE = Path(__file__).parent / "data" / "route-guide.txt"


def curl_examples() -> list[str]:
    lines = GUIDE.read_text().splitlines()
    examples: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("curl "):
            block = [lines[i]]
            # A command continues after a trailing backslash or inside an open '...' quote.
            while block[-1].rstrip().endswith("\\") or "\n".join(block).count("'") % 2:
                i += 1
                block.append(lines[i])
            examples.append("\n".join(block))
        i += 1
    return examples


# (example index, groups it is documented for, expected output size)
CASES = [
    (0, ["default"], (1024, 1024)),
    (1, ["default"], (3840, 2160)),
    (2, ["Sora2Official", "GPTImage2 Enterprise"], (1536, 1024)),
    (3, ["default"], (1024, 1024)),
    (4, ["default"], (2048, 2048)),
    (5, ["Sora2Official", "GPTImage2 Enterprise"], (1024, 1024)),
]


def test_guide_has_six_examples() -> None:
    examples = curl_examples()
    assert len(examples) == 6
    assert sum("images/edits" in e for e in examples) == 3


@pytest.mark.parametrize(("index", "groups", "size"), CASES)
def test_curl_example_verbatim(
    gateway: Gateway, tmp_path: Path, index: int, groups: list[str], size: tuple[int, int]
) -> None:
    command = curl_examples()[index]
    (tmp_path / "source.png").write_bytes(png_bytes(768, 768, (240, 240, 235)))
    for group in groups:
        env = {**os.environ, "BASE_URL": gateway.v1, "LAOZHANG_API_KEY": gateway.tokens[group]}
        done = subprocess.run(
            ["bash", "-c", command + " -s -w '\\n%{http_code}'"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        body_text, _, status = done.stdout.decode().rpartition("\n")
        assert status == "200", body_text[:500]
        body = json.loads(body_text)
        assert isinstance(body["created"], int)
        assert len(body["data"]) == 1
        b64 = body["data"][0]["b64_json"]
        assert len(b64) % 4 == 0 and not b64.startswith("data:")
        image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        image.load()
        assert image.size == size
        assert image.format == "PNG"
        if group != "default":
            assert body["usage"]["output_tokens"] > 0
            assert body["quality"] == "high"
