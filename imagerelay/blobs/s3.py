"""``s3``: any S3-compatible object store (AWS S3, Cloudflare R2, MinIO, Ceph RGW...).

Client: aiobotocore, the asyncio build of botocore by aio-libs. It is botocore itself
(SigV4 signing, retries, the credential chain: environment, profile, instance role,
presigned URLs, path or virtual-host addressing) over aiohttp, which the gateway already
uses for upstreams, so calls never block the event loop and no thread pool is needed.
boto3 in threads would hold a thread for the whole of every streamed download;
aioboto3 is a thin wrapper of aiobotocore adding nothing used here.

Writes stream: an object is sent whole (``PutObject``) when it is smaller than a part,
and as a multipart upload of ``PART_BYTES`` parts otherwise, so a write holds one part
(and the piece being filled) whatever the object's size.
Reads stream ``CHUNK_BYTES`` at a time from the response body.

An object expires ``lifetime_s`` after its ``LastModified`` (:meth:`S3Blobs.expire` lists
the area's prefix and deletes in batches of 1,000), which a bucket lifecycle rule on the
same prefix can do instead (docs/storage.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from imagerelay.blobs import CHUNK_BYTES, Blob, BlobMissing, StoreUnavailable, rechunked

log = logging.getLogger("imagerelay.store")

# S3's smallest part (except the last) is 5 MiB; 8 MiB keeps a 4K PNG (~25 MB) to 4 parts.
PART_BYTES = 8 * 1024 * 1024
# A SigV4 presigned URL is valid at most 7 days.
MAX_PRESIGN_S = 7 * 24 * 3600
_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True, slots=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None  # None: botocore's credential chain (env, profile, role)
    secret_access_key: str | None = None
    addressing_style: str = "auto"  # auto | path | virtual
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0


class S3Connection:
    """One client per process, opened on first use in the running event loop and shared
    by every area (each is a prefix of the same bucket)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._opener: Any = None
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    s = self.settings
                    config = AioConfig(
                        s3={"addressing_style": s.addressing_style},
                        signature_version="s3v4",
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=s.connect_timeout_s,
                        read_timeout=s.read_timeout_s,
                        max_pool_connections=64,
                    )
                    self._opener = get_session().create_client(
                        "s3",
                        region_name=s.region,
                        endpoint_url=s.endpoint_url,
                        config=config,
                        aws_access_key_id=s.access_key_id,
                        aws_secret_access_key=s.secret_access_key,
                    )
                    self._client = await self._opener.__aenter__()
        return self._client

    async def aclose(self) -> None:
        if self._opener is not None:
            opener, self._opener, self._client = self._opener, None, None
            await opener.__aexit__(None, None, None)

    async def check(self) -> None:
        """Reach the bucket once (start-up): a misconfiguration is told before the first call."""
        async with _failures("check the bucket"):
            await (await self.client()).head_bucket(Bucket=self.settings.bucket)


class _failures:
    """Turn a store failure into :class:`StoreUnavailable`, logging what failed by error
    code or exception type only: botocore's messages can carry the endpoint's address."""

    def __init__(self, what: str) -> None:
        self.what = what

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, BlobMissing | StoreUnavailable):
            return
        if isinstance(exc, ClientError):
            detail = str(exc.response.get("Error", {}).get("Code", "ClientError"))
        elif isinstance(exc, BotoCoreError | OSError | TimeoutError):
            detail = type(exc).__name__
        else:
            return
        log.error("image store (s3): could not %s: %s", self.what, detail)
        raise StoreUnavailable() from None


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


class S3Blobs:
    def __init__(self, connection: S3Connection, area: str, lifetime_s: float) -> None:
        self._conn = connection
        self.bucket = connection.settings.bucket
        self.prefix = f"{connection.settings.prefix}{area}/"
        self.lifetime_s = lifetime_s

    async def put(
        self, key: str, chunks: Iterable[bytes], *, expires_at: float, content_type: str = "application/octet-stream"
    ) -> None:
        # expires_at is not stored: the sweep ages objects by LastModified against the
        # area's lifetime, which the caller chose to cover every object's own time.
        name = self.prefix + key
        async with _failures("write an object"):
            client = await self._conn.client()
            upload_id: str | None = None
            parts: list[dict[str, Any]] = []
            try:
                for part in rechunked(chunks, PART_BYTES):  # one part in memory at a time
                    if upload_id is None and len(part) < PART_BYTES:  # the whole object fits one request
                        await client.put_object(Bucket=self.bucket, Key=name, Body=part, ContentType=content_type)
                        return
                    if upload_id is None:
                        upload_id = (
                            await client.create_multipart_upload(Bucket=self.bucket, Key=name, ContentType=content_type)
                        )["UploadId"]
                    number = len(parts) + 1
                    sent = await client.upload_part(
                        Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=part
                    )
                    parts.append({"PartNumber": number, "ETag": sent["ETag"]})
                if upload_id is None:  # no bytes at all
                    await client.put_object(Bucket=self.bucket, Key=name, Body=b"", ContentType=content_type)
                    return
                await client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                if upload_id is not None:  # parts of an abandoned upload are billed until aborted
                    try:
                        await asyncio.shield(
                            client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
                        )
                    except Exception as exc:  # noqa: BLE001 - a lifecycle rule removes it later
                        log.warning("image store (s3): could not abort an upload: %s", type(exc).__name__)
                raise

    async def open(self, key: str) -> Blob:
        async with _failures("read an object"):
            client = await self._conn.client()
            try:
                answer = await client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as exc:
                if _missing(exc):
                    raise BlobMissing(key) from None
                raise
        body = answer["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async with _failures("read an object"):
                    async for chunk in body.iter_chunks(CHUNK_BYTES):
                        yield chunk
            finally:
                body.close()

        return Blob(size=int(answer.get("ContentLength") or 0) or None, chunks=chunks())

    async def read(self, key: str) -> bytes:
        return await (await self.open(key)).read_all()

    async def delete(self, key: str) -> None:
        async with _failures("delete an object"):
            await (await self._conn.client()).delete_object(Bucket=self.bucket, Key=self.prefix + key)

    async def _delete_keys(self, client: Any, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            await client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    async def _listed(self, client: Any, prefix: str) -> AsyncIterator[dict[str, Any]]:
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield item

    async def delete_prefix(self, prefix: str) -> int:
        async with _failures("delete objects"):
            client = await self._conn.client()
            keys = [item["Key"] async for item in self._listed(client, self.prefix + prefix)]
            await self._delete_keys(client, keys)
            return len(keys)

    async def expire(self, now: float | None = None) -> int:
        cutoff = datetime.fromtimestamp((time.time() if now is None else now) - self.lifetime_s, tz=UTC)
        async with _failures("expire objects"):
            client = await self._conn.client()
            keys = [item["Key"] async for item in self._listed(client, self.prefix) if item["LastModified"] < cutoff]
            await self._delete_keys(client, keys)
            return len(keys)

    async def folders(self, written_before: float) -> list[str]:
        cutoff = datetime.fromtimestamp(written_before, tz=UTC)
        newest: dict[str, datetime] = {}
        async with _failures("list objects"):
            client = await self._conn.client()
            async for item in self._listed(client, self.prefix):
                rest = item["Key"][len(self.prefix) :]
                if "/" in rest:
                    folder = rest.split("/", 1)[0]
                    newest[folder] = max(newest.get(folder, item["LastModified"]), item["LastModified"])
        return [folder for folder, at in newest.items() if at < cutoff]

    async def presigned_url(self, key: str, expires_in_s: int, content_type: str) -> str | None:
        async with _failures("sign a URL"):
            client = await self._conn.client()
            url: str = await client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.prefix + key, "ResponseContentType": content_type},
                ExpiresIn=max(1, min(expires_in_s, MAX_PRESIGN_S)),
            )
            return url

    async def aclose(self) -> None:
        await self._conn.aclose()
