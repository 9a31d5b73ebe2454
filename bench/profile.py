"""Profile the gateway's hot path: small-image calls at concurrency 64 under wrk,
with py-spy sampling the gateway process.

    .venv/bin/python bench/profile.py [--seconds 15] [--out /tmp/gw.svg] [--format flamegraph|raw|speedscope]
    .venv/bin/python bench/profile.py --scenario 4k|4k-url --connections 8   # 4K answers (~33 MB JSON)

Needs ``py-spy`` (``.venv/bin/pip install py-spy``) and ``wrk``. Prints the gateway's
calls/s and its CPU milliseconds per call (from /proc), which is the figure the
throughput target depends on: one worker on one core reaches 2,000 calls/s only at
<= 0.5 ms of CPU per call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from run import (  # noqa: E402
    BIG,
    SMALL,
    WRK_SCRIPT,
    fixed_answer_channel,
    fresh_pg_database,
    peak_rss_mb,
    reset_peak_rss,
    start_stack,
    wrk,
)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's worker processes with ``--workers N``)."""
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pids[i]}/task").iterdir():
                children = (task / "children").read_text().split()
                pids.extend(int(c) for c in children)
        i += 1
    return pids


def pg_backend_pids(database: str) -> list[int]:
    """The PostgreSQL server processes serving ``database`` (same machine): their CPU is
    part of what a call costs on PostgreSQL."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if cmdline.startswith("postgres: ") and f" {database} " in cmdline:
                pids.append(int(proc.name))
    return pids


def redis_server_pids() -> list[int]:
    """The Redis server processes on this machine (the bench's Redis is local)."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "redis-server":
                pids.append(int(proc.name))
    return pids


def total_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += sum(cpu_seconds(pid))
    return total


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(args: argparse.Namespace, stack: Any, script: Path, body: dict[str, Any]) -> None:
    for _ in range(5):
        httpx.post(
            stack.gw_url + "/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {stack.token}"},
            timeout=60,
        ).raise_for_status()
    spy = None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not args.no_spy:
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "-p",
                str(stack.gateway.pid),
                "-o",
                args.out,
                "-f",
                args.format,
                "-d",
                str(int(args.seconds)),
                "-r",
                "250",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
    rss_before = current_rss_mb(stack.gateway.pid)
    reset_peak_rss(stack.gateway.pid)
    gateway_pids = tree_pids(stack.gateway.pid)
    backends = pg_backend_pids(args.pg_database) if args.pg_database else []
    pg_before = total_cpu(backends)
    redis_pids = redis_server_pids() if args.postgres else []
    redis_before = total_cpu(redis_pids)
    tree_before = total_cpu(gateway_pids)
    before = cpu_seconds(stack.gateway.pid)
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(wrk(stack.gw_url, stack.token, body, args.connections, args.seconds - 2, script))
    )
    t.start()
    t.join()
    after = cpu_seconds(stack.gateway.pid)
    tree_ms = 1000 * (total_cpu(gateway_pids) - tree_before) / result["requests"]
    # Backends the pools opened during the run count from zero.
    backends += [pid for pid in pg_backend_pids(args.pg_database) if pid not in backends] if args.pg_database else []
    pg_ms = 1000 * (total_cpu(backends) - pg_before) / result["requests"]
    user, system = (1000 * (b - a) / result["requests"] for a, b in zip(before, after, strict=True))
    if spy:
        spy.wait()
    if len(gateway_pids) > 1:
        print(f"{len(gateway_pids) - 1} worker process(es): CPU of all {tree_ms:.3f} ms/call")
    if backends:
        print(f"PostgreSQL backends ({len(backends)}): CPU {pg_ms:.3f} ms/call")
    if redis_pids:  # the whole server: other users of this Redis count too
        print(f"redis-server: CPU {1000 * (total_cpu(redis_pids) - redis_before) / result['requests']:.3f} ms/call")
    print(
        f"calls/s {result['rps']:.0f}  errors {result['errors']}  p50 {result['p50_us'] / 1000:.2f} ms  "
        f"p99 {result['p99_us'] / 1000:.2f} ms  "
        f"gateway CPU {user + system:.3f} ms/call (user {user:.3f}, system {system:.3f})  "
        f"RSS {rss_before:.0f} MB before, {peak_rss_mb(stack.gateway.pid):.0f} MB peak"
    )
    if spy:
        print(f"profile: {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", default="/tmp/imagerelay-profile.svg")
    parser.add_argument("--format", default="flamegraph")
    parser.add_argument("--no-spy", action="store_true", help="only measure calls/s and CPU per call")
    parser.add_argument(
        "--scenario",
        choices=("small", "4k", "4k-url"),
        default="small",
        help="small images, or 4K answers from bench/fixed_upstream.py (b64_json or url)",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="PostgreSQL + Redis instead of SQLite (as bench/run.py)"
    )
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--workers", type=int, default=1, help="the gateway's worker processes (serve --workers)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imagerelay-profile-"))
    database_url = redis_url = None
    args.pg_database = ""
    if args.postgres:
        database_url, redis_url = fresh_pg_database(args.pg_url), args.redis_url
        args.pg_database = database_url.rsplit("/", 1)[1]
    stack = start_stack(workdir, database_url, redis_url, workers=args.workers)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    small = SMALL
    try:
        with contextlib.ExitStack() as scenario:
            body = small
            if args.scenario != "small":
                scenario.enter_context(fixed_answer_channel(stack))
                body = {**BIG, "response_format": "url"} if args.scenario == "4k-url" else BIG
            measure(args, stack, script, body)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
