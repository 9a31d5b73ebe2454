"""Async image jobs: the same calls, answered 202 at once and polled (or webhooked).

Billing is the synchronous call's: the hold is placed at submit (with the job's
lifetime as its deadline) and settled or released when the job ends, under the
job's request id, so a job is charged at most once whatever happens:

- a worker claims a queued job with a conditional UPDATE, so two workers (or two
  replicas sharing PostgreSQL) never run the same job;
- on start-up, a job left ``running`` by a crash is re-queued if its call never
  settled (its hold is still open), and failed cleanly if the hold is gone;
- cancel releases the hold; a running call is interrupted and its hold released.

Abuse bounds: at most ``max_active_per_user`` / ``max_active_per_token`` jobs queued
or running (429 ``too_many_jobs``); a free worker takes the next job fairly between
owners (:mod:`imagerelay.domain.scheduling`); and a job holds one of its token's
concurrency slots (the synchronous calls' limiter) while it runs upstream, its rpm
having counted at submit. A job whose token is at its concurrency limit stays queued
and the worker takes another job: no worker waits for a token.

Input images of edit jobs are kept in the image store's inputs area (imagerelay/blobs:
local files, S3 or the database, so any host may run the job) until it ends, and deleted
on every terminal path (success, failure, cancel here or in another replica, expiry);
a sweep removes any a crash left behind. Result images live as long as the job.
Webhook delivery is :mod:`imagerelay.webhooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import pybase64
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.blobs import BlobMissing, StoreUnavailable
from imagerelay.domain.accounts import TokenInfo, check_token
from imagerelay.domain.scheduling import QueuedGroup, fair_order
from imagerelay.domain.ssrf import UnsafeUrl
from imagerelay.domain.types import ImageRequest, InputImage
from imagerelay.errors import ApiError, AuthenticationFailed, InvalidRequest, NotFound, RateLimited
from imagerelay.imagestore import ImageStore
from imagerelay.limits.local import UNLIMITED, Limiter, concurrency_part
from imagerelay.relay import CallContext, Interruption, ParsedCall, PreparedCall, Relay
from imagerelay.storage.accounts import Accounts
from imagerelay.storage.instances import Instances
from imagerelay.storage.schema import jobs
from imagerelay.webhooks import WebhookDispatcher

log = logging.getLogger("imagerelay.jobs")

# Jobs submitted to this process wake a worker at once; this poll only picks up jobs
# queued by other replicas (or left by a crash), so it can be slow and cheap: idle
# polling at 1 s by four workers was ~5% of the gateway's CPU under load (py-spy).
IDLE_POLL_S = 3.0

MAX_ATTEMPTS = 3
TERMINAL = ("succeeded", "failed", "canceled")
ACTIVE = ("queued", "running")
# An input folder this old with no live job behind it was left by a crash (a younger
# one may belong to a submit that has saved its images but not yet inserted its row).
ORPHAN_AGE_S = 120.0


# Codes a job ends "failed" with from outside (Jobs.end_jobs_of): its owner's key or account.
_AUTH_ENDINGS = frozenset({"revoked_api_key", "account_disabled", AuthenticationFailed.code})


def _interruption(status: str, error: str | None) -> Interruption:
    """Why a job that another replica ended was ended, as its running call records it:
    what ``Jobs._cancel`` gave there (the job row keeps the code, not the HTTP status)."""
    try:
        code = orjson.loads(error)["code"] if error else None
    except (orjson.JSONDecodeError, TypeError, KeyError):
        code = None
    if not isinstance(code, str) or not code:
        code = status
    return Interruption(AuthenticationFailed.status if status == "failed" and code in _AUTH_ENDINGS else 499, code)


def _encode_request(request: ImageRequest) -> bytes:
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name not in ("images", "mask")}
    return orjson.dumps(fields)


def _image_meta(img: InputImage) -> dict[str, Any]:
    return {
        "mime": img.mime,
        "width": img.width,
        "height": img.height,
        "part": img.part,
        "filename": img.filename,
        "has_alpha": img.has_alpha,
    }


@dataclasses.dataclass(slots=True)
class _Turn:
    """One user's submits in turn; ``users`` counts holders and waiters."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    users: int = 0


@dataclasses.dataclass(slots=True)
class _Claimed:
    row: Any
    slot: AbstractAsyncContextManager[None]  # the token's concurrency slot, held while it runs


class JobService:
    def __init__(  # noqa: PLR0913 - collaborators, then the job knobs keyword-only (Settings names each)
        self,
        engine: AsyncEngine,
        relay: Relay,
        accounts: Accounts,
        store: ImageStore,
        *,
        ttl_s: float,
        workers: int,
        webhook_secret: bytes,
        webhook_allow_private: bool,
        webhook_backoff_s: float = 1.0,
        webhook_timeout_s: float = 10.0,
        webhook_concurrency: int = 16,
        limiter: Limiter | None = None,
        max_active_per_user: int = 100,
        max_active_per_token: int = 50,
        instances: Instances | None = None,
    ) -> None:
        self._engine = engine
        self._relay = relay
        self._accounts = accounts
        self._store = store
        self.ttl_s = ttl_s
        self._workers = workers
        self._limiter = limiter
        self._max_per_user = max_active_per_user
        self._max_per_token = max_active_per_token
        self._instances = instances
        self._allow_private = webhook_allow_private
        self.webhooks = WebhookDispatcher(
            engine,
            self._webhook_body,
            secret=webhook_secret,
            allow_private=webhook_allow_private,
            backoff_s=webhook_backoff_s,
            timeout_s=webhook_timeout_s,
            concurrency=webhook_concurrency,
        )
        self._wake = asyncio.Event()
        self._claim_lock = asyncio.Lock()  # claims in turn, so each sees the last one's share
        self._submit_locks: dict[int, _Turn] = {}  # per user: count and insert in turn
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._finishing: set[str] = set()  # jobs writing their own end (see _finish)
        self._tasks: list[asyncio.Task[None]] = []

    def webhook_secret_for(self, user_id: int) -> str:
        return self.webhooks.secret_for(user_id)

    # -- submit / read / cancel -------------------------------------------------------

    async def check_webhook(self, url: Any) -> str | None:
        if url is None:
            return None
        try:
            await self.webhooks.check(url)
        except UnsafeUrl as exc:
            raise InvalidRequest(f"webhook_url {exc}.", param="webhook_url") from None
        return str(url)

    @contextlib.asynccontextmanager
    async def admission(self, token: TokenInfo) -> AsyncIterator[None]:
        """Refuse a new job past the per-user and per-token caps; submit inside the block.

        Counting and inserting run in turn per user in this process, so the caps are
        exact here; each other replica can add at most one job past them at once.
        """
        turn = self._submit_locks.setdefault(token.user_id, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                await self._check_caps(token)
                yield
        finally:
            turn.users -= 1
            if not turn.users:  # nobody waits: forget the user
                del self._submit_locks[token.user_id]

    async def _check_caps(self, token: TokenInfo) -> None:
        query = select(func.count(), func.coalesce(func.sum(case((jobs.c.token_id == token.id, 1), else_=0)), 0)).where(
            jobs.c.user_id == token.user_id, jobs.c.status.in_(ACTIVE)
        )
        async with self._engine.connect() as conn:
            user_active, token_active = (await conn.execute(query)).one()
        if user_active >= self._max_per_user:
            raise RateLimited(
                f"Your account has {user_active} jobs queued or running, the most allowed at once "
                f"({self._max_per_user}); wait for some to finish, or cancel some, before submitting more.",
                code="too_many_jobs",
                headers={"retry-after": "10"},
            )
        if token_active >= self._max_per_token:
            raise RateLimited(
                f"This API key has {token_active} jobs queued or running, the most allowed per key "
                f"({self._max_per_token}); wait for some to finish, or cancel some, before submitting more.",
                code="too_many_jobs",
                headers={"retry-after": "10"},
            )

    async def create(self, ctx: CallContext, call: ParsedCall, *, webhook_url: Any) -> dict[str, Any]:
        """Queue ``call`` as a job: its webhook checked, its owner under the job caps
        (429), routed, validated and held for the job's lifetime; the job as polled."""
        checked_url = await self.check_webhook(webhook_url)
        include_b64 = call.fields.get("response_format") == "b64_json"
        async with self.admission(ctx.token):
            prepared = await self._relay.prepare(
                ctx, call.fields.get("model"), self._relay.validator(call), hold_ttl_s=self.ttl_s
            )
            return await self.submit(prepared, include_b64=include_b64, webhook_url=checked_url)

    async def submit(self, prepared: PreparedCall, *, include_b64: bool, webhook_url: str | None) -> dict[str, Any]:
        job_id = prepared.ctx.request_id.replace("req_", "imgjob_", 1)
        request = dataclasses.replace(prepared.request, response_format="url", stream=False)
        images = [*request.images, *([request.mask] if request.mask else [])]
        now = time.time()

        async def _save() -> None:
            # images.json last: a job whose inputs are incomplete has none (_load_inputs).
            for i, img in enumerate(images):
                await self._store.inputs.put(f"{job_id}/{i}.bin", (img.data,), expires_at=now + self.ttl_s)
            meta = {
                "images": [_image_meta(i) for i in request.images],
                "mask": _image_meta(request.mask) if request.mask else None,
            }
            await self._store.inputs.put(
                f"{job_id}/images.json",
                (orjson.dumps(meta),),
                expires_at=now + self.ttl_s,
                content_type="application/json",
            )

        try:
            if images:
                await _save()
            async with self._engine.begin() as conn:
                await conn.execute(
                    jobs.insert().values(
                        id=job_id,
                        user_id=prepared.ctx.token.user_id,
                        token_id=prepared.ctx.token.id,
                        request_id=prepared.ctx.request_id,
                        endpoint=request.endpoint,
                        model=request.model,
                        status="queued",
                        request=_encode_request(request),
                        include_b64=include_b64,
                        webhook_url=webhook_url,
                        webhook_attempts=0,
                        attempts=1,
                        base_url=prepared.ctx.base_url,
                        created_at=now,
                        expires_at=now + self.ttl_s,
                    )
                )
        except BaseException:
            await asyncio.shield(self._relay.abandon(prepared, 500, "job_submit_failed"))
            await asyncio.shield(self._cleanup_inputs(job_id))
            raise
        self._wake.set()
        return await self.get(job_id, prepared.ctx.token.user_id, prepared.ctx.base_url)

    async def get(self, job_id: str, user_id: int, base_url: str, *, include_b64: bool | None = None) -> dict[str, Any]:
        row = await self._row(job_id, user_id)
        return await self._render(row, base_url, include_b64)

    async def page(
        self, user_id: int, base_url: str, *, status: str | None, limit: int, before: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the user's jobs, newest first, each as its poll shows it (without
        b64), and whether there are more; ``before`` (a job id of the previous page)
        pages on. A job id the user cannot see as a cursor is a 400."""
        query = select(jobs).where(jobs.c.user_id == user_id, jobs.c.expires_at >= time.time())
        if status is not None:
            query = query.where(jobs.c.status == status)
        async with self._engine.connect() as conn:
            if before is not None:
                cursor = (
                    await conn.execute(select(jobs.c.created_at).where(jobs.c.id == before, jobs.c.user_id == user_id))
                ).first()
                if cursor is None:
                    raise InvalidRequest(
                        f"before: no job {before}; pass the last id of the previous page.", param="before"
                    )
                query = query.where(
                    or_(jobs.c.created_at < cursor[0], and_(jobs.c.created_at == cursor[0], jobs.c.id < before))
                )
            rows = (
                (await conn.execute(query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)))
                .mappings()
                .all()
            )
        return [await self._render(r, base_url, False) for r in rows[:limit]], len(rows) > limit

    async def cancel(self, job_id: str, user_id: int, base_url: str) -> dict[str, Any]:
        row = await self._row(job_id, user_id)
        if row["status"] in TERMINAL:
            raise ApiError(f"Job {job_id} already {row['status']}; nothing to cancel.", status=409, code="job_finished")
        await self._cancel(row, "Canceled by the caller.", "canceled")
        return await self.get(job_id, user_id, base_url)

    async def _cancel(
        self,
        row: Any,
        message: str,
        code: str,
        *,
        status: str = "canceled",
        http_status: int = 499,
        only_from: tuple[str, ...] = ACTIVE,
    ) -> None:
        job_id = row["id"]
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        async with self._engine.begin() as conn:
            res = await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_(only_from))
                .values(status=status, finished_at=time.time(), error=orjson.dumps(error).decode())
            )
        if res.rowcount != 1:
            return  # it finished meanwhile
        task = self._running.get(job_id)
        if task is not None:
            # The relay releases the hold and records why; the worker deletes the inputs.
            task.cancel(msg=Interruption(http_status, code))
        else:
            # Queued, or running in another replica (its cancel watch interrupts it, and
            # its worker deletes the inputs too): release the hold here if it is still
            # open (releasing twice is a no-op) and delete the inputs now.
            prepared = await self._prepared(row, load_images=False)
            if prepared is not None and await self._hold_open(prepared.ctx.request_id):
                await self._relay.abandon(prepared, http_status, code)
            await self._cleanup_inputs(job_id)
        await self.webhooks.schedule(job_id)

    async def end_jobs_of(self, owner: Literal["token", "user"], owner_id: int) -> None:
        """Fail the jobs of a key just revoked or a user just disabled at once.

        Queued ones end as ``_run_job`` would end them when it got to them (hold released,
        webhook sent), instead of holding the money until a worker is free; a job claimed
        meanwhile is refused by ``check_token`` in ``_run_job`` before it calls upstream.
        Running ones are interrupted like a caller's cancel (here, or within half a
        second by ``_cancel_watch`` in the replica running it): the upstream call is
        abandoned and nothing is charged, instead of a revoked key spending money for
        as long as its call lasts."""
        column = jobs.c.token_id if owner == "token" else jobs.c.user_id
        async with self._engine.connect() as conn:
            rows = (
                (await conn.execute(select(jobs).where(column == owner_id, jobs.c.status.in_(ACTIVE)))).mappings().all()
            )
        err = (
            AuthenticationFailed("This API key has been revoked; create a new one.", code="revoked_api_key")
            if owner == "token"
            else AuthenticationFailed(
                "This account is disabled; contact the gateway's administrator.", code="account_disabled"
            )
        )
        for row in rows:
            await self._cancel(
                row,
                err.message,
                err.code or "invalid_api_key",
                status="failed",
                http_status=err.status,
            )

    async def _hold_open(self, request_id: str) -> bool:
        return await self._relay.billing.hold_open(request_id)

    async def _row(self, job_id: str, user_id: int) -> Any:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        # Another user's job and an expired job look exactly like a missing one.
        if row is None or row["user_id"] != user_id or row["expires_at"] < time.time():
            raise NotFound(f"No job {job_id}.", param="job_id")
        return row

    async def _render(self, row: Any, base_url: str, include_b64: bool | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row["id"],
            "object": "image.job",
            "status": row["status"],
            "endpoint": row["endpoint"],
            "model": row["model"],
            "created_at": int(row["created_at"]),
            "started_at": int(row["started_at"]) if row["started_at"] else None,
            "finished_at": int(row["finished_at"]) if row["finished_at"] else None,
            "expires_at": int(row["expires_at"]),
        }
        if row["webhook_url"]:
            out["webhook"] = {"state": row["webhook_state"], "attempts": row["webhook_attempts"]}
        if row["error"]:
            out["error"] = orjson.loads(row["error"])
        if row["result"]:
            want_b64 = row["include_b64"] if include_b64 is None else include_b64
            out["result"] = await self._result_for_client(orjson.loads(row["result"]), row, base_url, want_b64)
        return out

    async def _webhook_body(self, row: Any) -> bytes:
        return orjson.dumps(await self._render(row, row["base_url"], None))

    async def _result_for_client(
        self, result: dict[str, Any], row: Any, base_url: str, want_b64: bool
    ) -> dict[str, Any]:
        data = []
        for item in result.get("data", []):
            name = item.get("image")
            entry = {k: v for k, v in item.items() if k != "image"}
            if name:
                # A job's images live as long as the job, and so may its URLs, but no longer.
                entry["url"] = await self._store.url(base_url, name, not_after=row["expires_at"])
                if want_b64:
                    try:
                        raw = await self._store.read(name)
                    except BlobMissing:
                        raise NotFound(f"The images of job {row['id']} are no longer stored.") from None
                    entry["b64_json"] = pybase64.b64encode(raw).decode("ascii")
            data.append(entry)
        return {**result, "data": data}

    # -- workers -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover(starting=True)
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._cancel_watch()))
        self.webhooks.start()

    async def stop(self) -> None:
        running = dict(self._running)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Running calls are interrupted (the relay releases their holds) and the jobs
        # go back to the queue: the next start runs them again under a new attempt.
        for job_id, task in running.items():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == "running")
                    .values(status="queued", started_at=None, instance_id=None)
                )
        await self.webhooks.stop()

    async def recover(self, *, starting: bool = False) -> int:
        """A job left running by a process that is gone goes back to the queue (at
        start-up, and on every housekeeping tick for peers that die meanwhile). Jobs of a
        live peer are left alone: running them here too would call upstream twice.
        Its attempt either never settled (the hold is still open and the next run
        reuses it) or was released (the next run places a new hold under a new attempt
        id); a settled attempt whose result was lost fails cleanly, charged once."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(jobs).where(jobs.c.status == "running"))).mappings().all()
        rows = [r for r in rows if r["id"] not in self._running]
        if not rows:
            return 0
        owners = {r["instance_id"] for r in rows}
        gone = await self._instances.dead(owners) if self._instances is not None else set(owners)
        # A row naming no process predates instance ids: only a start-up may take it.
        orphans = [r for r in rows if r["instance_id"] in gone or (starting and r["instance_id"] is None)]
        for row in orphans:
            if await self._relay.billing.recorded_status(attempt_request_id(row)) == 200:
                await self._finish(
                    row["id"],
                    "failed",
                    error={
                        "message": "The gateway restarted as this job finished and its result was lost; submit it again.",
                        "type": "server_error",
                        "param": None,
                        "code": "job_interrupted",
                    },
                )
                continue
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.id == row["id"],
                        jobs.c.status == "running",
                        jobs.c.instance_id == row["instance_id"]
                        if row["instance_id"] is not None
                        else jobs.c.instance_id.is_(None),
                    )
                    .values(status="queued", started_at=None, instance_id=None)
                )
        if orphans:
            self._wake.set()
        return len(orphans)

    async def _claim(self) -> _Claimed | None:
        """The next job a free worker should run, with its token's concurrency slot;
        None when nothing queued may run now (empty, or every token at its limit)."""
        async with self._claim_lock:
            async with self._engine.connect() as conn:
                queued = [
                    QueuedGroup(u, t, oldest)
                    for u, t, oldest in (
                        await conn.execute(
                            select(jobs.c.user_id, jobs.c.token_id, func.min(jobs.c.created_at))
                            .where(jobs.c.status == "queued")
                            .group_by(jobs.c.user_id, jobs.c.token_id)
                        )
                    ).all()
                ]
                if not queued:
                    return None
                running = {
                    u: n
                    for u, n in (
                        await conn.execute(
                            select(jobs.c.user_id, func.count())
                            .where(jobs.c.status == "running")
                            .group_by(jobs.c.user_id)
                        )
                    ).all()
                }
            for group in fair_order(queued, running):
                slot = await self._token_slot(group.token_id)
                if slot is None:
                    continue  # the token is at its concurrency limit: try another owner's job
                try:
                    row = await self._claim_oldest(group)
                except BaseException:
                    await asyncio.shield(slot.__aexit__(None, None, None))
                    raise
                if row is not None:
                    return _Claimed(row, slot)
                await slot.__aexit__(None, None, None)
            return None

    async def _token_slot(self, token_id: int) -> AbstractAsyncContextManager[None] | None:
        """Enter one of the token's concurrency slots without waiting; None if all are taken.
        A deleted token gets no slot to wait for: its job fails at once in ``_run_job``."""
        token = await self._accounts.token_by_id(token_id)
        if token is None or self._limiter is None:
            return UNLIMITED
        slot = self._limiter.admit(concurrency_part(token))
        try:
            await slot.__aenter__()
        except RateLimited:
            return None
        return slot

    async def _claim_oldest(self, group: QueuedGroup) -> Any | None:
        now = time.time()
        async with self._engine.begin() as conn:
            found = (
                await conn.execute(
                    select(jobs.c.id)
                    .where(
                        jobs.c.status == "queued", jobs.c.user_id == group.user_id, jobs.c.token_id == group.token_id
                    )
                    .order_by(jobs.c.created_at)
                    .limit(1)
                )
            ).first()
            if found is None:
                return None
            res = await conn.execute(
                update(jobs)
                .where(jobs.c.id == found[0], jobs.c.status == "queued")
                .values(
                    status="running",
                    started_at=now,
                    instance_id=self._instances.id if self._instances is not None else None,
                )
            )
            if res.rowcount != 1:
                return None  # another replica won it
            return (await conn.execute(select(jobs).where(jobs.c.id == found[0]))).mappings().first()

    async def _worker(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except Exception as exc:  # noqa: BLE001 - keep the worker alive
                log.error("job claim failed: %s", type(exc).__name__)
                claimed = None
            if claimed is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_S)
                continue
            await self._run_claimed(claimed)

    async def _run_claimed(self, claimed: _Claimed) -> None:
        job_id = claimed.row["id"]
        task = asyncio.ensure_future(self._run_job(claimed.row))
        self._running[job_id] = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise  # the worker itself is stopping; stop() puts the job back in the queue
        except StoreUnavailable as err:  # its inputs could not be read (logged by the store)
            await self._fail_crashed(claimed.row, err)
        except Exception as exc:  # noqa: BLE001
            log.error("job %s crashed: %s", job_id, type(exc).__name__)
            await self._fail_crashed(claimed.row)
        finally:
            self._running.pop(job_id, None)
            await asyncio.shield(claimed.slot.__aexit__(None, None, None))
            if task.done():
                # Ended here one way or another (canceled ones included): the inputs go.
                await asyncio.shield(self._cleanup_inputs(job_id))
            self._wake.set()  # a token's slot came back: a job waiting for it may run

    async def _fail_crashed(self, row: Any, err: ApiError | None = None) -> None:
        error = (
            err.to_body()["error"]
            if err is not None
            else {
                "message": "The gateway hit an internal error running this job; submit it again.",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        )
        await self._finish(row["id"], "failed", error=error)
        prepared = await self._prepared(row, load_images=False)
        if prepared is not None and await self._hold_open(prepared.ctx.request_id):
            await self._relay.abandon(prepared, err.status if err else 500, error["code"] or "internal_error")

    async def _run_job(self, row: Any) -> None:
        job_id = row["id"]
        if row["expires_at"] < time.time():
            await self._finish(
                job_id,
                "failed",
                error={
                    "message": "The job expired before it could run.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "job_expired",
                },
            )
            prepared = await self._prepared(row, load_images=False)
            if prepared is not None and await self._hold_open(prepared.ctx.request_id):
                await self._relay.abandon(prepared, 408, "job_expired")
            return
        prepared = await self._prepared(row)
        if prepared is None:
            await self._finish(
                job_id,
                "failed",
                error={
                    "message": "The API key behind this job no longer exists.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                },
            )
            return
        try:
            # The key may have been revoked, have expired or lost its user since the
            # job was queued: the same rule as at the door, and the hold goes back.
            check_token(prepared.ctx.token, time.time())
        except ApiError as err:
            await self._finish(job_id, "failed", error=err.to_body()["error"])
            if await self._hold_open(prepared.ctx.request_id):
                await self._relay.abandon(prepared, err.status, err.code or "invalid_api_key")
            return
        if not await self._hold_open(prepared.ctx.request_id):
            # The previous attempt was interrupted and released its hold (a graceful
            # restart): hold again under a new attempt id, or fail cleanly.
            attempt = row["attempts"] + 1
            if attempt > MAX_ATTEMPTS:
                await self._finish(
                    job_id,
                    "failed",
                    error={
                        "message": "The job was interrupted too many times; submit it again.",
                        "type": "server_error",
                        "param": None,
                        "code": "job_interrupted",
                    },
                )
                return
            async with self._engine.begin() as conn:
                await conn.execute(update(jobs).where(jobs.c.id == job_id).values(attempts=attempt))
            row = {**row, "attempts": attempt}
            prepared = await self._prepared(row)
            assert prepared is not None
            try:
                await self._relay.rehold(prepared, hold_ttl_s=max(1.0, row["expires_at"] - time.time()))
            except ApiError as err:
                await self._finish(job_id, "failed", error=err.to_body()["error"])
                return
        try:
            answer = await self._relay.call(prepared)
        except ApiError as err:
            await self._finish(job_id, "failed", error=err.to_body()["error"])
            return
        result = dict(answer.body)
        result["data"] = [self._image_ref(item) for item in answer.body["data"]]
        await self._finish(job_id, "succeeded", result=result)

    def _image_ref(self, item: dict[str, Any]) -> dict[str, Any]:
        url = item.get("url", "")
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        ref = {k: v for k, v in item.items() if k != "url"}
        ref["image"] = name
        return ref

    async def _finish(
        self, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> None:
        # Its own end, not one from outside: _cancel_watch must not interrupt the
        # webhook and clean-up that follow the status write.
        self._finishing.add(job_id)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE))
                    .values(
                        status=status,
                        finished_at=time.time(),
                        result=orjson.dumps(result) if result is not None else None,
                        error=orjson.dumps(error).decode() if error is not None else None,
                    )
                )
            await self._cleanup_inputs(job_id)
            await self.webhooks.schedule(job_id)
        finally:
            self._finishing.discard(job_id)

    async def _cleanup_inputs(self, job_id: str) -> None:
        # StoreUnavailable is logged by the store; the sweep deletes them by their lifetime.
        with contextlib.suppress(StoreUnavailable):
            await self._store.inputs.delete_prefix(f"{job_id}/")

    async def _prepared(self, row: Any, *, load_images: bool = True) -> PreparedCall | None:
        """The job's call as the relay runs it; without its input images when only
        its hold is to be released (an edit's inputs can be hundreds of MB)."""
        token = await self._accounts.token_by_id(row["token_id"])
        if token is None:
            return None
        fields = orjson.loads(row["request"])
        images: list[InputImage] = []
        mask: InputImage | None = None
        if load_images:
            images, mask = await self._load_inputs(row["id"])
        request = ImageRequest(**fields, images=tuple(images), mask=mask)
        ctx = CallContext(
            request_id=attempt_request_id(row),
            token=token,
            endpoint=row["endpoint"],
            base_url=row["base_url"],
            started=time.monotonic(),
            images_until=row["expires_at"],
        )
        return self._relay.restore(ctx, request, row["model"])

    async def _load_inputs(self, job_id: str) -> tuple[list[InputImage], InputImage | None]:
        try:
            meta = orjson.loads(await self._store.inputs.read(f"{job_id}/images.json"))
            entries = [*meta["images"], *([meta["mask"]] if meta["mask"] else [])]
            loaded = [
                InputImage(data=await self._store.inputs.read(f"{job_id}/{i}.bin"), **m) for i, m in enumerate(entries)
            ]
        except BlobMissing:
            return [], None
        return loaded[: len(meta["images"])], (loaded[-1] if meta["mask"] else None)

    async def _cancel_watch(self) -> None:
        """Interrupt running calls whose job was canceled or failed from outside (a
        caller's cancel, a revoked key, a disabled user), possibly through another replica."""
        while True:
            await asyncio.sleep(0.5)
            if not self._running:
                continue
            try:
                async with self._engine.connect() as conn:
                    ended = {
                        r[0]: _interruption(r[1], r[2])
                        for r in (
                            await conn.execute(
                                select(jobs.c.id, jobs.c.status, jobs.c.error).where(
                                    jobs.c.id.in_(list(self._running)), jobs.c.status.in_(("canceled", "failed"))
                                )
                            )
                        ).all()
                    }
            except Exception:  # noqa: BLE001
                continue
            for job_id in ended.keys() - self._finishing:
                task = self._running.get(job_id)
                if task is not None:
                    task.cancel(msg=ended[job_id])

    # -- housekeeping ----------------------------------------------------------------------

    async def purge_expired(self) -> None:
        now = time.time()
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(jobs).where(jobs.c.expires_at < now))).mappings().all()
        for row in rows:
            if row["status"] in ACTIVE:
                await self._cancel(row, "The job expired before it finished.", "job_expired")
            await self._cleanup_inputs(row["id"])
        async with self._engine.begin() as conn:
            await conn.execute(jobs.delete().where(jobs.c.expires_at < now - 3600, jobs.c.status.in_(TERMINAL)))
        await self._sweep_orphan_inputs()

    async def _sweep_orphan_inputs(self) -> None:
        """Delete input folders no live job owns (left by a crash between the steps of
        a submit, a cancel or a finish)."""
        names = await self._store.inputs.folders(written_before=time.time() - ORPHAN_AGE_S)
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            async with self._engine.connect() as conn:
                live = {
                    r[0]
                    for r in (
                        await conn.execute(select(jobs.c.id).where(jobs.c.id.in_(chunk), jobs.c.status.in_(ACTIVE)))
                    ).all()
                }
            for name in chunk:
                if name not in live:
                    await self._cleanup_inputs(name)


def attempt_request_id(row: Any) -> str:
    attempt = int(row["attempts"])
    return row["request_id"] if attempt <= 1 else f"{row['request_id']}.{attempt}"


__all__ = ["JobService", "attempt_request_id"]
