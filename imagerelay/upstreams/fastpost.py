"""Keep-alive HTTP/1.1 POSTs of small JSON bodies, for the generations hot path.

Why not aiohttp here: measured in-process on this project's benchmark machine, one
aiohttp request/response for a 240 KB answer costs ~300 µs of CPU (request and
response objects, a writer task, header multidicts, stream readers); the same
exchange over an asyncio protocol with httptools' C parser costs ~95 µs. At
concurrency 1 that difference is a fifth of what the gateway adds to a call.

What is hand-rolled is only the connection pool and the request line: parsing is
httptools (the parser uvicorn uses), TLS is the standard ``ssl`` module. It handles
exactly what an image upstream sends back: a status, headers and a body framed by
Content-Length or chunked, optionally gzip/deflate-encoded. Everything else (SSE
streams, multipart uploads) stays on aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

_IDLE_S = 55.0  # drop pooled connections idle this long (servers commonly allow 60 s)


class UpstreamClosed(ConnectionError):
    """The connection closed before a whole answer arrived."""

    def __init__(self, message: str, *, before_any_byte: bool, clean: bool) -> None:
        super().__init__(message)
        self.before_any_byte = before_any_byte
        self.clean = clean  # closed with FIN (an idle timeout), not reset


class BadHttp(ConnectionError):
    """The upstream's bytes are not an HTTP/1.1 response."""


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes | bytearray


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.closed = False
        self._waiter: asyncio.Future[Answer] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._name = b""
        self._chunks: list[bytes] = []
        self._body: bytearray | None = None
        self._filled = 0
        self._got_bytes = False
        self.keep_alive = True

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadHttp(f"unparseable answer: {type(exc).__name__}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamClosed("connection closed before the answer was complete",
                                  before_any_byte=not self._got_bytes, clean=exc is None))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) >= (1 << 20):
            # Large answers (a 4K image is ~33 MB) go straight into one buffer: no
            # chunk list and join, which would hold two copies at once.
            self._body = bytearray(int(length))

    def on_body(self, body: bytes) -> None:
        if self._body is not None and self._filled + len(body) <= len(self._body):
            self._body[self._filled:self._filled + len(body)] = body
            self._filled += len(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        if self._body is not None and not self._chunks and self._filled == len(self._body):
            body: bytes | bytearray = self._body
        else:
            head = [bytes(self._body[:self._filled])] if self._body is not None else []
            body = b"".join(head + self._chunks)
        answer = Answer(self._parser.get_status_code(), self._headers, body)
        # A pooled connection must not keep its last answer alive: a 4K image is 33 MB.
        self._body, self._chunks, self._headers = None, [], {}
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # -- use
    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._headers, self._chunks, self._body, self._filled = {}, [], None, 0
        self._got_bytes = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastPostPool:
    """Pooled keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, base_url: str, *, max_connections: int, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = (parts.scheme == "https" and self._port == 443) or (parts.scheme == "http" and self._port == 80)
        host_header = self._host if default_port else f"{self._host}:{self._port}"
        if ":" in self._host and not default_port:  # IPv6 literal
            host_header = f"[{self._host}]:{self._port}"
        self._host_header = host_header.encode() if host_header.isascii() else host_header.encode("idna")
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout_s = connect_timeout_s

    async def post(self, target: str, headers: dict[str, str], body: bytes, *, read_timeout_s: float) -> Answer:
        """POST ``body`` to ``target`` (path and query) and return the whole answer.

        A reused connection that the server closes cleanly before any byte of an answer
        is one it had timed out as we reused it; that is retried once on a new
        connection. A reset is an upstream failure like any other (the pool decides).
        """
        request = self._request(target, headers, body)
        async with self._slots:
            conn, reused = await self._checkout()
            try:
                answer = await self._exchange(conn, request, read_timeout_s)
            except UpstreamClosed as exc:
                if not (reused and exc.before_any_byte and exc.clean):
                    raise
                conn = await self._connect()
                answer = await self._exchange(conn, request, read_timeout_s)
            if conn.keep_alive and not conn.closed:
                conn.idle_since = asyncio.get_running_loop().time()
                self._idle.append(conn)
            else:
                conn.close()
            return answer

    async def _exchange(self, conn: _Connection, request: bytes, read_timeout_s: float) -> Answer:
        waiter = conn.send(request)
        timer = asyncio.get_running_loop().call_later(read_timeout_s, _expire, conn, waiter)
        try:
            return await waiter
        except BaseException:
            conn.close()  # a connection with an unfinished exchange can never be reused
            raise
        finally:
            timer.cancel()

    async def _checkout(self) -> tuple[_Connection, bool]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()  # most recently used: the least likely to be timed out
            if conn.closed or now - conn.idle_since > _IDLE_S:
                conn.close()
                continue
            return conn, True
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _transport, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl,
                                   server_hostname=self._host if self._ssl else None),
            timeout=self._connect_timeout_s,
        )
        return conn

    def _request(self, target: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [b"POST " + target.encode("ascii") + b" HTTP/1.1", b"Host: " + self._host_header]
        for name, value in headers.items():
            if name.lower() in ("host", "content-length", "connection", "transfer-encoding"):
                continue
            lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
        lines.append(b"Accept-Encoding: gzip, deflate")
        lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _expire(conn: _Connection, waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
    conn.close()


def decoded_body(answer: Answer) -> bytes | bytearray:
    """The body without its Content-Encoding (upstreams rarely compress; we accept it)."""
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return answer.body
    if encoding == "gzip":
        return zlib.decompress(answer.body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(answer.body)
        except zlib.error:
            return zlib.decompress(answer.body, -zlib.MAX_WBITS)
    raise BadHttp(f"unsupported content-encoding {encoding!r}")
