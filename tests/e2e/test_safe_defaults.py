"""Safe defaults (issue 11): a route nobody serves stops check-catalog and start-up with
its name; catalog channels get the same field checks as run-time ones; simulator and real
channels never share a pool unless the catalog says so; `serve` without --demo warns when
only the simulator serves a route; every CLI error is one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from imagerelay.catalog.loader import default_catalog_text
from imagerelay_sim.server import create_upstream_app
from tests.support.gateway import free_port, run_gateway
from tests.support.servers import run_asgi

ADMIN = "safe-defaults-admin"


def imagerelay(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagerelay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def catalog(tmp_path: Path, channels: list[dict[str, Any]], **extra: Any) -> Path:
    doc = yaml.safe_load(default_catalog_text())
    doc["channels"] = channels
    doc.update(extra)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


SIMS = [
    {"name": "simulator-legacy", "type": "simulator", "pools": ["legacy", "legacy-vip"]},
    {"name": "simulator-official", "type": "simulator", "pools": ["official-mixed", "official-pure"]},
]
REAL = {
    "name": "real-1",
    "type": "openai",
    "base_url": "https://api.example.com/v1",
    "api_key_env": "REAL_1_KEY",
    "pools": ["official-pure"],
}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    # A first start on an empty data dir also says it created the schema: a notice, not an error.
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("created the database schema at revision")
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_route_without_an_enabled_channel_fails_check_catalog_and_serve(tmp_path: Path) -> None:
    path = catalog(tmp_path, [SIMS[0], {**SIMS[1], "pools": ["official-mixed"]}, {**REAL, "enabled": False}])
    line = one_error_line(imagerelay("check-catalog", str(path)))
    assert "route official-pure (GPTImage2 Enterprise / gpt-image-2)" in line and "official-pure" in line

    started = time.monotonic()
    served = imagerelay(
        "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--catalog", str(path), timeout=60
    )
    assert served.returncode == 2 and time.monotonic() - started < 30
    assert "route official-pure (GPTImage2 Enterprise / gpt-image-2)" in one_error_line(served)


def test_a_stored_channel_counts_for_serve_and_check_catalog(tmp_path: Path) -> None:
    path = catalog(tmp_path, [SIMS[0], {**SIMS[1], "pools": ["official-mixed"]}])
    data = str(tmp_path / "data")
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagerelay",
            "channels",
            "add",
            "--name",
            "stored",
            "--type",
            "openai",
            "--pool",
            "official-pure",
            "--key-stdin",
            "--data-dir",
            data,
        ],
        input="sk-stored\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IMAGERELAY_CATALOG": str(path)},
    )
    assert added.returncode == 0, added.stderr
    ok = imagerelay("check-catalog", str(path), "--data-dir", data)
    assert ok.returncode == 0, ok.stderr
    assert imagerelay("check-catalog", str(path)).returncode == 2  # the catalog alone serves no official-pure


@pytest.mark.parametrize(
    "channel, words",
    [
        ({**REAL, "base_url": "ftp://api.example.com"}, "base_url"),
        ({**REAL, "base_url": "https://api.example.com/v1?x=1"}, "base_url"),
        ({**REAL, "pools": ["official-pure", "typo-pool"]}, "typo-pool"),
        ({**REAL, "api_key_env": "IMAGERELAY_SECRET_KEY"}, "api_key_env"),
        ({**REAL, "name": "bad name"}, "name"),
    ],
)
def test_catalog_channels_get_the_field_checks(tmp_path: Path, channel: dict[str, Any], words: str) -> None:
    line = one_error_line(imagerelay("check-catalog", str(catalog(tmp_path, [*SIMS, channel]))))
    assert f"({channel['name']})" in line and words in line


def test_mixed_simulator_and_real_pool_is_refused_unless_allowed(tmp_path: Path) -> None:
    line = one_error_line(imagerelay("check-catalog", str(catalog(tmp_path, [*SIMS, REAL]))))
    assert "official-pure" in line and "simulator-official" in line and "mixed_simulator_pools" in line
    allowed = imagerelay(
        "check-catalog", str(catalog(tmp_path, [*SIMS, REAL], mixed_simulator_pools=["official-pure"]))
    )
    assert allowed.returncode == 0, allowed.stderr
    disabled_sim = [
        SIMS[0],
        {**SIMS[1], "pools": ["official-mixed"]},
        {**SIMS[1], "name": "sim-off", "pools": ["official-pure"], "enabled": False},
        REAL,
    ]
    assert imagerelay("check-catalog", str(catalog(tmp_path, disabled_sim))).returncode == 0


def test_a_real_channel_added_at_run_time_retires_the_simulator_from_its_pool(tmp_path: Path) -> None:
    key = "sk-runtime-real-key"
    with (
        run_asgi(create_upstream_app("openai", api_keys=[key])) as upstream,
        run_gateway(tmp_path, extra_env={"IMAGERELAY_ADMIN_TOKEN": ADMIN}) as gw,
    ):
        client = openai.OpenAI(base_url=gw.v1, api_key=gw.tokens["GPTImage2 Enterprise"], max_retries=0)
        client.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")  # the simulator
        r = httpx.post(
            gw.base_url + "/admin/channels",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={
                "name": "real",
                "type": "openai",
                "base_url": upstream + "/v1",
                "api_key": key,
                "pools": ["official-pure"],
                "priority": -100,
            },
        )  # below the simulator's priority: still it serves
        assert r.status_code == 201, r.text
        for _ in range(3):
            client.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
        assert len(httpx.get(upstream + "/_sim/requests").json()["requests"]) == 3
        # disabled, the real channel does not hand the pool back to the simulator
        assert (
            httpx.post(
                gw.base_url + "/admin/channels/real/disable", headers={"Authorization": f"Bearer {ADMIN}"}
            ).status_code
            == 200
        )
        with pytest.raises(openai.APIStatusError) as info:
            client.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
        assert info.value.status_code == 503


def _serve_log(tmp_path: Path, *args: str) -> str:
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imagerelay",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return log.read_text()


def test_serve_without_demo_warns_about_simulator_only_routes(tmp_path: Path) -> None:
    text = _serve_log(tmp_path)
    warning = next(line for line in text.splitlines() if "WARNING" in line)
    for route in ("legacy-standard", "legacy-size-enhanced", "official-mixed", "official-pure"):
        assert f"route {route} " in warning
    assert "WARNING" not in _serve_log(tmp_path, "--demo")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    down = one_error_line(
        imagerelay("channels", "test", "x", "--url", f"http://127.0.0.1:{free_port()}", "--admin-token", "t")
    )
    assert "cannot reach" in down
    assert "cannot reach" in one_error_line(
        imagerelay("generate", "a kite", "--key", "sk-x", "--base-url", f"http://127.0.0.1:{free_port()}/v1")
    )
    missing = one_error_line(imagerelay("check-catalog", str(tmp_path / "nope.yaml")))
    assert "nope.yaml" in missing
    assert "nope.png" in one_error_line(imagerelay("edit", "x", "--image", str(tmp_path / "nope.png"), "--key", "k"))
    served = one_error_line(imagerelay("serve", "--catalog", str(tmp_path / "nope.yaml"), "--data-dir", str(tmp_path)))
    assert "nope.yaml" in served
    assert "--weight" in one_error_line(imagerelay("channels", "update", "x", "--weight", "many"))
    assert "--type" in one_error_line(imagerelay("channels", "add", "--name", "x"))
    assert "amount" in one_error_line(
        imagerelay("balance", "add", "--user", "u", "--amount", "lots", "--reason", "r", "--data-dir", str(tmp_path))
    )
    db = one_error_line(imagerelay("users", "list", "--database-url", f"postgresql://u@127.0.0.1:{free_port()}/x"))
    assert db.startswith("error: ") and "refused" in db.lower()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("groups: [\n")
    assert "bad.yaml" in one_error_line(imagerelay("check-catalog", str(bad_yaml)))
