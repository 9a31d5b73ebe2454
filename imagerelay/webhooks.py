"""Webhook delivery for finished jobs: signed, pinned, and bounded in time, size and share.

A webhook receiver is chosen by the caller, so it is treated as hostile:

- **Time**: one deadline per delivery (``timeout_s``) covers resolving, connecting,
  sending and the status line. A per-read timeout would let a receiver that sends a
  byte every few seconds hold the delivery forever.
- **Size**: only the status line and headers are read (h11 bounds those to ~100 KiB);
  the reply body is never read, so an endless body costs nothing.
- **Share**: deliveries run concurrently (at most ``concurrency`` per process) and at
  most one per job owner at a time, so a dead or slow receiver delays only its own
  owner's deliveries, never another user's.
- **SSRF**: the host is resolved once, every address checked (:mod:`imagerelay.domain.ssrf`),
  and the connection goes to the checked address with the original Host header and
  TLS name, so a second DNS answer (rebinding) is never used. Redirects are not
  followed: a 3xx is a failed delivery.
- **Replicas**: a due delivery is claimed by moving its ``webhook_next_at`` forward by
  a lease with a conditional UPDATE, so one process delivers it; if that process dies
  mid-delivery the lease runs out and another retries it.

Failures are retried with exponential backoff (``backoff_s`` × 2ⁿ, ``MAX_ATTEMPTS`` in all).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.domain.ssrf import Target, UnsafeUrl, resolve_target
from imagerelay.storage.schema import jobs

log = logging.getLogger("imagerelay.webhooks")

MAX_ATTEMPTS = 6
IDLE_POLL_S = 3.0  # deliveries scheduled by other replicas; this process wakes itself for its own
BATCH = 200
LEASE_MARGIN_S = 30.0


class DeliveryFailed(Exception):
    """A delivery that did not get a 2xx; the message is safe to log (no URL, no body)."""


class PinnedSender:
    """POST to a :class:`Target`'s checked address, under one overall deadline."""

    def __init__(self, *, timeout_s: float, allow_private: bool) -> None:
        self._timeout_s = timeout_s
        self._allow_private = allow_private
        # No pooled connections: each delivery connects to the address it just checked,
        # and a reply whose body is left unread closes its connection anyway.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """Resolve, check and send under one deadline; the receiver's status code.
        Raises :class:`DeliveryFailed` for anything but an answer."""

        async def resolve_and_send() -> int:
            target = await resolve_target(url, allow_private=self._allow_private)
            return await self._send(target, body, headers)

        return await self._bounded(resolve_and_send())

    async def send_to(self, target: Target, body: bytes, headers: dict[str, str]) -> int:
        """Send to an already checked target (its address, never its name resolved again)."""
        return await self._bounded(self._send(target, body, headers))

    async def _bounded(self, work: Awaitable[int]) -> int:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await work
        except TimeoutError:
            raise DeliveryFailed(f"no answer within {self._timeout_s:g} s") from None
        except UnsafeUrl as exc:
            raise DeliveryFailed(f"refused target: {exc}") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(type(exc).__name__) from None

    async def _send(self, target: Target, body: bytes, headers: dict[str, str]) -> int:
        response = await self._http.send(self._request(target, body, headers), stream=True)
        await response.aclose()  # the body is never read
        return response.status_code

    def _request(self, target: Target, body: bytes, headers: dict[str, str]) -> httpx.Request:
        url = httpx.URL(target.url)
        default_port = 443 if target.scheme == "https" else 80
        host = f"[{target.host}]" if ":" in target.host else target.host
        host_header = host if target.port == default_port else f"{host}:{target.port}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        return self._http.build_request(
            "POST",
            url.copy_with(host=target.address),
            content=body,
            headers={**headers, "Host": host_header},
            extensions=extensions,
        )

    async def aclose(self) -> None:
        await self._http.aclose()


class WebhookDispatcher:
    """Schedules, claims and delivers the webhooks of finished jobs."""

    def __init__(
        self,
        engine: AsyncEngine,
        render: Callable[[Any], Awaitable[bytes]],
        *,
        secret: bytes,
        allow_private: bool,
        backoff_s: float,
        timeout_s: float,
        concurrency: int,
    ) -> None:
        self._engine = engine
        self._render = render
        self._secret = secret
        self._allow_private = allow_private
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._sender: PinnedSender | None = None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # job id -> delivery
        self._busy_owners: set[int] = set()

    # -- signing (each user verifies with their own secret) ---------------------------

    def secret_for(self, user_id: int) -> str:
        return "whsec_" + hmac.new(self._secret, f"user:{user_id}".encode(), hashlib.sha256).hexdigest()

    def sign(self, user_id: int, timestamp: int, body: bytes) -> str:
        key = self.secret_for(user_id).encode()
        mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
        return f"t={timestamp},v1={mac}"

    # -- submit time ---------------------------------------------------------------------

    async def check(self, url: str) -> None:
        """Refuse a URL we would not deliver to (raises :class:`UnsafeUrl`), within the
        delivery deadline. Delivery checks again, since DNS answers change."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await resolve_target(url, allow_private=self._allow_private)
        except TimeoutError:
            raise UnsafeUrl(f"host did not resolve within {self._timeout_s:g} s") from None

    async def schedule(self, job_id: str) -> None:
        """Mark a finished job's webhook (if it has one) due now."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.webhook_url.is_not(None), jobs.c.webhook_state.is_(None))
                .values(webhook_state="pending", webhook_next_at=time.time())
            )
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._sender = PinnedSender(timeout_s=self._timeout_s, allow_private=self._allow_private)
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop claiming and cut deliveries short; their leases run out and the next
        start (or another replica) delivers them."""
        tasks = [t for t in (self._loop_task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sender is not None:
            await self._sender.aclose()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                claimed, next_due = await self._claim_due()
            except Exception as exc:  # noqa: BLE001 - keep delivering after a database hiccup
                log.error("webhook claim failed: %s", type(exc).__name__)
                claimed, next_due = 0, None
            if claimed:
                continue  # the owners just claimed are now excluded: look for others at once
            wait = IDLE_POLL_S if next_due is None else min(IDLE_POLL_S, max(0.05, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _claim_due(self) -> tuple[int, float | None]:
        """Start deliveries for due webhooks of owners with none in flight here.
        Returns how many started and when the next known one falls due."""
        now = time.time()
        free = self._concurrency - len(self._in_flight)
        pending = jobs.c.webhook_state == "pending"
        busy = jobs.c.user_id.not_in(list(self._busy_owners)) if self._busy_owners else None
        due_q = select(jobs.c.id, jobs.c.user_id, jobs.c.webhook_next_at).where(pending, jobs.c.webhook_next_at <= now)
        next_q = select(func.min(jobs.c.webhook_next_at)).where(pending, jobs.c.webhook_next_at > now)
        if busy is not None:
            due_q, next_q = due_q.where(busy), next_q.where(busy)
        async with self._engine.connect() as conn:
            due = (await conn.execute(due_q.order_by(jobs.c.webhook_next_at).limit(BATCH))).all() if free > 0 else []
            next_due = (await conn.execute(next_q)).scalar()
        started = 0
        for job_id, user_id, next_at in due:
            if started >= free:
                break
            if user_id in self._busy_owners or job_id in self._in_flight:
                continue
            if not await self._lease(job_id, next_at):
                continue  # another replica claimed it
            self._busy_owners.add(user_id)
            self._in_flight[job_id] = asyncio.create_task(self._deliver(job_id, user_id))
            started += 1
        return started, next_due

    async def _lease(self, job_id: str, next_at: float) -> bool:
        lease_until = time.time() + self._timeout_s + LEASE_MARGIN_S
        async with self._engine.begin() as conn:
            res = await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.webhook_state == "pending", jobs.c.webhook_next_at == next_at)
                .values(webhook_next_at=lease_until)
            )
        return res.rowcount == 1

    async def _deliver(self, job_id: str, user_id: int) -> None:
        try:
            await self._deliver_once(job_id)
        except Exception as exc:  # noqa: BLE001 - the lease runs out and it is retried
            log.error("webhook delivery for %s: %s", job_id, type(exc).__name__)
        finally:
            self._in_flight.pop(job_id, None)
            self._busy_owners.discard(user_id)
            self._wake.set()

    async def _deliver_once(self, job_id: str) -> None:
        assert self._sender is not None
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        if row is None or row["webhook_state"] != "pending":
            return
        body = await self._render(row)
        ts = int(time.time())
        ok = False
        try:
            status = await self._sender.post(
                row["webhook_url"],
                body,
                {
                    "Content-Type": "application/json",
                    "X-Imagerelay-Signature": self.sign(row["user_id"], ts, body),
                    "X-Imagerelay-Job-Id": job_id,
                },
            )
            ok = 200 <= status < 300
            if not ok:
                log.info("webhook for %s answered %d", job_id, status)
        except DeliveryFailed as exc:
            log.info("webhook for %s failed: %s", job_id, exc)
        attempts = row["webhook_attempts"] + 1
        values: dict[str, Any] = {"webhook_attempts": attempts}
        if ok:
            values["webhook_state"] = "delivered"
        elif attempts >= MAX_ATTEMPTS:
            values["webhook_state"] = "failed"
        else:
            values["webhook_next_at"] = time.time() + self._backoff_s * 2 ** (attempts - 1)
        async with self._engine.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))


def parse_signature(header: str) -> tuple[int, str]:
    """Split ``t=...,v1=...`` (for receivers and tests)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    return int(parts["t"]), parts["v1"]


__all__ = ["DeliveryFailed", "PinnedSender", "WebhookDispatcher", "parse_signature"]
