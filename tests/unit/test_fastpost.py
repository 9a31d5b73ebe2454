"""The generations fast path (upstreams/fastpost.py) against the real simulator over
real sockets: plain and TLS, keep-alive reuse, chunked and compressed answers,
timeouts, and servers that close the connection."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
from collections.abc import Iterator
from pathlib import Path
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
from imagerelay.simulation.upstream_server import create_upstream_app
from imagerelay.upstreams.base import CallTarget, UpstreamFailure
from imagerelay.upstreams.fastpost import FastPostPool, decoded_body
from imagerelay.upstreams.openai import OpenAIConnector
from tests.support.servers import run_asgi

KEY = "sk-fast"
REQUEST = ImageRequest(endpoint="generations", model="gpt-image-2", prompt="a kite", size="1024x1024",
                       quality="low", upstream_params={"size": "1024x1024", "quality": "low"})


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
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {name: str(path) for name, path in paths.items()}


def requests_seen(base: str) -> list[dict[str, Any]]:
    return httpx.get(base + "/_sim/requests").json()["requests"]


async def test_generation_over_plain_http_reuses_one_connection(sim: str) -> None:
    connector = OpenAIConnector()
    try:
        httpx.delete(sim + "/_sim/requests")
        results = [await connector.images(target(sim), REQUEST) for _ in range(3)]
        assert all(len(r.items) == 1 and r.usage is not None for r in results)
        seen = requests_seen(sim)
        assert [r["json"]["prompt"] for r in seen] == ["a kite"] * 3
        assert seen[0]["headers"]["authorization"] == f"Bearer {KEY}"
        pools = list(connector._fast_pools.values())  # noqa: SLF001 - the pool is what is under test
        assert len(pools) == 1 and len(pools[0]._idle) == 1  # noqa: SLF001 - one kept-alive connection
    finally:
        await connector.aclose()


async def test_generation_over_tls(tls: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", tls["ca"])  # the default context trusts our CA, as it would a public one
    app = create_upstream_app("openai", api_keys=[KEY])
    with run_asgi(app, ssl_keyfile=tls["key"], ssl_certfile=tls["cert"]) as base:
        base = base.replace("http://", "https://")
        connector = OpenAIConnector()
        try:
            result = await connector.images(target(base), REQUEST)
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
    httpx.post(sim + "/_sim/faults", json={"type": "latency", "latency_s": 2, "count": 1})
    connector = OpenAIConnector()
    try:
        with pytest.raises(UpstreamFailure) as info:
            await connector.images(target(sim, timeout_s=0.3), REQUEST)
        assert info.value.kind == "timeout"
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


async def _raw_server(answer: bytes, *, close: bool) -> tuple[asyncio.Server, str]:
    """A socket that answers every request with ``answer`` (bytes on the wire).

    Not an upstream stand-in: it is how this test puts chunked framing, gzip and
    Connection: close on the wire exactly, which no upstream lets us choose."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            writer.write(answer)
            await writer.drain()
            if close:
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("close", [False, True])
async def test_chunked_gzip_answers_and_connection_close(close: bool) -> None:
    body = gzip.compress(orjson.dumps({"data": [{"b64_json": "AAAA"}]}))
    chunks = b"".join(b"%x\r\n" % len(part) + part + b"\r\n" for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
              b"Transfer-Encoding: chunked\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n" + chunks)
    server, base = await _raw_server(answer, close=close)
    pool = FastPostPool(base, max_connections=4, connect_timeout_s=2)
    try:
        for _ in range(2):
            got = await pool.post("/v1/images/generations", {"Content-Type": "application/json"}, b"{}",
                                  read_timeout_s=2)
            assert got.status == 200 and got.headers["content-encoding"] == "gzip"
            assert orjson.loads(decoded_body(got)) == {"data": [{"b64_json": "AAAA"}]}
        assert len(pool._idle) == (0 if close else 1)  # noqa: SLF001
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


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


def test_only_http_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FastPostPool("ftp://example.com", max_connections=1, connect_timeout_s=1)


async def test_a_pooled_connection_keeps_no_answer_alive() -> None:
    # Regression: idle connections held their last body, 33 MB per connection for 4K images.
    big = b'{"data": [{"b64_json": "' + b"A" * (3 << 20) + b'"}]}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    server, base = await _raw_server(answer, close=False)
    pool = FastPostPool(base, max_connections=2, connect_timeout_s=2)
    try:
        got = await pool.post("/v1/images/generations", {}, b"{}", read_timeout_s=5)
        assert got.body == big and isinstance(got.body, bytearray)  # read into one presized buffer
        [idle] = pool._idle  # noqa: SLF001
        assert idle._body is None and idle._chunks == []  # noqa: SLF001
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
