"""Minimal forward proxies on loopback, as an operator's egress proxy would see a
gateway's upstream calls: HTTP (``CONNECT host:port`` tunnels and absolute-form
requests such as ``POST http://host:port/path``) and SOCKS5 (no authentication,
``CONNECT`` only, RFC 1928).

Hand-rolled (~90 lines) rather than a proxy package: the tests need only to know the
call went through a proxy and which targets it was asked for, and a dependency that
runs its own process and plugins would be harder to start, stop and observe.
Plain-HTTP forwarding handles one request per connection (it answers with
``Connection: close`` semantics by closing after the upstream does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def forward_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """Yields the proxy's URL and the list of targets it was asked for (``CONNECT
    host:port`` or the absolute URL of a forwarded request)."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        first, _, rest = head.partition(b"\r\n")
        method, target, version = first.decode("latin-1").split(" ", 2)
        seen.append(f"{method} {target}")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1") + rest)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()


@contextlib.asynccontextmanager
async def socks5_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """Yields ``socks5://127.0.0.1:port`` and the list of ``host:port`` it connected to."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _version, methods = await reader.readexactly(2)
            await reader.readexactly(methods)
            writer.write(b"\x05\x00")  # no authentication
            _v, _cmd, _rsv, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = ".".join(str(b) for b in await reader.readexactly(4))
            elif atyp == 3:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            else:
                writer.close()
                return
            port = int.from_bytes(await reader.readexactly(2), "big")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        seen.append(f"{host}:{port}")
        up_reader, up_writer = await asyncio.open_connection(host, port)
        writer.write(b"\x05\x00\x00\x01" + bytes(4) + bytes(2))
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"socks5://127.0.0.1:{port}", seen
    finally:
        server.close()
