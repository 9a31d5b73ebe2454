"""Hostile webhook receivers cost the gateway neither memory nor other users' deliveries,
and a delivery connects to the address that was checked (SSRF pinning)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from imagerelay.domain.ssrf import Target
from imagerelay.webhooks import DeliveryFailed, PinnedSender
from tests.support.gateway import Gateway, run_gateway

ADMIN = "admin-webhook-abuse"
TIMEOUT_S = 4.0
ENDLESS_CAP = 600 * 1024 * 1024  # the endless body stops here, so an unfixed gateway survives the test


@dataclass
class Receiver:
    """A raw TCP webhook receiver that misbehaves after reading the request."""

    behaviour: Callable[[socket.socket, Receiver], None]
    connections: int = 0
    closed_after_s: list[float] = field(default_factory=list)  # when the gateway hung up, per connection
    bodies: list[bytes] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        started = time.monotonic()
        with conn:
            raw = b""
            while b"\r\n\r\n" not in raw:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                raw += chunk
            head, body = raw.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            self.bodies.append(body)
            self.received_at.append(time.monotonic())
            with contextlib.suppress(OSError):
                self.behaviour(conn, self)
            self.closed_after_s.append(time.monotonic() - started)

    def close(self) -> None:
        self._sock.close()


def endless_body(conn: socket.socket, _: Receiver) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    for _ in range(ENDLESS_CAP >> 20):
        conn.sendall(chunk)


def trickle(conn: socket.socket, _: Receiver) -> None:
    conn.settimeout(1.5)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 100:
        conn.sendall(bytes([byte]))
        try:
            if conn.recv(1) == b"":
                return  # the gateway hung up
        except TimeoutError:
            continue  # a byte every 1.5 s


def silent(conn: socket.socket, _: Receiver) -> None:
    conn.settimeout(120)
    conn.recv(1)  # returns when the gateway hangs up


def prompt_ok(conn: socket.socket, _: Receiver) -> None:
    conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {
        "IMAGERELAY_WEBHOOK_ALLOW_PRIVATE": "true",
        "IMAGERELAY_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S),
        "IMAGERELAY_WEBHOOK_BACKOFF_S": "30",
        "IMAGERELAY_ADMIN_TOKEN": ADMIN,
    }
    with run_gateway(tmp_path_factory.mktemp("webhook-abuse"), extra_env=env) as g:
        yield g


def new_user_token(gw: Gateway, user: str) -> str:
    h = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(gw.base_url + "/admin/tokens", headers=h, json={"user": user, "group": "default"})
    assert r.status_code == 201, r.text
    assert (
        httpx.post(
            f"{gw.base_url}/admin/users/{user}/balance", headers=h, json={"amount_usd": "10", "reason": "test credit"}
        ).status_code
        == 200
    )
    return str(r.json()["token"])


def submit(gw: Gateway, token: str, hook: str) -> str:
    r = httpx.post(
        gw.v1 + "/images/jobs",
        headers={"Authorization": f"Bearer {token}"},
        json={"endpoint": "generations", "model": "gpt-image-2", "prompt": "a kite", "webhook_url": hook},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.timing
def test_hostile_receivers_cost_no_memory_and_delay_no_one_else(gw: Gateway) -> None:
    hostile = {
        name: Receiver(behaviour)
        for name, behaviour in (("endless", endless_body), ("trickle", trickle), ("silent", silent))
    }
    good = Receiver(prompt_ok)
    try:
        baseline = rss_bytes(gw.process.pid)
        for name, receiver in hostile.items():
            submit(gw, new_user_token(gw, f"hostile-{name}"), receiver.url)
        deadline = time.monotonic() + 15
        while not all(r.bodies for r in hostile.values()):
            assert time.monotonic() < deadline, "the hostile receivers were never called"
            time.sleep(0.05)

        # While all three hold their deliveries, another user's webhook arrives at once.
        good_token = new_user_token(gw, "good-receiver")
        submitted = time.monotonic()
        job_id = submit(gw, good_token, good.url)
        peak = baseline
        while not good.bodies:
            assert time.monotonic() - submitted < 3.0, "another user's webhook waited behind hostile receivers"
            peak = max(peak, rss_bytes(gw.process.pid))
            time.sleep(0.05)
        delivered = json.loads(good.bodies[0])
        assert delivered["id"] == job_id and delivered["status"] == "succeeded"

        # Every hostile delivery is cut at one deadline; memory stays flat meanwhile.
        deadline = time.monotonic() + TIMEOUT_S + 10
        while not all(r.closed_after_s for r in hostile.values()):
            assert time.monotonic() < deadline, {n: r.closed_after_s for n, r in hostile.items()}
            peak = max(peak, rss_bytes(gw.process.pid))
            time.sleep(0.1)
        peak = max(peak, rss_bytes(gw.process.pid))
        assert peak - baseline < 100 * 1024 * 1024, f"gateway RSS grew by {(peak - baseline) >> 20} MB"
        assert hostile["trickle"].closed_after_s[0] < TIMEOUT_S + 3
        assert hostile["silent"].closed_after_s[0] < TIMEOUT_S + 3
        assert hostile["endless"].closed_after_s[0] < TIMEOUT_S + 3
    finally:
        for r in (*hostile.values(), good):
            r.close()


def test_delivery_connects_to_the_checked_address_with_the_original_name() -> None:
    """Pinning: the name below does not even resolve; the request still reaches the
    checked address, carrying the name in Host, so no second DNS answer is ever used."""
    seen: list[bytes] = []

    def record(conn: socket.socket, receiver: Receiver) -> None:
        seen.append(b"")
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n")

    receiver = Receiver(record)
    heads: list[bytes] = []
    original_handle = receiver._handle

    def capture(conn: socket.socket) -> None:
        first = conn.recv(65536, socket.MSG_PEEK)
        heads.append(first.split(b"\r\n\r\n", 1)[0])
        original_handle(conn)

    receiver._handle = capture  # type: ignore[method-assign]
    try:
        url = f"http://rebound.invalid:{receiver.port}/hook?x=1"
        target = Target(url=url, scheme="http", host="rebound.invalid", port=receiver.port, address="127.0.0.1")

        async def send() -> int:
            sender = PinnedSender(timeout_s=5, allow_private=False)
            try:
                return await sender.send_to(target, b"{}", {"Content-Type": "application/json"})
            finally:
                await sender.aclose()

        assert asyncio.run(send()) == 302  # a redirect is an answer, never followed
        assert receiver.connections == 1
        head = heads[0].decode()
        assert head.startswith("POST /hook?x=1 HTTP/1.1")
        assert f"host: rebound.invalid:{receiver.port}" in head.lower()

        async def by_name() -> int:
            sender = PinnedSender(timeout_s=5, allow_private=False)
            try:
                return await sender.post(url, b"{}", {})
            finally:
                await sender.aclose()

        with pytest.raises(DeliveryFailed, match="refused target"):
            asyncio.run(by_name())
    finally:
        receiver.close()
