"""Run the real gateway as a subprocess on a free loopback port, as an operator would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import backend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    base_url: str  # http://127.0.0.1:PORT
    tokens: dict[str, str]  # group -> demo token
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    # Console sign-in of the demo admin and the demo user: {"admin"|"user": {"name", "password"}}
    # (empty when the console is off).
    console: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gateway(
    data_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    timeout_s: float = 60.0,
) -> Gateway:
    """Start the gateway and wait until it answers /healthz; the caller stops it
    (``stop_gateway``). ``run_gateway`` is the usual way; fleets of hosts use this pair.
    The 60 s bound is for a loaded shared machine (a start was seen taking 19 s there on
    PostgreSQL), not a measure: a session gateway that misses it fails every test using it."""
    gw = launch_gateway(data_dir, extra_env=extra_env, extra_args=extra_args, cwd=cwd, port=port)
    try:
        wait_until_serving(gw, timeout_s=timeout_s)
    except BaseException:
        stop_gateway(gw)
        raise
    return gw


def launch_gateway(
    data_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    wrapper: Sequence[str] = (),
) -> Gateway:
    """Start the process without waiting for it (several hosts start at once this way).
    ``wrapper`` prefixes the command (e.g. setpriv, to run it with fewer privileges)."""
    port = port or free_port()
    tokens_file = data_dir / "demo-tokens-out.json"
    log_path = data_dir / "gateway.log"
    # The suite's backend (tests/support/backend.py) unless the test named its own.
    env = {**os.environ, **backend.env_for(data_dir), **(extra_env or {})}
    cmd = [
        *wrapper,
        sys.executable,
        "-m",
        "imagerelay",
        "serve",
        "--demo",
        "--demo-tokens-out",
        str(tokens_file),
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(extra_args or []),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    backend.track(data_dir, proc)
    return Gateway(f"http://127.0.0.1:{port}", {}, data_dir, log_path, proc)


def wait_until_serving(gw: Gateway, *, timeout_s: float = 60.0) -> None:
    """Block until ``gw`` answers /healthz, then read its demo tokens into ``gw.tokens``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if gw.process.poll() is not None:
            raise RuntimeError(f"gateway exited with {gw.process.returncode}:\n{gw.log_text()}")
        try:
            if httpx.get(gw.base_url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start:\n{gw.log_text()}")
        time.sleep(0.1)
    gw.tokens.clear()
    gw.tokens.update(json.loads((gw.data_dir / "demo-tokens-out.json").read_text()))
    console_file = gw.data_dir / "demo-console.json"  # serve --demo keeps it there (older releases: absent)
    gw.console.clear()
    gw.console.update(json.loads(console_file.read_text()) if console_file.exists() else {})


def stop_gateway(gw: Gateway) -> None:
    """SIGTERM (calls in flight finish), SIGKILL after 10 s; a no-op on a dead process."""
    if gw.process.poll() is None:
        gw.process.terminate()
    try:
        gw.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        gw.process.kill()
        gw.process.wait()


@contextmanager
def run_gateway(
    data_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Gateway]:
    gw = start_gateway(data_dir, extra_env=extra_env, extra_args=extra_args, cwd=cwd)
    try:
        yield gw
    finally:
        stop_gateway(gw)
