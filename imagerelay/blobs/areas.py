"""The three areas the gateway stores, built for the configured backend.

- ``images``: ``response_format=url`` images, for the URL lifetime;
- ``results``: job result images, for the job's lifetime;
- ``inputs``: an edit job's input images, until the job ends (at most its lifetime).

``local`` and ``database`` keep each object's own time, so results share the images
area (local: the same folder as before this module existed); ``s3`` ages objects by
their area's lifetime, so each area is a prefix of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagerelay.blobs import BlobStore

if TYPE_CHECKING:  # botocore takes a while to import: only the s3 store loads it
    from sqlalchemy.ext.asyncio import AsyncEngine

    from imagerelay.blobs.s3 import S3Connection
    from imagerelay.config import Settings


@dataclass
class StoreAreas:
    images: BlobStore
    results: BlobStore
    inputs: BlobStore
    s3: S3Connection | None = None

    def distinct(self) -> list[BlobStore]:
        seen: dict[int, BlobStore] = {}
        for area in (self.images, self.results, self.inputs):
            seen.setdefault(id(area), area)
        return list(seen.values())

    async def expire(self, now: float | None = None) -> int:
        return sum([await area.expire(now) for area in self.distinct()])

    async def check(self) -> None:
        if self.s3 is not None:
            await self.s3.check()

    async def aclose(self) -> None:
        for area in self.distinct():
            await area.aclose()


def clock_margin_s(url_ttl_s: float) -> float:
    """Kept past their time by this much, for the clocks of hosts sharing a store (at most
    a minute, and no longer than the URL lifetime, so short lifetimes stay short)."""
    return min(60.0, url_ttl_s)


def build_areas(settings: Settings, engine: AsyncEngine | None) -> StoreAreas:
    margin = clock_margin_s(settings.image_url_ttl_s)
    url_life = settings.image_url_ttl_s + margin
    job_life = settings.job_ttl_s + margin
    if settings.image_store == "s3":
        from imagerelay.blobs.s3 import S3Blobs, S3Connection, S3Settings

        secret = settings.image_store_s3_secret_access_key
        assert settings.image_store_s3_bucket  # Settings refuses s3 without a bucket
        conn = S3Connection(
            S3Settings(
                bucket=settings.image_store_s3_bucket,
                prefix=settings.image_store_s3_prefix,
                region=settings.image_store_s3_region,
                endpoint_url=settings.image_store_s3_endpoint_url,
                access_key_id=settings.image_store_s3_access_key_id,
                secret_access_key=secret.get_secret_value() if secret is not None else None,
                addressing_style=settings.image_store_s3_addressing_style,
            )
        )
        return StoreAreas(
            S3Blobs(conn, "images", url_life),
            S3Blobs(conn, "results", job_life),
            S3Blobs(conn, "inputs", job_life),
            s3=conn,
        )
    if settings.image_store == "database":
        from imagerelay.blobs.database import DatabaseBlobs

        assert engine is not None
        images = DatabaseBlobs(engine, "images", url_life)
        return StoreAreas(images, images, DatabaseBlobs(engine, "inputs", job_life))
    from imagerelay.blobs.local import LocalBlobs

    local = LocalBlobs(settings.data_dir / "images", url_life)
    return StoreAreas(local, local, LocalBlobs(settings.data_dir / "jobs", job_life))
