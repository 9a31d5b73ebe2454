"""Instructions per call: the gateway's CPU work counted exactly, under callgrind.

    .venv/bin/python bench/instructions.py [--calls 200] [--concurrency 8]
    cd /path/to/other/checkout && /work/main/.venv/bin/python bench/instructions.py   # another commit

Why: wall-clock and CPU-time figures on a shared 2-core VM move by +-20% from run to
run (bench/profile.py: 484-652 calls/s for one commit within minutes), so a change
worth 2% cannot be seen with them. Instruction counts under valgrind's callgrind are
the same to within ~0.5% between runs of one commit, so two commits (or a change and
its parent) compare exactly. What they do not see: kernel time (system calls, page
faults) and cache misses, so a change that moves work between user and kernel space,
or copies memory differently, still needs bench/profile.py on a quiet machine.

Starts the simulator and the gateway like bench/run.py (SQLite, small images), the
gateway under ``valgrind --tool=callgrind``; warms it with 20 calls, zeroes the counters
(``callgrind_control -z``), makes ``--calls`` calls at ``--concurrency`` through httpx,
dumps the counters (``-d``) and prints the instructions per call, with the share spent
in the Python interpreter's eval loop and in memcpy (copies of the answer). The whole
process is counted: every thread, the event loop and SQLite alike. Needs valgrind
(Debian: ``apt-get install valgrind``); the gateway runs ~50x slower under it, so the
default 200 calls take about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import run  # noqa: E402


async def _calls(stack: Any, n: int, concurrency: int) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                r = await client.post(
                    stack.gw_url + "/images/generations",
                    json=run.SMALL,
                    headers={"Authorization": f"Bearer {stack.token}"},
                )
                if r.status_code != 200:
                    raise SystemExit(f"call failed: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one() for _ in range(n)))


def _functions(dump: Path) -> dict[str, int]:
    """Instructions spent in a few functions worth naming: their own, not their callees."""
    annotate = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(dump)], capture_output=True, text=True, check=True
    ).stdout
    wanted = {"_PyEval_EvalFrameDefault'2": "eval loop", "__memcpy_avx_unaligned_erms": "memcpy"}
    found: dict[str, int] = {}
    for line in annotate.splitlines():
        m = re.match(r"\s*([\d,]+) \(", line)
        if not m:
            continue
        for needle, label in wanted.items():
            if re.search(rf":{re.escape(needle)}( |$)", line) and label not in found:
                found[label] = int(m.group(1).replace(",", ""))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="imagerelay-instructions-"))
    out = workdir / "callgrind.out"
    stack = run.start_stack(
        workdir,
        None,
        gateway_prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        start_timeout_s=600,  # the gateway starts ~50x slower under valgrind
    )
    try:
        asyncio.run(_calls(stack, 20, args.concurrency))  # warm: pools, caches, first-call paths
        pid = str(stack.gateway.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        asyncio.run(_calls(stack, args.calls, args.concurrency))
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    finally:
        stack.stop()
    dump = Path(f"{out}.1")
    total = next(int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("summary:"))
    per_call = total / args.calls
    parts = ", ".join(f"{label} {count / total:.0%}" for label, count in _functions(dump).items())
    print(f"{per_call / 1e6:.3f} M instructions per call ({args.calls} small calls at c={args.concurrency}; {parts})")
    print(f"callgrind dump: {dump} (callgrind_annotate it for the functions)")


if __name__ == "__main__":
    main()
