"""The upstream wire (upstreams/transport.py through the connectors) against the real
simulator over real sockets: one pool per channel, TLS with a private CA, proxies,
answer framings (chunked, compressed, no Content-Length), bounded answers, safe
header values and percent-encoded paths."""

from __future__ import annotations

import asyncio
import datetime
import gc
import gzip
import ipaddress
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.types import ImageRequest
from imagerelay.upstreams.azure import AzureConnector
from imagerelay.upstreams.base import CallTarget, UpstreamFailure
from imagerelay.upstreams.openai import OpenAIConnector
from imagerelay.upstreams.pool import ChannelPool
from imagerelay.upstreams.transport import AnswerMemory, answer_buffer
from imagerelay_sim.server import create_upstream_app
from tests.support.forward_proxy import forward_proxy, socks5_proxy
from tests.support.servers import run_asgi

KEY = "sk-fast"
REQUEST = ImageRequest(
    endpoint="generations",
    model="gpt-image-2",
    prompt="a kite",
    size="1024x1024",
    quality="low",
    upstream_params={"size": "1024x1024", "quality": "low"},
)


def target(base: str, **channel: Any) -> CallTarget:
    spec = ChannelSpec(name="fast", type="openai", pools=("p",), base_url=base + "/v1", **channel)
    return CallTarget(channel=spec, api_key=KEY, upstream_model="gpt-image-2")


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with run_asgi(create_upstream_app("openai", api_keys=[KEY])) as base:
        yield base


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagerelay test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {name: str(path) for name, path in paths.items()}


def requests_seen(base: str) -> list[dict[str, Any]]:
    return httpx.get(base + "/_sim/requests").json()["requests"]


async def test_generation_over_tls_with_the_channels_ca_bundle(tls: dict[str, str]) -> None:
    app = create_upstream_app("openai", api_keys=[KEY])
    with run_asgi(app, ssl_keyfile=tls["key"], ssl_certfile=tls["cert"]) as base:
        base = base.replace("http://", "https://")
        connector = OpenAIConnector()
        try:
            result = await connector.images(target(base, ca_bundle=tls["ca"]), REQUEST)
            assert len(result.items) == 1
        finally:
            await connector.aclose()


async def test_an_untrusted_certificate_is_a_connect_failure(tls: dict[str, str]) -> None:
    app = create_upstream_app("openai", api_keys=[KEY])
    with run_asgi(app, ssl_keyfile=tls["key"], ssl_certfile=tls["cert"]) as base:
        connector = OpenAIConnector()
        try:
            with pytest.raises(UpstreamFailure) as info:
                await connector.images(target(base.replace("http://", "https://")), REQUEST)
            assert info.value.kind == "connect"
        finally:
            await connector.aclose()


async def test_latency_beyond_the_channel_timeout_is_a_timeout(sim: str) -> None:
    """The pool bounds an attempt by the channel's timeout, whatever the connector (the
    HTTP session sets no total timeout of its own: see transport.default_client)."""
    httpx.post(sim + "/_sim/faults", json={"type": "latency", "latency_s": 2, "count": 1})
    connector = OpenAIConnector()
    pool = ChannelPool({"openai": connector}, key_resolver=lambda _ch: KEY)
    slow = target(sim, timeout_s=0.3).channel
    try:
        # Waited for, the 2 s answer would have been a success (a CallOutcome).
        failure = await pool.probe(slow, "gpt-image-2", "1024x1024", REQUEST)
        assert isinstance(failure, UpstreamFailure) and failure.kind == "timeout", failure
    finally:
        await connector.aclose()
        httpx.delete(sim + "/_sim/faults")


async def test_error_statuses_keep_their_headers(sim: str) -> None:
    httpx.post(sim + "/_sim/faults", json={"type": "429", "retry_after": 3, "count": 1})
    connector = OpenAIConnector()
    try:
        with pytest.raises(UpstreamFailure) as info:
            await connector.images(target(sim), REQUEST)
        assert info.value.kind == "rate_limited" and info.value.retry_after == 3
    finally:
        await connector.aclose()


async def test_a_reset_before_any_answer_is_not_retried(sim: str) -> None:
    httpx.delete(sim + "/_sim/requests")
    connector = OpenAIConnector()
    try:
        await connector.images(target(sim), REQUEST)  # a pooled connection now exists
        httpx.post(sim + "/_sim/faults", json={"type": "reset", "count": 1})
        with pytest.raises(UpstreamFailure) as info:
            await connector.images(target(sim), REQUEST)
        assert info.value.kind == "connect"
        assert len(requests_seen(sim)) == 2  # the pool, not the client, decides what happens next
    finally:
        await connector.aclose()
        httpx.delete(sim + "/_sim/faults")


async def test_generation_over_plain_http_reuses_one_connection(sim: str) -> None:
    connector = OpenAIConnector()
    try:
        httpx.delete(sim + "/_sim/requests")
        results = [await connector.images(target(sim), REQUEST) for _ in range(3)]
        assert all(len(r.items) == 1 and r.usage is not None for r in results)
        seen = requests_seen(sim)
        assert [r["json"]["prompt"] for r in seen] == ["a kite"] * 3
        assert seen[0]["headers"]["authorization"] == f"Bearer {KEY}"
        assert len({r["peer"] for r in seen}) == 1  # one kept-alive connection carried all three
    finally:
        await connector.aclose()


async def test_one_pool_per_channel_honours_max_connections(sim: str) -> None:
    """Generations, streams and edits share one pool, never more than max_connections."""
    httpx.post(sim + "/_sim/faults", json={"type": "latency", "latency_s": 0.3})
    connector = OpenAIConnector()
    edit = ImageRequest(
        endpoint="edits",
        model="gpt-image-2",
        prompt="a kite",
        size="1024x1024",
        quality="low",
        upstream_params={"size": "1024x1024", "quality": "low"},
        images=[_png()],
    )
    try:
        httpx.delete(sim + "/_sim/requests")
        t = target(sim, max_connections=2)
        calls = [connector.images(t, REQUEST) for _ in range(3)] + [connector.images(t, edit) for _ in range(2)]
        await asyncio.gather(*calls)
        peers = {r["peer"] for r in requests_seen(sim)}
        # Five calls at once, each held 0.3 s upstream: without the limit, five connections.
        assert len(requests_seen(sim)) == 5 and len(peers) == 2
    finally:
        httpx.delete(sim + "/_sim/faults")
        await connector.aclose()


async def _raw_server(answer: bytes, *, close: bool) -> tuple[asyncio.Server, str, list[bytes]]:
    """A socket that answers every request with ``answer`` (bytes on the wire); also
    returns the list of request heads it received.

    Not an upstream stand-in: it is how this test puts framings (no Content-Length,
    chunked, gzip, Connection: close) on the wire exactly, which no upstream lets us choose."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                lines = head.split(b"\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")), 0
                )
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", heads


ANSWER = orjson.dumps({"data": [{"b64_json": "iVBORw0KGgo="}]})


@pytest.mark.parametrize("close", [False, True])
async def test_chunked_gzip_answers_and_connection_close(close: bool) -> None:
    body = gzip.compress(ANSWER)
    chunks = b"".join(b"%x\r\n" % len(part) + part + b"\r\n" for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n" + chunks
    )
    server, base, _ = await _raw_server(answer, close=close)
    connector = OpenAIConnector()
    try:
        for _ in range(2):
            result = await connector.images(target(base), REQUEST)
            assert result.items[0]["b64_json"] == "iVBORw0KGgo="
    finally:
        await connector.aclose()
        server.close()


async def test_an_answer_without_content_length_or_chunking_is_read_to_its_end() -> None:
    """Defect of the hand-written client: a body framed by the connection's close was a connect error."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + ANSWER
    server, base, _ = await _raw_server(answer, close=True)
    connector = OpenAIConnector()
    try:
        result = await connector.images(target(base), REQUEST)
        assert len(result.items) == 1
    finally:
        await connector.aclose()
        server.close()


async def test_an_oversized_answer_is_a_clean_channel_failure() -> None:
    """The declared length is checked before any buffer is allocated for it."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{"
    server, base, _ = await _raw_server(answer, close=True)
    connector = OpenAIConnector(max_answer_bytes=4 << 20)
    try:
        with pytest.raises(UpstreamFailure) as info:
            await connector.images(target(base), REQUEST)
        assert info.value.kind == "bad_response" and "limit" in info.value.detail
    finally:
        await connector.aclose()
        server.close()


async def test_an_undeclared_oversized_answer_stops_at_the_cap() -> None:
    big = b'{"data": [{"b64_json": "' + b"A" * (6 << 20) + b'"}]}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + big
    server, base, _ = await _raw_server(answer, close=True)
    connector = OpenAIConnector(max_answer_bytes=4 << 20)
    try:
        with pytest.raises(UpstreamFailure) as info:
            await connector.images(target(base), REQUEST)
        assert info.value.kind == "bad_response" and "limit" in info.value.detail
    finally:
        await connector.aclose()
        server.close()


async def test_a_gzip_bomb_stops_at_the_decompressed_cap() -> None:
    bomb = gzip.compress(b'{"data": [{"b64_json": "' + b"A" * (64 << 20), compresslevel=9)
    assert len(bomb) < 200_000
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(bomb) + bomb
    )
    server, base, _ = await _raw_server(answer, close=True)
    connector = OpenAIConnector(max_answer_bytes=4 << 20)
    try:
        with pytest.raises(UpstreamFailure) as info:
            await connector.images(target(base), REQUEST)
        assert info.value.kind == "bad_response" and "limit" in info.value.detail
    finally:
        await connector.aclose()
        server.close()


@pytest.mark.parametrize("key", ["sk-abc\r\nX-Injected: 1", "sk-abc\nX-Injected: 1", "sk-\x00abc"])
async def test_a_key_with_cr_lf_never_reaches_the_wire(key: str) -> None:
    server, base, heads = await _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", close=True)
    connector = OpenAIConnector()
    spec = ChannelSpec(name="fast", type="openai", pools=("p",), base_url=base + "/v1")
    try:
        with pytest.raises(UpstreamFailure) as info:
            await connector.images(CallTarget(channel=spec, api_key=key, upstream_model="gpt-image-2"), REQUEST)
        assert info.value.kind == "connector" and "X-Injected" not in info.value.detail
        assert heads == []  # nothing was sent at all
    finally:
        await connector.aclose()
        server.close()


@pytest.mark.parametrize(
    ("deployment", "path"),
    [
        ("my deploy", "/openai/deployments/my%20deploy/images/generations"),
        ("déploiement-画像", "/openai/deployments/d%C3%A9ploiement-%E7%94%BB%E5%83%8F/images/generations"),
        ("a/b?c#d", "/openai/deployments/a%2Fb%3Fc%23d/images/generations"),
    ],
)
async def test_deployment_names_are_one_percent_encoded_path_segment(deployment: str, path: str) -> None:
    server, base, heads = await _raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER,
        close=True,
    )
    connector = AzureConnector()
    spec = ChannelSpec(name="az", type="azure", pools=("p",), base_url=base)
    try:
        result = await connector.images(CallTarget(channel=spec, api_key="0" * 32, upstream_model=deployment), REQUEST)
        assert len(result.items) == 1
        [head] = heads
        assert head.split(b" ")[1].decode() == path + "?api-version=2025-04-01-preview"
    finally:
        await connector.aclose()
        server.close()


async def test_a_channel_behind_an_http_proxy(sim: str) -> None:
    httpx.delete(sim + "/_sim/requests")
    connector = OpenAIConnector()
    async with forward_proxy() as (proxy, seen):
        try:
            result = await connector.images(target(sim, proxy=proxy), REQUEST)
            assert len(result.items) == 1
            assert seen == [f"POST {sim}/v1/images/generations"]
            assert len(requests_seen(sim)) == 1
        finally:
            await connector.aclose()


async def test_a_channel_behind_a_socks5_proxy(sim: str) -> None:
    connector = OpenAIConnector()
    async with socks5_proxy() as (proxy, seen):
        try:
            result = await connector.images(target(sim, proxy=proxy), REQUEST)
            assert len(result.items) == 1
            assert seen == [sim.removeprefix("http://")]
        finally:
            await connector.aclose()


async def test_https_proxy_from_the_environment_and_a_private_ca(
    tls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY is honoured by default (a CONNECT tunnel), the channel's CA bundle
    verifies the private upstream; without it the call fails, and verify=false passes."""
    app = create_upstream_app("openai", api_keys=[KEY])
    with run_asgi(app, ssl_keyfile=tls["key"], ssl_certfile=tls["cert"]) as base:
        base = base.replace("http://", "https://")
        async with forward_proxy() as (proxy, seen):
            monkeypatch.setenv("HTTPS_PROXY", proxy)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            connector = OpenAIConnector()
            try:
                result = await connector.images(target(base, ca_bundle=tls["ca"]), REQUEST)
                assert len(result.items) == 1
                assert seen == [f"CONNECT {base.removeprefix('https://')}"]
                with pytest.raises(UpstreamFailure) as info:
                    await connector.images(target(base), REQUEST)  # the system store does not trust it
                assert info.value.kind == "connect"
                unverified = await connector.images(target(base, verify=False), REQUEST)
                assert len(unverified.items) == 1
            finally:
                await connector.aclose()


async def test_no_proxy_bypasses_the_environment_proxy(sim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with forward_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        connector = OpenAIConnector()
        try:
            assert len((await connector.images(target(sim), REQUEST)).items) == 1
            assert seen == []
        finally:
            await connector.aclose()


def _png() -> Any:
    import io

    from PIL import Image

    from imagerelay.domain.types import InputImage

    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, "PNG")
    return InputImage(data=out.getvalue(), mime="image/png", width=8, height=8, part="image", filename="a.png")


# -- merged from test_answer_memory.py: The per-process budget for large upstream answers held in
# memory (transport.AnswerMemory).

MB = 1 << 20


async def _pending(task: asyncio.Task[None]) -> bool:
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


def test_reservations_within_the_budget_do_not_wait() -> None:
    async def main() -> None:
        memory = AnswerMemory(100 * MB)
        await memory.reserve(40 * MB)
        await memory.reserve(60 * MB)
        assert memory.held == 100 * MB

    asyncio.run(main())


def test_past_the_budget_a_call_waits_until_an_answer_buffer_is_freed() -> None:
    async def main() -> None:
        memory = AnswerMemory(64 * MB, max_wait_s=60)
        await memory.reserve(40 * MB)
        first = answer_buffer(40 * MB)
        memory.track(first, 40 * MB)
        second = asyncio.ensure_future(memory.reserve(40 * MB))
        assert await _pending(second)
        del first  # the answer was sent: its buffer goes, and its reservation with it
        gc.collect()
        await asyncio.wait_for(second, 10)
        assert memory.held == 40 * MB

    asyncio.run(main())


def test_an_answer_larger_than_the_budget_is_read_when_nothing_else_is_held() -> None:
    async def main() -> None:
        memory = AnswerMemory(16 * MB, max_wait_s=60)
        await memory.reserve(100 * MB)  # nothing held: proceeds
        assert memory.held == 100 * MB
        waiting = asyncio.ensure_future(memory.reserve(100 * MB))
        assert await _pending(waiting)
        memory.release(100 * MB)
        await asyncio.wait_for(waiting, 10)

    asyncio.run(main())


def test_waiters_are_served_in_order_and_a_cancelled_one_passes_its_turn_on() -> None:
    async def main() -> None:
        memory = AnswerMemory(10 * MB, max_wait_s=60)
        await memory.reserve(10 * MB)
        order: list[str] = []

        async def take(name: str) -> None:
            await memory.reserve(10 * MB)
            order.append(name)

        a, b, c = (asyncio.ensure_future(take(n)) for n in "abc")
        assert await _pending(c)
        memory.release(10 * MB)  # a's turn
        await asyncio.wait_for(a, 10)
        b.cancel()
        memory.release(10 * MB)  # b's turn, but b is gone: c gets it
        await asyncio.wait_for(c, 10)
        assert order == ["a", "c"]
        assert memory.held == 10 * MB

    asyncio.run(main())


def test_a_call_never_waits_for_memory_longer_than_the_bound() -> None:
    async def main() -> None:
        memory = AnswerMemory(10 * MB, max_wait_s=0.05)
        await memory.reserve(10 * MB)  # never released (say, held by a slow client)
        await asyncio.wait_for(memory.reserve(10 * MB), 30)  # generous liveness bound
        assert memory.held == 20 * MB

    asyncio.run(main())
