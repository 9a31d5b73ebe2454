"""The upstream wire: one aiohttp session per channel, safe requests, bounded answers.

- one session, hence one connection pool of at most ``max_connections``, per channel,
  rebuilt when the channel's connection settings change (:class:`ChannelSessions`);
- the channel's ``proxy`` (``http://``, ``https://``; ``socks5://`` through
  aiohttp-socks), else the ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` environment;
- the channel's ``ca_bundle`` (a PEM file) and ``verify`` switch for private upstreams;
- header values checked and URLs percent-encoded by construction;
- answers read against a cap on their size, declared or (after decompression,
  which aiohttp >= 3.13.3 does in bounded steps) received.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import mmap
import re
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from imagerelay.catalog.model import ChannelSpec

#: Ten 4K images as base64 are ~330 MB: generous, and still a bound.
DEFAULT_MAX_ANSWER_BYTES = 512 * 1024 * 1024
_PREALLOCATE_FROM = 1 << 20  # answers this large go into one buffer sized from content-length
_UNSAFE = re.compile(r"[^\x21-\x7e \t]")  # header text: printable ASCII, space and tab only
SOCKS_SCHEMES = ("socks5://", "socks5h://")


#: Large answers held in memory at once per process: three 4K answers (~33 MB each).
DEFAULT_ANSWER_MEMORY_BYTES = 128 * 1024 * 1024
#: A call waits at most this long for answer memory, then reads anyway: the budget
#: smooths bursts; it must never stall a call on memory that is slow to come back.
ANSWER_MEMORY_MAX_WAIT_S = 5.0


class AnswerMemory:
    """How many bytes of large upstream answers this process holds at once.

    A 4K answer is ~33 MB, held from its first byte until the last byte of the
    client's answer is sent (or, with ``response_format=url``, until it is on disk).
    Eight in flight are ~270 MB on top of the process; a hundred slow clients would
    be 3 GB. Past the budget, a call waits before reading its answer: the answer
    waits in the upstream connection (the kernel's socket buffer, then TCP flow
    control), not in this process. One answer larger than the whole budget is read
    when nothing else is held. A reservation is returned when the answer's buffer
    is freed (a ``weakref.finalize`` on it), so no code path has to remember to.
    Waiters are served in arrival order.
    """

    def __init__(self, limit: int = DEFAULT_ANSWER_MEMORY_BYTES, max_wait_s: float = ANSWER_MEMORY_MAX_WAIT_S) -> None:
        self.limit = limit
        self.max_wait_s = max_wait_s
        self.held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    async def reserve(self, size: int) -> None:
        """Wait (up to ``max_wait_s``) until ``size`` more bytes fit, then count them."""
        if not self._waiters and self._fits(size):
            self.held += size
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        waiter = loop.create_future()
        self._waiters.append(waiter)
        proceeded = False
        try:
            while loop.time() < deadline:
                try:
                    async with asyncio.timeout_at(deadline):
                        await waiter
                except TimeoutError:
                    break  # waited long enough: read anyway (counted, so others still wait)
                if self._fits(size):
                    break
                waiter = loop.create_future()  # woken, but it still does not fit: first in line again
                self._waiters.appendleft(waiter)
            proceeded = True
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif not proceeded and waiter.done() and not waiter.cancelled():
                self._wake()  # cancelled after being woken: pass the turn on
        self.held += size
        self._wake()  # the next in line may fit as well

    def release(self, size: int) -> None:
        self.held -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def track(self, buffer: object, size: int) -> None:
        """Return ``size`` bytes when ``buffer`` is freed."""
        weakref.finalize(buffer, self.release, size)


class AnswerTooLarge(Exception):
    """An upstream answer over the cap (declared or received)."""


class UnsafeValue(ValueError):
    """A value that cannot go on the wire as it is (CR/LF in a header, a broken URL)."""


def tls_setting(channel: ChannelSpec) -> ssl.SSLContext | bool:
    """``False`` with verification off, a context trusting the channel's CA bundle, or
    ``True`` for the system's trust store."""
    if not channel.verify:
        return False
    if channel.ca_bundle:
        return ssl.create_default_context(cafile=channel.ca_bundle)
    return True


def default_client(channel: ChannelSpec) -> aiohttp.ClientSession:
    tls = tls_setting(channel)
    proxy = channel.proxy
    connector: aiohttp.BaseConnector
    if proxy and proxy.lower().startswith(SOCKS_SCHEMES):
        from aiohttp_socks import ProxyConnector

        connector = ProxyConnector.from_url(proxy, limit=channel.max_connections, keepalive_timeout=60, ssl=tls)
        proxy = None
    else:
        connector = aiohttp.TCPConnector(
            limit=channel.max_connections, keepalive_timeout=60, ssl=tls, ttl_dns_cache=300
        )
    proxy_auth = None
    if channel.proxy is None:
        proxy, proxy_auth = env_proxy(channel)
    return aiohttp.ClientSession(
        connector=connector,
        # A plain call is bounded as a whole by the pool (``ChannelPool._answer``: the
        # channel's timeout or what is left of the call's deadline, whichever is less),
        # so aiohttp sets no timer of its own for it: a second total timeout per request
        # was a timer scheduled and cancelled for nothing (~10 us of CPU per call,
        # 122 -> 110 us for aiohttp alone at c=64). A per-read timeout is worse still:
        # rescheduled on every chunk received (130 times for a 4K answer). A stream may
        # last longer than the channel's timeout as long as events flow, so it gets a
        # per-read timeout of its own (stream_timeout).
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout(channel)),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        # An upstream's cookies have no business in the next call (another caller's):
        # and a jar is filtered per request and updated per answer for nothing.
        cookie_jar=aiohttp.DummyCookieJar(),
        proxy=proxy,
        proxy_auth=proxy_auth,
        trust_env=False,
    )


def session_key(channel: ChannelSpec) -> tuple[object, ...]:
    """Everything of a channel that shapes its session (see :func:`default_client`)."""
    return (channel.max_connections, channel.proxy, channel.ca_bundle, channel.verify, channel.timeout_s)


@dataclass(eq=False)
class _Session:
    key: tuple[object, ...]
    client: aiohttp.ClientSession
    users: int = 0
    retired: bool = False


class ChannelSessions:
    """The current session of each channel, by name. When a channel's connection
    settings change (admin API, CLI, console) the next call builds a new session; the
    old one is closed once the calls still using it have finished (closing it at once
    would cut them), so its connections and pool do not linger until a restart."""

    def __init__(self, factory: Callable[[ChannelSpec], aiohttp.ClientSession]) -> None:
        self._factory = factory
        self._current: dict[str, _Session] = {}
        self._retired: set[_Session] = set()

    def lease(self, channel: ChannelSpec) -> _Lease:
        """``async with sessions.lease(channel) as session``: the channel's current session."""
        return _Lease(self, channel)

    async def _take(self, channel: ChannelSpec) -> _Session:
        key = session_key(channel)
        session = self._current.get(channel.name)
        if session is None or session.key != key:
            if session is not None:
                session.retired = True
                if session.users:
                    self._retired.add(session)
                else:
                    await session.client.close()
            session = self._current[channel.name] = _Session(key, self._factory(channel))
        session.users += 1
        return session

    async def _give_back(self, session: _Session) -> None:
        session.users -= 1
        if session.retired and session.users == 0:
            self._retired.discard(session)
            await asyncio.shield(session.client.close())  # even if this call is being cancelled

    async def aclose(self) -> None:
        for session in [*self._current.values(), *self._retired]:
            await session.client.close()
        self._current.clear()
        self._retired.clear()


class _Lease:
    """One call's use of a channel's session. A class, not ``asynccontextmanager``: it
    is entered on every upstream call, and a generator-based one is ~10 Python calls."""

    __slots__ = ("_sessions", "_channel", "_session")

    def __init__(self, sessions: ChannelSessions, channel: ChannelSpec) -> None:
        self._sessions = sessions
        self._channel = channel
        self._session: _Session | None = None

    async def __aenter__(self) -> aiohttp.ClientSession:
        self._session = await self._sessions._take(self._channel)  # noqa: SLF001 - its own helper
        return self._session.client

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._sessions._give_back(self._session)  # noqa: SLF001


def connect_timeout(channel: ChannelSpec) -> float:
    return min(10.0, channel.timeout_s)


def stream_timeout(channel: ChannelSpec) -> aiohttp.ClientTimeout:
    """A stream's phases: after its first event only this bounds a silent upstream."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout(channel), sock_read=channel.timeout_s)


def env_proxy(channel: ChannelSpec) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and ~/.netrc) give the channel's
    host, as for the official SDK, read once when its session is made: aiohttp's
    ``trust_env`` reads the environment and the netrc file again on every request,
    which was 8.7% of the gateway's CPU at c=64 (py-spy). A channel's host never
    changes, and neither does the process's environment."""
    if not channel.base_url:
        return None, None
    try:
        proxy, auth = get_env_proxy_for_url(URL(channel.base_url))
    except LookupError:  # no proxy for this host (none set, or NO_PROXY names it)
        return None, None
    return str(proxy), auth


def safe_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` if every name and value can be sent as it is; :class:`UnsafeValue` otherwise."""
    for name, value in headers.items():
        if not _header_ok(name, value):
            raise UnsafeValue(f"header {name.strip()[:40]!r} holds characters a header cannot carry")
    return headers


@functools.lru_cache(maxsize=1024)
def _header_ok(name: str, value: str) -> bool:
    # A channel sends the same few headers on every call: checked once each.
    return not (_UNSAFE.search(name) or _UNSAFE.search(value) or " " in name)


@functools.lru_cache(maxsize=1024)
def safe_url(url: str) -> URL:
    """``url`` percent-encoded (existing %XX escapes kept); control characters refused.

    Memoised: a channel calls the same one or two URLs every time, and parsing one
    with yarl is ~10 us a call (a ``URL`` is immutable; an :class:`UnsafeValue` is
    raised again each time, not cached)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeValue("the upstream URL holds control characters")
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise UnsafeValue(f"the upstream URL is malformed ({type(exc).__name__})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnsafeValue("the upstream URL is not http(s) with a host")
    return parsed


def answer_buffer(length: int) -> mmap.mmap:
    """A writable buffer of ``length`` bytes for one large answer, without a memset.

    ``bytearray(length)`` zero-fills 33 MB for a 4K answer only for the copy to write
    it again, and then faults it in 4 KB at a time (with the mmap threshold pinned,
    every answer gets fresh pages): a fifth of a 4K call's CPU (py-spy, perf). An
    anonymous mapping is zero pages the kernel fills on first write, and asking for
    huge pages (where transparent huge pages are ``madvise``d or ``always``) makes that
    ~17 faults instead of ~8,000. It is unmapped when the last view of it goes.
    """
    buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE)  # anonymous; private, not shmem
    with contextlib.suppress(AttributeError, OSError):  # no THP on this kernel/platform
        buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


async def read_capped(resp: aiohttp.ClientResponse, cap: int, memory: AnswerMemory | None = None) -> bytes | mmap.mmap:
    """The (decoded) body, refused with :class:`AnswerTooLarge` once over ``cap`` bytes.

    An uncompressed answer of known length goes into one buffer of that size
    (:func:`answer_buffer`; a 4K image is ~33 MB: no chunk list then join holding two
    copies), but only after the length was checked against the cap: a declared length
    is a claim, not a budget; it is then reserved in ``memory`` (waiting for room, see
    :class:`AnswerMemory`) and returned when the buffer is freed. Chunks are taken one by one as the connection delivered
    them (``iter_chunks``): ``iter_any`` joins whatever is buffered into a new bytes
    first, one more copy of the answer.
    """
    length = resp.content_length
    if length is not None and length > cap:
        raise AnswerTooLarge(f"answer declares {length} bytes, over the {cap}-byte limit")
    encoded = resp.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
    if length is not None and length >= _PREALLOCATE_FROM and not encoded:
        if memory is not None:
            await memory.reserve(length)
            try:
                buf = answer_buffer(length)
            except BaseException:
                memory.release(length)
                raise
            memory.track(buf, length)
        else:
            buf = answer_buffer(length)
        offset = 0
        async for chunk, _ in resp.content.iter_chunks():
            end = offset + len(chunk)
            if end > length:
                raise aiohttp.ClientPayloadError("body longer than its content-length")
            buf[offset:end] = chunk
            offset = end
        if offset != length:
            raise aiohttp.ClientPayloadError("body shorter than its content-length")
        return buf
    chunks: list[bytes] = []
    size = 0
    async for chunk, _ in resp.content.iter_chunks():
        size += len(chunk)
        if size > cap:
            raise AnswerTooLarge(f"answer over the {cap}-byte limit")
        chunks.append(chunk)
    # One chunk (most small answers) is the answer as it is; several are copied once.
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
