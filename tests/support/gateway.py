"""Run the real gateway as a subprocess on a free loopback port, as an operator would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx


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


@contextmanager
def run_gateway(data_dir: Path, *, extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None,
                cwd: Path | None = None) -> Iterator[Gateway]:
    port = free_port()
    tokens_file = data_dir / "demo-tokens-out.json"
    console_file = data_dir / "demo-console.json"  # serve --demo keeps it there (older releases: absent)
    log_path = data_dir / "gateway.log"
    env = {**os.environ, **(extra_env or {})}
    cmd = [
        sys.executable, "-m", "imagerelay", "serve", "--demo", "--demo-tokens-out", str(tokens_file),
        "--port", str(port), "--data-dir", str(data_dir), *(extra_args or []),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        tokens = json.loads(tokens_file.read_text())
        creds = json.loads(console_file.read_text()) if console_file.exists() else {}
        yield Gateway(base, tokens, data_dir, log_path, proc, creds)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
