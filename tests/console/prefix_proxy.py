"""A reverse proxy that serves the gateway under a path prefix, as nginx's
``location /relay/ { proxy_pass http://gateway/; }`` does: it strips the prefix and
streams both ways (so SSE and long answers pass as they are produced)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.support.servers import run_asgi

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"host"}


def prefix_proxy_app(target: str, prefix: str) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        path: str = scope["path"]
        if path != prefix and not path.startswith(prefix + "/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"outside the prefix"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = (path[len(prefix) :] or "/") + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        async with httpx.AsyncClient(base_url=target, timeout=None) as client:
            request = client.build_request(scope["method"], url, headers=headers, content=body)
            response = await client.send(request, stream=True)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()

    return app


@contextmanager
def prefix_proxy(target: str, prefix: str) -> Iterator[str]:
    """Yields the proxy's base URL; the gateway is at ``<base><prefix>/``."""
    with run_asgi(prefix_proxy_app(target, prefix)) as url:
        yield url
