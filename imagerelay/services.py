"""Wiring: build every long-lived component once, from settings and the catalog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.admission import AdmissionGate
from imagerelay.blobs import StoreUnavailable
from imagerelay.blobs.areas import build_areas
from imagerelay.catalog.loader import Catalog, load_catalog
from imagerelay.config import Settings
from imagerelay.imagestore import ImageStore
from imagerelay.jobs import JobService
from imagerelay.limits.local import Limiter, TokenLimiter
from imagerelay.metrics import Metrics
from imagerelay.relay import HOLD_MARGIN_S, Relay
from imagerelay.secretbox import SecretBox
from imagerelay.storage.accounts import Accounts
from imagerelay.storage.billing import Billing
from imagerelay.storage.channels import ChannelDirectory
from imagerelay.storage.db import TransactionRunner, create_engine
from imagerelay.storage.gauges import Gauges
from imagerelay.storage.idempotency import IdempotencyStore
from imagerelay.storage.instances import Instances
from imagerelay.storage.logins import Logins
from imagerelay.storage.migrate import prepare as prepare_schema
from imagerelay.storage.usage_stats import UsageReports
from imagerelay.upstreams.pool import ChannelPool, PoolPolicy
from imagerelay.upstreams.registry import build_connectors

# redis-py is an optional dependency (imagerelay[redis]): imported only when configured.
if TYPE_CHECKING:
    from imagerelay.console.passwords import Hasher
    from imagerelay.limits.connection import SharedRedis
    from imagerelay.limits.redis import RedisTokenLimiter
    from imagerelay.upstreams.cooldowns import RedisCooldowns

log = logging.getLogger("imagerelay")

RECONCILE_EVERY_S = 60.0
CHANNEL_RELOAD_EVERY_S = 10.0


def _hasher(settings: Settings | None = None) -> Hasher:
    # Imported here: the console package imports api/, which imports this module.
    from imagerelay.console.passwords import Hasher

    if settings is None:
        return Hasher()
    return Hasher(settings.password_hash_threads, settings.password_hash_queue)


@dataclass
class SharedState:
    """What several gateway processes share through Redis (``IMAGERELAY_REDIS_URL``):
    per-token rate and concurrency limits (limits/redis.py) and channel cooldowns
    (upstreams/cooldowns.py). Balances and holds are shared through the database
    instead. See docs/scaling.md."""

    redis: SharedRedis
    limiter: RedisTokenLimiter
    cooldowns: RedisCooldowns

    @classmethod
    def connect(cls, url: str, prefix: str) -> SharedState:
        """Builds the clients; nothing is sent to Redis before ``start``."""
        try:
            from imagerelay.limits.connection import SharedRedis
            from imagerelay.limits.redis import RedisTokenLimiter
            from imagerelay.upstreams.cooldowns import RedisCooldowns
        except ModuleNotFoundError as exc:
            if exc.name != "redis" and not (exc.name or "").startswith("redis."):
                raise
            raise RuntimeError(
                "IMAGERELAY_REDIS_URL is set but redis-py is not installed; "
                "install it with: pip install 'imagerelay[redis]'"
            ) from None
        redis = SharedRedis(url, prefix)
        return cls(redis, RedisTokenLimiter(redis), RedisCooldowns(redis))

    async def start(self) -> None:
        # A Redis that is down at start-up is an outage like any other: log and fail open.
        await self.redis.ping()
        self.cooldowns.start()

    async def aclose(self) -> None:
        await self.limiter.aclose()
        await self.cooldowns.aclose()
        await self.redis.aclose()


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    engine: AsyncEngine
    accounts: Accounts
    billing: Billing
    directory: ChannelDirectory
    pool: ChannelPool
    store: ImageStore
    relay: Relay
    idempotency: IdempotencyStore
    jobs: JobService
    runner: TransactionRunner
    instances: Instances
    reports: UsageReports  # usage records and the ledger, read for pages and reports
    logins: Logins  # console passwords, sessions and invites
    gauges: Gauges  # the database's side of /metrics and /readyz
    limiter: Limiter = field(default_factory=TokenLimiter)
    shared: SharedState | None = None  # Redis, when several processes share limits and cooldowns
    metrics: Metrics | None = None
    passwords: Hasher = field(default_factory=_hasher)  # console password hashing, on threads of its own
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, catalog: Catalog | None = None) -> Services:
        settings.ensure_data_dir()
        catalog = catalog or load_catalog(settings.catalog)
        engine = create_engine(settings.resolved_database_url())
        accounts = Accounts(engine, cache_ttl_s=settings.token_cache_ttl_s)
        runner = TransactionRunner(
            settings.resolved_database_url(),
            pg_pool_size=settings.db_pool_size,
            pg_synchronous_commit=settings.db_synchronous_commit,
        )
        instances = Instances(engine, settings.data_dir / "instances", lease_s=settings.instance_lease_s)
        billing = Billing(engine, runner, instance_id=instances.id)
        box = SecretBox.from_settings(settings.secret_key, settings.data_dir)
        directory = ChannelDirectory(
            engine,
            box,
            catalog.file.channels,
            known_pools={r.spec.pool for r in catalog.routes.values()},
            mixed_pools=catalog.file.mixed_simulator_pools,
        )

        async def persist_disable(name: str, reason: str) -> None:
            await directory.set_enabled(name, False, reason)

        policy = PoolPolicy(
            max_attempts=settings.max_attempts,
            deadline_s=settings.call_deadline_s,
            breaker_threshold=settings.breaker_threshold,
            cooldown_s=settings.breaker_cooldown_s,
            breaker_failure_rate=settings.breaker_failure_rate,
            breaker_window_s=settings.breaker_window_s,
            max_retry_after_s=settings.max_retry_after_s,
            backoff_base_s=settings.retry_backoff_s,
            backoff_max_s=settings.retry_backoff_max_s,
        )
        shared = SharedState.connect(settings.redis_url, settings.redis_prefix) if settings.redis_url else None
        metrics = Metrics(catalog.file.models)
        pool = ChannelPool(
            connectors=build_connectors(settings.upstream_max_answer_bytes, settings.upstream_answer_memory_bytes),
            policy=policy,
            key_resolver=directory.key_for,
            on_disable=persist_disable,
            shared=shared.cooldowns if shared else None,
            observe=metrics.observe_attempt,
        )
        directory.on_reenabled = pool.enable  # re-enabled elsewhere: forget local disables
        store = ImageStore(
            build_areas(settings, engine),
            settings.signing_key(),
            settings.image_url_ttl_s,
            presigned=settings.image_urls == "presigned",
        )
        idempotency = IdempotencyStore(
            engine, instances=instances, running_ttl_s=settings.call_deadline_s + HOLD_MARGIN_S
        )
        relay = Relay(
            catalog,
            directory,
            pool,
            billing,
            store,
            idempotency,
            observe=metrics.observe_call,
            admission=AdmissionGate(settings.admission_concurrency),
        )
        limiter: Limiter = shared.limiter if shared else TokenLimiter()
        jobs = JobService(
            engine,
            relay,
            accounts,
            store,
            ttl_s=settings.job_ttl_s,
            workers=settings.job_workers,
            webhook_secret=settings.webhook_master_key(),
            webhook_allow_private=settings.webhook_allow_private,
            webhook_backoff_s=settings.webhook_backoff_s,
            webhook_timeout_s=settings.webhook_timeout_s,
            webhook_concurrency=settings.webhook_concurrency,
            limiter=limiter,
            max_active_per_user=settings.job_max_active_per_user,
            max_active_per_token=settings.job_max_active_per_token,
            instances=instances,
        )
        accounts.on_keys_ended = jobs.end_jobs_of  # a revoked key's jobs end at once
        return cls(
            settings,
            catalog,
            engine,
            accounts,
            billing,
            directory,
            pool,
            store,
            relay,
            idempotency,
            jobs,
            runner,
            instances,
            UsageReports(engine),
            Logins(engine),
            Gauges(engine),
            limiter=limiter,
            shared=shared,
            metrics=metrics,
            passwords=_hasher(settings),
        )

    async def start(self) -> None:
        # Usually a no-op here: `serve` prepared the schema before starting the workers.
        await asyncio.to_thread(
            prepare_schema, self.settings.resolved_database_url(), auto_upgrade=self.settings.auto_migrate
        )
        await self.directory.load()
        try:  # say so now if the store is unreachable; calls answer 503 until it is back
            await self.store.areas.check()
        except StoreUnavailable:
            log.error("the image store is unreachable; url images and jobs fail until it is back")
        await self.instances.register()
        released = await self._release_orphans(with_deadline=True)
        if released:
            log.warning("released %d hold(s) left by an earlier run", released)
        await self.jobs.start()
        if self.shared is not None:
            await self.shared.start()
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self._keep_lease()))

    async def _keep_lease(self) -> None:
        """Renew this process's lease three times per lease, in a loop of its own so
        slow housekeeping can never let it lapse."""
        while True:
            await asyncio.sleep(self.instances.lease_s / 3)
            try:
                await self.instances.renew()
            except Exception as exc:  # the next round tries again; say what, never a traceback
                log.error("lease renewal failed: %s", type(exc).__name__)

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(CHANNEL_RELOAD_EVERY_S)
            ticks += 1
            try:
                # Other worker processes may have changed channels through the admin API.
                await self.directory.load()
                reconcile = ticks % int(RECONCILE_EVERY_S // CHANNEL_RELOAD_EVERY_S) == 0
                # A peer's death is looked for every tick (cheap: the holds table is
                # the calls in flight), so its calls' holds come back within a lease.
                released = await self._release_orphans(with_deadline=reconcile)
                if released:
                    log.warning("released %d hold(s) of calls whose process is gone", released)
                requeued = await self.jobs.recover()
                if requeued:
                    log.warning("re-queued %d job(s) whose process is gone", requeued)
                if reconcile:
                    if self.settings.image_store_sweep:
                        await self.store.purge_expired()
                    await self.idempotency.purge()
                    await self.jobs.purge_expired()
            except Exception as exc:  # keep the loop alive; say what, never a traceback
                log.error("housekeeping failed: %s", type(exc).__name__)

    async def _release_orphans(self, *, with_deadline: bool) -> int:
        """Release the holds (with their usage records) of calls whose process is gone,
        then forget those processes; with ``with_deadline``, also holds past their
        deadline (storage/billing.py)."""
        owners = await self.billing.hold_owners()  # read before the leases: see Instances.dead
        gone = await self.instances.dead(owners)
        if not gone and not with_deadline:
            return 0
        released = await self.billing.release_stale_holds(gone=gone, past_deadline=with_deadline)
        await self.instances.forget(gone)
        return released

    async def stop(self) -> None:
        await self.jobs.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.instances.retire()
        for connector in self.pool.connectors.values():
            await connector.aclose()
        await self.close()

    async def close(self) -> None:
        """Release database resources (also used by one-shot CLI commands)."""
        self.passwords.close()
        if self.shared is not None:
            await self.shared.aclose()
        await self.store.aclose()
        await self.engine.dispose()
        await self.runner.aclose()
