"""Deployment settings: one pydantic-settings object, read from the environment.

Operator data (groups, routes, prices, channels) lives in the catalog, not here.
``Settings(**overrides)`` takes explicit values first, so tests and the CLI pass
their own without touching ``os.environ``.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagerelay.private_files import create_private_file, make_private_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGERELAY_", extra="ignore")

    # Where the embedded database, image store and generated secrets live.
    data_dir: Path = Path(".imagerelay")
    database_url: str | None = None  # default: sqlite in data_dir
    catalog: Path | None = None  # default: the shipped catalog
    # Public base URL used in signed image URLs; defaults to the request's own base URL.
    public_base_url: str | None = None
    # HMAC key for signed image URLs; generated and kept in data_dir when unset.
    url_signing_key: str | None = None
    image_url_ttl_s: int = Field(default=3600, ge=1)
    # Where URL images, job results and job inputs are kept (docs/storage.md): "local"
    # files in data_dir (one machine), an S3-compatible bucket, or the gateway's database.
    image_store: Literal["local", "s3", "database"] = "local"
    image_store_s3_bucket: str | None = None
    image_store_s3_prefix: str = ""  # e.g. "imagerelay/": objects go under <prefix>images/ ...
    image_store_s3_region: str | None = None
    image_store_s3_endpoint_url: str | None = None  # for non-AWS stores (R2, MinIO, Ceph RGW)
    # Unset: botocore's credential chain (AWS_ACCESS_KEY_ID..., profile, instance role).
    image_store_s3_access_key_id: str | None = None
    image_store_s3_secret_access_key: SecretStr | None = None
    image_store_s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # "gateway": image URLs are the gateway's signed links, streamed from the store;
    # "presigned" (s3 only): URLs presigned by the store itself, fetched from it directly.
    image_urls: Literal["gateway", "presigned"] = "gateway"
    # Delete expired objects from the housekeeping loop (every minute); turn off when a
    # bucket lifecycle rule does it instead (docs/storage.md).
    image_store_sweep: bool = True
    # Fernet key encrypting upstream keys at rest; generated into data_dir when unset.
    secret_key: str | None = None
    # Bearer credential for the admin API, in addition to tokens of admin users.
    admin_token: str | None = None
    # Master key each user's webhook signing secret derives from; generated into data_dir
    # when unset, which only works for one machine: any host may deliver a job's webhook.
    webhook_key: str | None = None
    # Largest request body accepted (16 images x 50 MB plus fields).
    max_body_bytes: int = 16 * 50 * 1024 * 1024 + 1024 * 1024
    max_json_body_bytes: int = 64 * 1024 * 1024
    # Request bodies held by calls in progress, per process (a 503 past it): bounds the
    # memory that concurrent large edits take. Default: one maximal JSON edit at a time.
    max_body_bytes_in_flight: int = Field(default=1280 * 1024 * 1024, ge=1024 * 1024)
    # Slow clients: the request head must arrive within header_timeout_s of the connection
    # (or of the first byte of the next request); a body may pause at most body_timeout_s,
    # and on average must arrive at body_min_rate bytes/s after its first body_timeout_s.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_min_rate: int = Field(default=16 * 1024, ge=1)
    # Open connections per process; past it a new connection gets a 503 and is closed.
    max_connections: int = Field(default=4096, ge=1)
    # Threads that decode uploaded images to check them: at most this many decodes run at
    # once, whatever the number of images and calls.
    image_check_threads: int = Field(default=2, ge=1, le=64)
    token_cache_ttl_s: float = 5.0
    # PostgreSQL connections for money statements (per process). Each is one short
    # autocommit statement, so a few connections keep the database busy.
    db_pool_size: int = Field(default=8, ge=1, le=100)
    # PostgreSQL's synchronous_commit for the money statements' connections. Unset: the
    # server's (on by default: a movement is on disk before the call goes on). "off"
    # is an operator's explicit trade (docs/performance.md): each commit stops waiting
    # for the WAL flush (~6 ms on a shared disk, two per call), and a database crash may
    # lose the last fraction of a second of movements, never part of one.
    db_synchronous_commit: Literal["on", "off", "local", "remote_write", "remote_apply"] | None = None
    # Channel pools: attempts per call (every channel, then again after a backoff),
    # overall deadline, circuit breaker (a count and a rate of failures over a window).
    max_attempts: int = Field(default=8, ge=1, le=20)
    call_deadline_s: float = Field(default=300.0, gt=0)
    # Calls routed, validated and held (or having their answer shaped and settled) at
    # once per process; the rest wait their turn (within call_deadline_s, else a 503),
    # so a burst of thousands does not stall every other request (docs/performance.md).
    admission_concurrency: int = Field(default=64, ge=1)
    retry_backoff_s: float = Field(default=0.25, ge=0)
    retry_backoff_max_s: float = Field(default=4.0, ge=0)
    breaker_threshold: int = Field(default=3, ge=1)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_window_s: float = Field(default=60.0, gt=0)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    max_retry_after_s: float = Field(default=10.0, ge=0)
    # The largest upstream answer read (declared or, after decompression, received): a
    # clean channel failure past it. Ten 4K images as base64 are ~330 MB.
    upstream_max_answer_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    # Large upstream answers (>= 1 MiB, with a content-length) held in memory at once by
    # one process; past it a call waits (up to 5 s) before reading its answer. Three 4K
    # answers (~33 MB each) by default. See docs/performance.md.
    upstream_answer_memory_bytes: int = Field(default=128 * 1024 * 1024, ge=1024 * 1024)
    # Lease of a gateway process on its row in the shared database, renewed every third:
    # a peer on another machine takes a process whose lease lapsed for gone and releases
    # its calls' holds (on one machine a lock file tells at once; storage/instances.py).
    instance_lease_s: float = Field(default=30.0, ge=10)
    # Async jobs: lifetime (result kept, hold deadline), in-process workers, webhooks.
    job_ttl_s: float = Field(default=24 * 3600, ge=1)
    job_workers: int = Field(default=4, ge=0)
    # Jobs queued or running at once, per user and per token (429 too_many_jobs past it).
    job_max_active_per_user: int = Field(default=100, ge=1)
    job_max_active_per_token: int = Field(default=50, ge=1)
    webhook_allow_private: bool = False  # allow webhooks to loopback/private addresses
    webhook_backoff_s: float = Field(default=2.0, gt=0)
    # One deadline per webhook delivery (resolve, connect, send, status line), and how
    # many deliveries run at once per process (at most one per job owner).
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    webhook_concurrency: int = Field(default=16, ge=1)
    # Redis shared by every gateway process for per-token limits and channel cooldowns;
    # unset keeps both in process. The prefix separates deployments sharing one Redis.
    redis_url: str | None = None
    redis_prefix: str = "imagerelay:"
    log_level: str = "info"
    # Upgrade a database whose schema is behind at start-up, instead of refusing to start
    # until `imagerelay db upgrade` has run (an empty database is always created).
    auto_migrate: bool = False
    # Observability (docs/monitoring.md): "json" writes one JSON object per log line with
    # the request id; /metrics takes METRICS_TOKEN, else the admin credential, unless
    # METRICS_OPEN (for a port the network already restricts).
    log_format: Literal["text", "json"] = "text"
    metrics_token: str | None = None
    metrics_open: bool = False
    # The web console (docs/console.md): off answers every /console URL with a 404.
    # root_path is the path prefix a proxy serves the gateway under (e.g. /relay); every
    # console link is built from it. Forwarded headers (X-Forwarded-Proto/-For) are
    # trusted only from forwarded_allow_ips (uvicorn's setting: "*" trusts everyone).
    console: bool = True
    root_path: str = ""
    forwarded_allow_ips: str = "127.0.0.1"
    # Console sign-up: open (anyone), invite (a code an admin created), off. Unset: off,
    # or open under `serve --demo`. New users may create tokens in signup_groups
    # (comma-separated; empty: every group of the catalog) and get signup_credit_usd.
    signup: Literal["open", "invite", "off"] | None = None
    signup_groups: str = ""
    signup_credit_usd: Decimal = Field(default=Decimal("0"), ge=0, le=1_000_000)
    # Console sessions end after session_idle_s without a request, and session_max_s
    # after sign-in whatever happens. Sign-in is refused for login_lockout_s after
    # login_max_failures failures for one account, or login_max_failures_per_address
    # from one client address, within that window.
    session_idle_s: float = Field(default=12 * 3600, ge=1)
    session_max_s: float = Field(default=7 * 24 * 3600, ge=1)
    login_max_failures: int = Field(default=5, ge=1)
    login_max_failures_per_address: int = Field(default=20, ge=1)
    login_lockout_s: float = Field(default=15 * 60, ge=1)
    # Password hashing (scrypt, ~16 MiB and 0.3 s each) runs on password_hash_threads
    # threads of its own with at most password_hash_queue waiting; past that a sign-in,
    # sign-up or password change is answered 503 with retry-after instead of queueing.
    password_hash_threads: int = Field(default=2, ge=1, le=32)
    password_hash_queue: int = Field(default=16, ge=0, le=10_000)

    @model_validator(mode="after")
    def _store_settings_agree(self) -> Settings:
        if self.image_store == "s3" and not self.image_store_s3_bucket:
            raise ValueError("IMAGERELAY_IMAGE_STORE=s3 needs IMAGERELAY_IMAGE_STORE_S3_BUCKET")
        if self.image_urls == "presigned" and self.image_store != "s3":
            raise ValueError("IMAGERELAY_IMAGE_URLS=presigned needs IMAGERELAY_IMAGE_STORE=s3")
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'imagerelay.db').resolve()}"

    def ensure_data_dir(self) -> Path:
        return make_private_dir(self.data_dir)

    def signing_key(self) -> bytes:
        """The URL signing key: configured, or generated once and kept on disk."""
        if self.url_signing_key:
            return self.url_signing_key.encode()
        return self._generated_secret("url-signing.key")

    def webhook_master_key(self) -> bytes:
        """Master key from which each user's webhook signing secret is derived:
        configured, or generated once and kept on disk."""
        if self.webhook_key:
            return self.webhook_key.encode()
        return self._generated_secret("webhook.key")

    def _generated_secret(self, name: str) -> bytes:
        return create_private_file(self.ensure_data_dir() / name, secrets.token_hex(32).encode()).strip()
