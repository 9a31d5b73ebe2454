"""Two (or more) checkouts side by side in one run: small-image calls/s at c=64.

    git worktree add /tmp/old <commit> && cp -r bench /tmp/old/ && ln -s $PWD/.venv /tmp/old/.venv
    .venv/bin/python bench/compare.py /tmp/old .          # the first is the baseline

Starts one simulator and one gateway (SQLite, one worker) per checkout, all at once,
each gateway running its own checkout's code, then drives them with wrk in turns:
``--rounds`` bursts of ``--seconds`` each, the checkouts alternating within every
round. On a shared machine whose speed drifts by +-20% within minutes, alternating
short bursts puts every checkout through the same drift, so the ratio of their
medians holds where two runs minutes apart do not. Prints, per checkout, the median
calls/s (and every burst), the gateway's median CPU per call (every thread) and write
system calls per call (socket writes and SQLite's WAL writes, from /proc/PID/io), and the
ratio of its median calls/s to the baseline's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile import cpu_seconds  # noqa: E402

from run import SMALL, WRK_SCRIPT, Stack, start_stack, wrk  # noqa: E402


def write_syscalls(pid: int) -> int:
    """Write-like system calls the process made so far (``syscw`` of /proc/PID/io:
    socket writes and SQLite's WAL ``pwrite``s alike)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkouts", nargs="+", help="directories holding imagerelay/; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    script = Path(tempfile.mkdtemp(prefix="imagerelay-compare-")) / "post.lua"
    script.write_text(WRK_SCRIPT)
    here = Path.cwd()
    stacks: list[Stack] = []
    try:
        for checkout in args.checkouts:
            os.chdir(checkout)  # `python -m imagerelay` runs the code of the working directory
            stacks.append(start_stack(Path(tempfile.mkdtemp(prefix="imagerelay-compare-")), None))
        os.chdir(here)
        for stack in stacks:  # warm: pools, caches, first-call paths
            wrk(stack.gw_url, stack.token, SMALL, args.connections, 2, script)
        rates: list[list[float]] = [[] for _ in stacks]
        cpu_ms: list[list[float]] = [[] for _ in stacks]
        writes: list[list[float]] = [[] for _ in stacks]
        errors = [0 for _ in stacks]
        for _ in range(args.rounds):
            for i, stack in enumerate(stacks):
                before = sum(cpu_seconds(stack.gateway.pid))
                writes_before = write_syscalls(stack.gateway.pid)
                result = wrk(stack.gw_url, stack.token, SMALL, args.connections, args.seconds, script)
                rates[i].append(result["rps"])
                cpu_ms[i].append(1000 * (sum(cpu_seconds(stack.gateway.pid)) - before) / result["requests"])
                writes[i].append((write_syscalls(stack.gateway.pid) - writes_before) / result["requests"])
                errors[i] += result["errors"]
    finally:
        os.chdir(here)
        for stack in stacks:
            stack.stop()
    base = statistics.median(rates[0])
    print(f"small image, c={args.connections}, {args.rounds} rounds of {args.seconds:g} s, checkouts alternating")
    for checkout, rate, cpu, wr, err in zip(args.checkouts, rates, cpu_ms, writes, errors, strict=True):
        print(
            f"{checkout}: calls/s median {statistics.median(rate):.0f} ({' '.join(f'{r:.0f}' for r in rate)}), "
            f"gateway CPU {statistics.median(cpu):.3f} ms/call, write syscalls {statistics.median(wr):.1f}/call, "
            f"errors {err}, "
            f"ratio to the baseline {statistics.median(rate) / base:.3f}"
        )


if __name__ == "__main__":
    main()
