"""An upstream that answers every POST with one pre-encoded body, as fast as it can send it.

    python bench/fixed_upstream.py --port PORT --answer FILE

The simulator renders, base64-encodes and serialises each answer (a 4K image is a
~33 MB JSON body), so it serves only ~10-20 4K calls/s and a benchmark against it
measures the simulator, not the gateway. This server holds the simulator's own
answer (``FILE``, fetched once by ``bench/run.py``) as one ``bytes`` object and
writes it for every request: the request body is read and dropped, so its cost
per call is little more than the kernel's copy. uvicorn + a plain ASGI callable;
``GET`` anything answers ``ok`` (readiness).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import uvicorn


def make_app(answer: bytes) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            while (await receive()).get("more_body"):
                pass
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
    args = parser.parse_args()
    uvicorn.run(make_app(args.answer.read_bytes()), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, loop="uvloop", http="httptools", lifespan="off")


if __name__ == "__main__":
    main()
