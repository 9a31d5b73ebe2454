"""Which async HTTP client carries upstream calls: CPU per call and memory with 4K answers.

    .venv/bin/python bench/clients.py [calls]     # pyreqwest (if installed), aiohttp and httpx against the simulator

Starts the upstream simulator (openai protocol, cached images) in a subprocess, then,
for each client in a fresh process of its own (uvloop, as the gateway runs), makes the
same generation calls through one pooled client (as the connectors do) and reports the
process's CPU time per call (every thread: a client that parses on threads of its own
pays for them here) for small answers at concurrency 1 and 16, then the process's peak
RSS after reading 8 incompressible 4K answers at concurrency 4 (RSS, not tracemalloc:
a Rust client's buffers are not Python allocations). Correctness is checked on every
answer (status 200, the JSON parses, the image is there). The figures that chose the
gateway's client are in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson

KEY = "sk-bench-clients"
SMALL: dict[str, object] = {"model": "gpt-image-2", "prompt": "bench", "size": "1024x1024", "quality": "low"}
BIG: dict[str, object] = {"model": "gpt-image-2", "prompt": "noise", "size": "3840x2160", "quality": "low"}
CLIENTS = ("pyreqwest", "aiohttp", "httpx")
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


async def _client(name: str, url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if name == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        client = ClientBuilder().max_connections(100).build()

        async def post_pyreqwest(body: dict[str, object]) -> bytes:
            request = client.post(url).headers(headers).body_bytes(orjson.dumps(body)).build_streamed()
            async with request as r:
                assert r.status == 200, r.status
                return bytes(await r.body_reader.bytes())

        return post_pyreqwest, client.close
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

        async def post_aiohttp(body: dict[str, object]) -> bytes:
            async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
                assert r.status == 200, r.status
                return await r.read()

        return post_aiohttp, session.close
    client_httpx = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=120)

    async def post_httpx(body: dict[str, object]) -> bytes:
        r = await client_httpx.post(url, content=orjson.dumps(body), headers=headers)
        assert r.status_code == 200, r.status_code
        return r.content

    return post_httpx, client_httpx.aclose


async def one_client(name: str, base: str, calls: int) -> str:
    post, close = await _client(name, base + "/v1/images/generations")
    c1 = await _measure(post, SMALL, calls, 1)
    c16 = await _measure(post, SMALL, calls, 16)
    httpx.post(base + "/_sim/config", json={"incompressible": True})
    sem = asyncio.Semaphore(4)

    async def big() -> None:
        async with sem:
            _check(await post(BIG))

    await asyncio.gather(*(big() for _ in range(8)))
    await close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"| {name} | {c1:.3f} ms | {c16:.3f} ms | {peak_mb:.0f} MB |"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        import uvloop

        print(uvloop.run(one_client(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    port = _port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "imagerelay", "simulate-upstream", "--protocol", "openai"]
        + ["--port", str(port), "--api-key", KEY, "--cache"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/_sim/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.1)
        for name in CLIENTS:
            if importlib.util.find_spec(name) is None:
                rows.append(f"| {name} | not installed (`.venv/bin/pip install {name}`) | | |")
                continue
            httpx.post(base + "/_sim/config", json={"incompressible": False})
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, base, str(calls)], capture_output=True, text=True, check=True
            )
            rows.append(out.stdout.strip().splitlines()[-1])
    finally:
        sim.terminate()
        sim.wait(10)
    print("| client | CPU per small call, c=1 | CPU per small call, c=16 | peak RSS after 8 x 4K answers at c=4 |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
