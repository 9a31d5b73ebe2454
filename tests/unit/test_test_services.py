"""The test suite decides whether to skip from the services it was pointed at
(IMAGERELAY_TEST_PG / IMAGERELAY_TEST_REDIS), not from the default addresses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import pytest
from tests.support import services
try:
    {call}
except pytest.skip.Exception as skipped:
    print("SKIP", skipped.msg)
"""


@pytest.mark.parametrize(
    "variable, url, call",
    [
        ("IMAGERELAY_TEST_PG", "postgresql://postgres@127.0.0.1:1/postgres", "services.fresh_postgres_database()"),
        ("IMAGERELAY_TEST_REDIS", "redis://127.0.0.1:1/0", "services.redis_url()"),
    ],
)
def test_skip_follows_the_configured_address(variable: str, url: str, call: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IMAGERELAY_REQUIRE_SERVICES"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(call=call)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, variable: url},
    )
    assert out.stdout.startswith("SKIP") and "127.0.0.1:1;" in out.stdout, out.stdout + out.stderr


def test_a_missing_program_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load balancer of the three-host rehearsal: absent, the test says what to install;
    in CI (IMAGERELAY_REQUIRE_SERVICES=1) it is a failure, since .ci/run installs it."""
    from tests.support.services import require_program

    monkeypatch.delenv("IMAGERELAY_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="imagerelay-no-such-balancer is not installed"):
        require_program("imagerelay-no-such-balancer", "/nonexistent/imagerelay-no-such-balancer")
    monkeypatch.setenv("IMAGERELAY_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        require_program("imagerelay-no-such-balancer")
    assert require_program("sh").endswith("/sh")
