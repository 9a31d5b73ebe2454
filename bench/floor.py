"""The floor of the stack: what uvicorn + Starlette + aiohttp cost with no gateway logic.

    .venv/bin/python bench/floor.py [--seconds 8]

Runs a 15-line pass-through app (read the JSON body, POST it upstream over a pooled
aiohttp session, return the upstream's bytes) in front of the same zero-latency
simulator that bench/run.py uses, and drives it with wrk at concurrency 1 and 64.
Whatever imagerelay adds beyond these figures is its own logic (auth, validation,
holds, settle, usage records); what this floor costs is the price of the libraries.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PY, SIM_KEY, WRK_SCRIPT, free_ports, wait_http, wrk  # noqa: E402

APP = """
import aiohttp, os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ["FLOOR_UPSTREAM"]
session = None

async def passthrough(request):
    global session
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    body = await request.body()
    async with session.post(UPSTREAM, data=body, headers={"Authorization": "Bearer " + os.environ["FLOOR_KEY"],
                                                         "Content-Type": "application/json"}) as resp:
        raw = await resp.read()
    return Response(raw, media_type="application/json")

async def health(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/v1/images/generations", passthrough, methods=["POST"]), Route("/healthz", health)])
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagerelay-floor-"))
    (work / "floor_app.py").write_text(APP)
    (work / "post.lua").write_text(WRK_SCRIPT)
    sim_port, app_port = free_ports(2)
    sim = subprocess.Popen(
        [
            PY,
            "-m",
            "imagerelay",
            "simulate-upstream",
            "--protocol",
            "openai",
            "--port",
            str(sim_port),
            "--api-key",
            SIM_KEY,
            "--cache",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "FLOOR_UPSTREAM": f"http://127.0.0.1:{sim_port}/v1/images/generations",
        "FLOOR_KEY": SIM_KEY,
        "PYTHONPATH": str(work),
    }
    cmd = [PY, "-m", "uvicorn", "floor_app:app", "--port", str(app_port), "--no-access-log", "--log-level", "warning"]
    app = subprocess.Popen(cmd, env=env, cwd=work)
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/health", sim, "simulator")
        wait_http(f"http://127.0.0.1:{app_port}/healthz", app, "floor app")
        small = {"model": "gpt-image-2", "prompt": "bench", "size": "1024x1024", "quality": "low"}
        for conns in (1, 64):
            d = wrk(f"http://127.0.0.1:{sim_port}/v1", SIM_KEY, small, conns, args.seconds, work / "post.lua")
            f = wrk(f"http://127.0.0.1:{app_port}/v1", SIM_KEY, small, conns, args.seconds, work / "post.lua")
            print(
                f"c={conns}: direct p50 {d['p50_us'] / 1000:.2f} ms, {d['rps']:.0f} calls/s | "
                f"pass-through p50 {f['p50_us'] / 1000:.2f} ms (+{(f['p50_us'] - d['p50_us']) / 1000:.2f}), "
                f"{f['rps']:.0f} calls/s ({f['rps'] / d['rps']:.2f}x of direct), errors {f['errors']}"
            )
    finally:
        for proc in (app, sim):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
