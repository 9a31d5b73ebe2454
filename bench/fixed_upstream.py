"""An upstream that answers every POST with one pre-encoded body, as fast as it can send it.

    python bench/fixed_upstream.py --port PORT --answer FILE [--latency SECONDS]

The simulator renders, base64-encodes and serialises each answer (a 4K image is a
~33 MB JSON body), so it serves only ~10-20 4K calls/s and a benchmark against it
measures the simulator, not the gateway. This server holds the simulator's own
answer (``FILE``, fetched once by ``bench/run.py``) as one ``bytes`` object and
writes it for every request: the request body is read and dropped, so its cost
per call is little more than the kernel's copy. uvicorn + a plain ASGI callable;
``GET`` anything answers ``ok`` (readiness).

``--latency`` holds every answer that long (one ``asyncio.sleep`` per call, nothing
else): the long-call bench's upstream. The simulator with a 30 s latency could not
answer 5,000 calls at once on time (its own added p99 was ~6 s), so it measured itself.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
from pathlib import Path
from typing import Any

import uvicorn


def make_app(answer: bytes, latency_s: float = 0.0) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            while (await receive()).get("more_body"):
                pass
            if latency_s > 0:
                await asyncio.sleep(latency_s)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", type=Path, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to hold every answer")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # thousands of calls at once
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvicorn.run(
        make_app(args.answer.read_bytes(), args.latency),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        backlog=8192,
        timeout_keep_alive=120,
    )


if __name__ == "__main__":
    main()
