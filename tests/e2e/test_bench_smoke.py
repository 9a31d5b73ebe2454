"""The benchmark runs and reports (no timing is asserted: machines are noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.bench  # minutes of load: not in the default run (see README)


def test_bench_quick_run_reports(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = out.read_text()
    for scenario in (
        "small image, c=1, p50 latency",
        "small image, c=64, throughput",
        "4K 3840x2160",
        "gateway peak RSS",
        "edit 4 x",
        "time to first partial",
        "Gateway errors during the run: 0",
    ):
        assert scenario in text, scenario
    assert "x of direct" in text and "| ok |" in text
    # The targets of issue 15, judged, and the long-call scenario run end to end.
    for heading in (
        "## Targets of issue 15",
        "### 1. Big answers",
        "### 2. Thousands of long calls",
        "### 3. PostgreSQL + Redis path",
        "### 4. Small calls",
        "## Thousands of long calls",
    ):
        assert heading in text, heading
    assert "Calls that did not complete: 0" in text
    assert "| plain calls | 100 of 100 |" in text and "| queued jobs (submission) | 50 of 50 |" in text
