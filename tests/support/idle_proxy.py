"""A reverse-proxy stand-in that cuts responses silent for too long (like Cloudflare's 524).

It forwards TCP bytes both ways between a client and the gateway. If the gateway
sends nothing for ``idle_s`` seconds while a request is pending, the proxy answers
``524`` itself when no response byte has gone out yet, or drops the connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

_BODY = b"upstream timeout"
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 524 A Timeout Occurred\r\ncontent-type: text/plain\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)


async def _pipe_client_to_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with suppress(OSError, RuntimeError):
            writer.write_eof()


async def _handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, port: int, idle_s: float) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    upstream = asyncio.create_task(_pipe_client_to_server(client_r, server_w))
    sent_any = False
    try:
        while True:
            try:
                data = await asyncio.wait_for(server_r.read(65536), timeout=idle_s)
            except TimeoutError:
                if not sent_any:
                    client_w.write(TIMEOUT_RESPONSE)
                    await client_w.drain()
                break
            if not data:
                break
            sent_any = True
            client_w.write(data)
            await client_w.drain()
    except ConnectionError:
        pass
    finally:
        upstream.cancel()
        server_w.close()
        client_w.close()


@contextmanager
def idle_proxy(target_port: int, idle_s: float) -> Iterator[str]:
    """Run the proxy in a background thread; yields its base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["stop"] = stop
        server = await asyncio.start_server(lambda r, w: _handle(r, w, target_port, idle_s), "127.0.0.1", 0)
        holder["port"] = server.sockets[0].getsockname()[1]
        started.set()
        await stop.wait()
        server.close()
        # Let open connections end (their readers see EOF) before the loop closes.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{holder['port']}"
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(5)
        loop.close()
