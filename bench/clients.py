"""Which async HTTP client carries upstream calls: CPU per call and memory with 4K answers.

    .venv/bin/python bench/clients.py            # aiohttp and httpx against the simulator

Starts the upstream simulator (openai protocol, cached images) in a subprocess, then
in this process makes the same generation calls through each client (one pooled
session each, as the connectors do) and reports the process CPU time per call for
small answers at concurrency 1 and 16, and the peak of Python allocations
(tracemalloc) while reading 4K incompressible answers at concurrency 4. Correctness is
checked on every answer (status 200, the JSON parses, the image is there).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson

KEY = "sk-bench-clients"
SMALL = {"model": "gpt-image-2", "prompt": "bench", "size": "1024x1024", "quality": "low"}
BIG = {"model": "gpt-image-2", "prompt": "noise", "size": "3840x2160", "quality": "low"}
Post = Callable[[dict[str, object]], Awaitable[bytes]]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(body: bytes) -> None:
    parsed = orjson.loads(body)
    assert parsed["data"][0]["b64_json"], "no image in the answer"


async def _measure(post: Post, body: dict[str, object], calls: int, concurrency: int) -> float:
    """CPU milliseconds of this process per call."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            _check(await post(body))

    await asyncio.gather(*(one() for _ in range(5)))  # warm the pool
    cpu = time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    return (time.process_time() - cpu) * 1000 / calls


async def _peak_mb(post: Post, calls: int) -> float:
    tracemalloc.start()
    sem = asyncio.Semaphore(4)

    async def one() -> None:
        async with sem:
            _check(await post(BIG))

    await asyncio.gather(*(one() for _ in range(calls)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6


async def run(base: str, calls: int) -> list[tuple[str, float, float, float]]:
    url = base + "/v1/images/generations"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    rows = []

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def post_aiohttp(body: dict[str, object]) -> bytes:
        async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
            assert r.status == 200, r.status
            return await r.read()

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=120)

    async def post_httpx(body: dict[str, object]) -> bytes:
        r = await client.post(url, content=orjson.dumps(body), headers=headers)
        assert r.status_code == 200, r.status_code
        return r.content

    clients = (("aiohttp", post_aiohttp), ("httpx", post_httpx))
    small = {
        name: (await _measure(post, SMALL, calls, 1), await _measure(post, SMALL, calls, 16)) for name, post in clients
    }
    httpx.post(base + "/_sim/config", json={"incompressible": True})
    for name, post in clients:
        rows.append((name, *small[name], await _peak_mb(post, 8)))
    await session.close()
    await client.aclose()
    return rows


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    port = _port()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imagerelay",
            "simulate-upstream",
            "--protocol",
            "openai",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--cache",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/_sim/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.1)
        rows = asyncio.run(run(base, calls))
    finally:
        sim.terminate()
        sim.wait(10)
    print("| client | CPU per small call, c=1 | CPU per small call, c=16 | peak Python memory, 8 x 4K answers at c=4 |")
    print("| --- | --- | --- | --- |")
    for name, c1, c16, peak in rows:
        print(f"| {name} | {c1:.3f} ms | {c16:.3f} ms | {peak:.0f} MB |")


if __name__ == "__main__":
    main()
