"""Database schema (SQLAlchemy Core tables), shared by SQLite and PostgreSQL.

Money columns are BIGINT micro-dollars. ``users.held_micros`` is the sum of open
holds; a hold raises it only where ``balance - held >= amount``, checked under the
row's write lock, which is what keeps concurrent calls from ever overspending on
either database (storage/billing.py).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    # A disabled user's tokens are refused (401 account_disabled); their queued jobs fail.
    Column("disabled", Boolean, nullable=False, default=False, server_default=false()),
    # Groups the user may create tokens in through /v1/account/tokens (JSON list);
    # NULL: the groups of the tokens an administrator gave them.
    Column("allowed_groups", Text, nullable=True),
    # Console password (imagerelay/console/passwords.py: scrypt, salted); NULL: no sign-in.
    Column("password_hash", Text, nullable=True),
    Column("balance_micros", BigInteger, nullable=False, default=0),
    Column("held_micros", BigInteger, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("group_name", String(128), nullable=False),
    # sha256 of the full token: tokens are 256-bit random, so a fast hash is enough.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("suffix", String(8), nullable=True),  # last 4 characters, to recognise a token in a list
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    # Limits (NULL = none). Spend is tracked like the balance: spent + held <= cap.
    Column("spend_cap_micros", BigInteger, nullable=True),
    Column("spent_micros", BigInteger, nullable=False, default=0),
    Column("held_micros", BigInteger, nullable=False, default=0),
    Column("allowed_models", Text, nullable=True),  # JSON list
    Column("rpm_limit", Integer, nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    # Positive: money in (top-up); negative: money out (charge).
    Column("amount_micros", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # topup | adjust | charge
    Column("reason", Text, nullable=False, default=""),
    Column("request_id", String(64), nullable=True, unique=True),
    Column("created_at", Float, nullable=False),
)

# Holds of calls in flight (and of queued jobs): a small table written twice per call,
# so it has no secondary indexes (the reconciler and audit scan it), and on SQLite it is
# one b-tree keyed by request id (WITHOUT ROWID): every index is another page written
# per commit, and page writes were most of a commit's cost (py-spy).
holds = Table(
    "holds",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("token_id", Integer, nullable=True),
    Column("amount_micros", BigInteger, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    # The gateway process whose call this is (instances.id): when that process is gone,
    # a peer releases the hold as an interrupted call. NULL: the hold belongs to a job,
    # which outlives any process (a restart re-runs it under the same hold).
    Column("instance_id", String(64), nullable=True),
    # The call's usage-record fields (JSON), for the record an interrupted call gets.
    Column("call_info", Text, nullable=True),
    sqlite_with_rowid=False,
)

# Gateway processes sharing this database. Each renews a lease on its row; holds and
# running idempotency claims name their process, and a peer that finds the process
# gone releases what it left (storage/instances.py).
instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("user_id", Integer, nullable=False),
    Column("token_id", Integer, nullable=False),
    Column("group_name", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("route", String(128), nullable=False),
    Column("channel", String(128), nullable=True),
    Column("endpoint", String(32), nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("latency_ms", Integer, nullable=False),
    Column("upstream_latency_ms", Integer, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("input_text_tokens", Integer, nullable=False, default=0),
    Column("input_image_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("billing_mode", String(16), nullable=False),
    Column("price_basis", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
)

Index("ix_usage_user_created", usage_records.c.user_id, usage_records.c.created_at)
# The admin dashboard and reports filter every user's records by time (migration 0006).
Index("ix_usage_created", usage_records.c.created_at)

# Channels added at run time (admin API / CLI), next to the catalog file's channels.
# The upstream key is stored only encrypted (Fernet, key from the environment).
channels = Table(
    "channels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("spec", Text, nullable=False),  # ChannelSpec as JSON (never the key)
    Column("key_ciphertext", Text, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("disabled_reason", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Idempotency-Key: the first call's answer, replayed to retries with the same body.
idempotency = Table(
    "idempotency",
    metadata,
    Column("user_id", Integer, primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("body_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # running | done
    Column("status", Integer, nullable=True),
    Column("response", LargeBinary, nullable=True),
    Column("created_at", Float, nullable=False, index=True),
    # The process running the first call (instances.id): a retry takes over a running
    # claim whose process is gone.
    Column("instance_id", String(64), nullable=True),
)

# Async image jobs (Prefer: respond-async, POST /v1/images/jobs).
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", Integer, nullable=False, index=True),
    Column("token_id", Integer, nullable=False),
    Column("request_id", String(64), nullable=False, unique=True),  # = the hold's id
    Column("endpoint", String(16), nullable=False),
    Column("model", String(128), nullable=False),
    Column("status", String(16), nullable=False, index=True),  # queued|running|succeeded|failed|canceled
    Column("request", LargeBinary, nullable=False),  # the validated request as JSON (images on disk)
    Column("include_b64", Boolean, nullable=False, default=False),
    Column("base_url", Text, nullable=False, default=""),  # for the image URLs a webhook carries
    Column("result", LargeBinary, nullable=True),  # ImagesResponse JSON (image URLs are re-signed on read)
    Column("error", Text, nullable=True),  # official error object as JSON
    # Attempt k runs (and holds, and records usage) under request id "<request_id>" for
    # k == 1 and "<request_id>.<k>" after that, so every attempt has its own record.
    Column("attempts", Integer, nullable=False, default=1),
    Column("webhook_url", Text, nullable=True),
    Column("webhook_state", String(16), nullable=True),  # pending|delivered|failed
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("webhook_next_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("expires_at", Float, nullable=False, index=True),
    # The process running it (instances.id), so a peer re-queues it only once that
    # process is gone; NULL while queued, and for rows written before processes were named.
    Column("instance_id", String(64), nullable=True),
)

# The ``database`` image store (imagerelay/blobs/database.py): each object as rows of at
# most 1 MiB, so neither a write nor a read holds a big image whole.
blob_chunks = Table(
    "blob_chunks",
    metadata,
    Column("area", String(16), primary_key=True),  # images | results | inputs
    Column("key", String(255), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_blob_chunks_area_expires_at", "area", "expires_at"),
)
# Console sign-in sessions. The cookie carries a random id; only its sha256 is stored, so
# a read of this table gives no usable session. Each has its own CSRF token.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
)

# Console sign-up invitations: one use each; only the code's sha256 is stored.
invites = Table(
    "invites",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("created_by", Integer, nullable=True),
    Column("note", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("used_by", Integer, nullable=True),
    Column("used_at", Float, nullable=True),
)

# Failed console sign-ins, by account ("user:<name>") and by client address ("addr:<ip>"),
# counted over a window to throttle guessing across every gateway process.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),
    Column("at", Float, nullable=False),
)

Index("ix_login_failures_key_at", login_failures.c.key, login_failures.c.at)
