"""Load generator for the scenarios wrk cannot drive (multipart uploads, SSE timing).

Runs in its own process (started by bench/run.py) and prints one JSON object.

    python bench/loadgen.py edit   URL TOKEN N SIZE_MB FILES
    python bench/loadgen.py stream URL TOKEN N
    python bench/loadgen.py calls  URL TOKEN N CONCURRENCY JSON_BODY
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import statistics
import sys
import time

import httpx


def noise_png(target_mb: float, seed: int) -> bytes:
    """An incompressible PNG of about ``target_mb`` megabytes (stored, not deflated)."""
    from PIL import Image

    side = int((target_mb * 1024 * 1024 / 3) ** 0.5)
    raw = random.Random(seed).randbytes(side * side * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), raw).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def edit(url: str, token: str, n: int, size_mb: float, files: int) -> dict[str, object]:
    images = [noise_png(size_mb, i) for i in range(files)]
    latencies: list[float] = []
    errors = 0
    with httpx.Client(timeout=300) as client:
        for _ in range(n):
            parts = [("image[]", (f"in{i}.png", data, "image/png")) for i, data in enumerate(images)]
            t0 = time.perf_counter()
            resp = client.post(
                url + "/images/edits",
                headers={"Authorization": f"Bearer {token}"},
                data={"model": "gpt-image-2", "prompt": "bench edit", "size": "1024x1024", "quality": "low"},
                files=parts,
            )
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += resp.status_code != 200
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 99),
        "n": n,
        "errors": errors,
        "upload_mb": round(sum(map(len, images)) / 1e6, 1),
    }


def stream(url: str, token: str, n: int) -> dict[str, object]:
    firsts: list[float] = []
    errors = 0
    body = {
        "model": "gpt-image-2",
        "prompt": "bench stream",
        "size": "1024x1024",
        "quality": "low",
        "stream": True,
        "partial_images": 3,
    }
    with httpx.Client(timeout=120) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            first = None
            partials = 0
            with client.stream(
                "POST", url + "/images/generations", json=body, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                if resp.status_code != 200:
                    errors += 1
                    continue
                for line in resp.iter_lines():
                    if line.startswith("data:") and "partial_image" in line[:200]:
                        partials += 1
                        if first is None:
                            first = (time.perf_counter() - t0) * 1000
            if first is None or partials != 3:
                errors += 1
            else:
                firsts.append(first)
    return {"ttfp_p50_ms": statistics.median(firsts) if firsts else None, "n": n, "errors": errors}


async def calls(url: str, token: str, n: int, concurrency: int, body: dict[str, object]) -> dict[str, object]:
    latencies: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one() -> None:
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                resp = await client.post(
                    url + "/images/generations", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                await resp.aread()
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += resp.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        elapsed = time.perf_counter() - t0
    return {
        "rps": n / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 99),
        "n": n,
        "errors": errors,
    }


def main() -> None:
    mode, url, token = sys.argv[1:4]
    if mode == "edit":
        out = edit(url, token, int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
    elif mode == "stream":
        out = stream(url, token, int(sys.argv[4]))
    elif mode == "calls":
        out = asyncio.run(calls(url, token, int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
