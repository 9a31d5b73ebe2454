"""Async image jobs: the same calls, answered 202 at once and polled (or webhooked).

Billing is the synchronous call's: the hold is placed at submit (with the job's
lifetime as its deadline) and settled or released when the job ends, under the
job's request id, so a job is charged at most once whatever happens:

- a worker claims a queued job with a conditional UPDATE, so two workers (or two
  replicas sharing PostgreSQL) never run the same job;
- on start-up, a job left ``running`` by a crash is re-queued if its call never
  settled (its hold is still open), and failed cleanly if the hold is gone;
- cancel releases the hold; a running call is interrupted and its hold released.

Input images of edit jobs are kept on disk next to the job until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import orjson
import pybase64
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.domain.ssrf import UnsafeUrl, check_url
from imagerelay.domain.types import ImageRequest, InputImage
from imagerelay.errors import ApiError, InvalidRequest, NotFound
from imagerelay.imagestore import ImageStore
from imagerelay.relay import CallContext, PreparedCall, Relay, RelayAnswer
from imagerelay.storage.accounts import Accounts
from imagerelay.storage.schema import holds, jobs, usage_records

log = logging.getLogger("imagerelay.jobs")

# Jobs submitted to this process wake a worker at once; this poll only picks up jobs
# queued by other replicas (or left by a crash), so it can be slow and cheap: idle
# polling at 1 s by four workers was ~5% of the gateway's CPU under load (py-spy).
IDLE_POLL_S = 3.0

MAX_ATTEMPTS = 3
WEBHOOK_MAX_ATTEMPTS = 6
TERMINAL = ("succeeded", "failed", "canceled")


def _encode_request(request: ImageRequest) -> bytes:
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name not in ("images", "mask")}
    return orjson.dumps(fields)


def _image_meta(img: InputImage) -> dict[str, Any]:
    return {"mime": img.mime, "width": img.width, "height": img.height, "part": img.part,
            "filename": img.filename, "has_alpha": img.has_alpha}


class JobService:
    def __init__(
        self,
        engine: AsyncEngine,
        relay: Relay,
        accounts: Accounts,
        store: ImageStore,
        root: Path,
        *,
        ttl_s: float,
        workers: int,
        webhook_secret: bytes,
        webhook_allow_private: bool,
        webhook_backoff_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._relay = relay
        self._accounts = accounts
        self._store = store
        self._root = root
        self.ttl_s = ttl_s
        self._workers = workers
        self._webhook_secret = webhook_secret
        self._allow_private = webhook_allow_private
        self._webhook_backoff_s = webhook_backoff_s
        self._wake = asyncio.Event()
        self._webhook_wake = asyncio.Event()
        self._next_retry_at = math.inf  # earliest retry this process scheduled
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        root.mkdir(parents=True, exist_ok=True)

    # -- webhook signing (shown to each user for verification) ------------------------

    def webhook_secret_for(self, user_id: int) -> str:
        return "whsec_" + hmac.new(self._webhook_secret, f"user:{user_id}".encode(), hashlib.sha256).hexdigest()

    def sign(self, user_id: int, timestamp: int, body: bytes) -> str:
        key = self.webhook_secret_for(user_id).encode()
        mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
        return f"t={timestamp},v1={mac}"

    # -- submit / read / cancel -------------------------------------------------------

    def check_webhook(self, url: Any) -> str | None:
        if url is None:
            return None
        try:
            check_url(url, allow_private=self._allow_private)
        except UnsafeUrl as exc:
            raise InvalidRequest(f"webhook_url {exc}.", param="webhook_url") from None
        return str(url)

    async def submit(
        self, prepared: PreparedCall, *, include_b64: bool, webhook_url: str | None
    ) -> dict[str, Any]:
        job_id = prepared.ctx.request_id.replace("req_", "imgjob_", 1)
        request = dataclasses.replace(prepared.request, response_format="url", stream=False)
        folder = self._root / job_id
        images = [*request.images, *([request.mask] if request.mask else [])]

        def _save() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                (folder / f"{i}.bin").write_bytes(img.data)
            meta = {"images": [_image_meta(i) for i in request.images],
                    "mask": _image_meta(request.mask) if request.mask else None}
            (folder / "images.json").write_bytes(orjson.dumps(meta))

        try:
            if images:
                await anyio.to_thread.run_sync(_save)
            now = time.time()
            async with self._engine.begin() as conn:
                await conn.execute(jobs.insert().values(
                    id=job_id, user_id=prepared.ctx.token.user_id, token_id=prepared.ctx.token.id,
                    request_id=prepared.ctx.request_id, endpoint=request.endpoint, model=request.model,
                    status="queued", request=_encode_request(request), include_b64=include_b64,
                    webhook_url=webhook_url, webhook_attempts=0, attempts=1, base_url=prepared.ctx.base_url,
                    created_at=now, expires_at=now + self.ttl_s,
                ))
        except BaseException:
            await self._relay.abandon(prepared, 500, "job_submit_failed")
            raise
        self._wake.set()
        return await self.get(job_id, prepared.ctx.token.user_id, prepared.ctx.base_url)

    async def get(self, job_id: str, user_id: int, base_url: str, *, include_b64: bool | None = None) -> dict[str, Any]:
        row = await self._row(job_id, user_id)
        return await self._render(row, base_url, include_b64)

    async def cancel(self, job_id: str, user_id: int, base_url: str) -> dict[str, Any]:
        row = await self._row(job_id, user_id)
        if row["status"] in TERMINAL:
            raise ApiError(f"Job {job_id} already {row['status']}; nothing to cancel.", status=409, code="job_finished")
        await self._cancel(row, "Canceled by the caller.", "canceled")
        return await self.get(job_id, user_id, base_url)

    async def _cancel(self, row: Any, message: str, code: str) -> None:
        job_id = row["id"]
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        async with self._engine.begin() as conn:
            res = await conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(("queued", "running")))
                .values(status="canceled", finished_at=time.time(), error=orjson.dumps(error).decode())
            )
        if res.rowcount != 1:
            return  # it finished meanwhile
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()  # the relay releases the hold when the call is interrupted
        else:
            # Queued, or running in another replica (its cancel watch interrupts it):
            # release the hold here if it is still open; releasing twice is a no-op.
            prepared = await self._prepared(row)
            if prepared is not None and await self._hold_open(prepared.ctx.request_id):
                await self._relay.abandon(prepared, 499, code)
            await self._cleanup_inputs(job_id)
        await self._schedule_webhook(job_id)

    async def _hold_open(self, request_id: str) -> bool:
        async with self._engine.connect() as conn:
            return (await conn.execute(select(holds.c.request_id).where(holds.c.request_id == request_id))).first() is not None

    async def _row(self, job_id: str, user_id: int) -> Any:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        # Another user's job and an expired job look exactly like a missing one.
        if row is None or row["user_id"] != user_id or row["expires_at"] < time.time():
            raise NotFound(f"No job {job_id}.", param="job_id")
        return row

    async def _render(self, row: Any, base_url: str, include_b64: bool | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row["id"], "object": "image.job", "status": row["status"], "endpoint": row["endpoint"],
            "model": row["model"], "created_at": int(row["created_at"]),
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
            out["result"] = await self._result_for_client(orjson.loads(row["result"]), base_url, want_b64)
        return out

    async def _result_for_client(self, result: dict[str, Any], base_url: str, want_b64: bool) -> dict[str, Any]:
        data = []
        for item in result.get("data", []):
            name = item.get("image")
            entry = {k: v for k, v in item.items() if k != "image"}
            if name:
                entry["url"] = self._store.signed_url(base_url, name)
                if want_b64:
                    raw = await anyio.to_thread.run_sync((self._store.root / name).read_bytes)
                    entry["b64_json"] = pybase64.b64encode(raw).decode("ascii")
            data.append(entry)
        return {**result, "data": data}

    # -- workers -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._recover()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._webhook_loop()))
        self._tasks.append(asyncio.create_task(self._cancel_watch()))

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
                await conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running")
                                   .values(status="queued", started_at=None))
        if self._http is not None:
            await self._http.aclose()

    async def _recover(self) -> None:
        """After a crash: a job left running goes back to the queue. Its attempt either
        never settled (the hold is still open and the next run reuses it) or was
        released (the next run places a new hold under a new attempt id); a settled
        attempt whose result was lost fails cleanly, charged once."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(jobs).where(jobs.c.status == "running"))).mappings().all()
        for row in rows:
            async with self._engine.connect() as conn:
                settled = (await conn.execute(select(usage_records.c.status).where(
                    usage_records.c.request_id == attempt_request_id(row)))).first()
            if settled is not None and settled[0] == 200:
                await self._finish(row["id"], "failed", error={
                    "message": "The gateway restarted as this job finished and its result was lost; submit it again.",
                    "type": "server_error", "param": None, "code": "job_interrupted"})
                continue
            async with self._engine.begin() as conn:
                await conn.execute(update(jobs).where(jobs.c.id == row["id"], jobs.c.status == "running")
                                   .values(status="queued", started_at=None))

    async def _claim(self) -> Any | None:
        now = time.time()
        async with self._engine.begin() as conn:
            row = (await conn.execute(
                select(jobs.c.id).where(jobs.c.status == "queued").order_by(jobs.c.created_at).limit(1)
            )).first()
            if row is None:
                return None
            res = await conn.execute(
                update(jobs).where(jobs.c.id == row[0], jobs.c.status == "queued")
                .values(status="running", started_at=now)
            )
            if res.rowcount != 1:
                return False  # another worker won it; look again at once
            return (await conn.execute(select(jobs).where(jobs.c.id == row[0]))).mappings().first()

    async def _worker(self) -> None:
        while True:
            try:
                row = await self._claim()
            except Exception as exc:  # noqa: BLE001 - keep the worker alive
                log.error("job claim failed: %s", type(exc).__name__)
                row = None
            if row is False:
                continue
            if row is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_S)
                continue
            task = asyncio.ensure_future(self._run_job(row))
            self._running[row["id"]] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    raise  # the worker itself is stopping
            except Exception as exc:  # noqa: BLE001
                log.error("job %s crashed: %s", row["id"], type(exc).__name__)
            finally:
                self._running.pop(row["id"], None)

    async def _run_job(self, row: Any) -> None:
        job_id = row["id"]
        if row["expires_at"] < time.time():
            await self._finish(job_id, "failed", error={"message": "The job expired before it could run.",
                                                       "type": "invalid_request_error", "param": None,
                                                       "code": "job_expired"})
            prepared = await self._prepared(row)
            if prepared is not None and await self._hold_open(prepared.ctx.request_id):
                await self._relay.abandon(prepared, 408, "job_expired")
            return
        prepared = await self._prepared(row)
        if prepared is None:
            await self._finish(job_id, "failed", error={"message": "The API key behind this job no longer exists.",
                                                       "type": "invalid_request_error", "param": None,
                                                       "code": "invalid_api_key"})
            return
        if not await self._hold_open(prepared.ctx.request_id):
            # The previous attempt was interrupted and released its hold (a graceful
            # restart): hold again under a new attempt id, or fail cleanly.
            attempt = row["attempts"] + 1
            if attempt > MAX_ATTEMPTS:
                await self._finish(job_id, "failed", error={
                    "message": "The job was interrupted too many times; submit it again.",
                    "type": "server_error", "param": None, "code": "job_interrupted"})
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
            answer = await self._relay.execute(prepared)
        except ApiError as err:
            await self._finish(job_id, "failed", error=err.to_body()["error"])
            return
        assert isinstance(answer, RelayAnswer)
        result = dict(answer.body)
        result["data"] = [self._image_ref(item) for item in answer.body["data"]]
        await self._finish(job_id, "succeeded", result=result)

    def _image_ref(self, item: dict[str, Any]) -> dict[str, Any]:
        url = item.get("url", "")
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        ref = {k: v for k, v in item.items() if k != "url"}
        ref["image"] = name
        return ref

    async def _finish(self, job_id: str, status: str, *, result: dict[str, Any] | None = None,
                      error: dict[str, Any] | None = None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(("running", "queued")))
                .values(status=status, finished_at=time.time(),
                        result=orjson.dumps(result) if result is not None else None,
                        error=orjson.dumps(error).decode() if error is not None else None)
            )
        await self._cleanup_inputs(job_id)
        await self._schedule_webhook(job_id)

    async def _cleanup_inputs(self, job_id: str) -> None:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._root / job_id, ignore_errors=True))

    async def _prepared(self, row: Any) -> PreparedCall | None:
        token = await self._accounts.token_by_id(row["token_id"])
        if token is None:
            return None
        fields = orjson.loads(row["request"])
        images: list[InputImage] = []
        mask: InputImage | None = None
        folder = self._root / row["id"]
        if (folder / "images.json").exists():
            meta = orjson.loads((folder / "images.json").read_bytes())
            entries = [*meta["images"], *([meta["mask"]] if meta["mask"] else [])]
            loaded = [InputImage(data=(folder / f"{i}.bin").read_bytes(), **m) for i, m in enumerate(entries)]
            images = loaded[: len(meta["images"])]
            mask = loaded[-1] if meta["mask"] else None
        request = ImageRequest(**fields, images=tuple(images), mask=mask)
        ctx = CallContext(request_id=attempt_request_id(row), token=token, endpoint=row["endpoint"],
                          base_url=row["base_url"], started=time.monotonic())
        return self._relay.restore(ctx, request, row["model"])

    async def _cancel_watch(self) -> None:
        """Interrupt running calls whose job was canceled (possibly through another replica)."""
        while True:
            await asyncio.sleep(0.5)
            if not self._running:
                continue
            try:
                async with self._engine.connect() as conn:
                    canceled = {r[0] for r in (await conn.execute(
                        select(jobs.c.id).where(jobs.c.id.in_(list(self._running)), jobs.c.status == "canceled")
                    )).all()}
            except Exception:  # noqa: BLE001
                continue
            for job_id in canceled:
                task = self._running.get(job_id)
                if task is not None:
                    task.cancel()

    # -- webhooks ------------------------------------------------------------------------

    async def _schedule_webhook(self, job_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.webhook_url.is_not(None),
                                                  jobs.c.webhook_state.is_(None))
                               .values(webhook_state="pending", webhook_next_at=time.time()))
        self._webhook_wake.set()

    async def _webhook_loop(self) -> None:
        while True:
            try:
                await self._deliver_due()
            except Exception as exc:  # noqa: BLE001
                log.error("webhook delivery loop: %s", type(exc).__name__)
            # Woken at once for a new delivery; otherwise asleep until this process's
            # next retry is due, or IDLE_POLL_S for deliveries other replicas scheduled.
            # A query every second while idle stalled the loop often enough to show in p99.
            self._webhook_wake.clear()
            until_retry = max(0.0, self._next_retry_at - time.time())
            wait = min(IDLE_POLL_S, until_retry)
            if until_retry <= IDLE_POLL_S:
                self._next_retry_at = math.inf  # this wake-up is the one that delivers it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._webhook_wake.wait(), timeout=wait)

    async def _deliver_due(self) -> None:
        now = time.time()
        async with self._engine.connect() as conn:
            due = (await conn.execute(select(jobs).where(jobs.c.webhook_state == "pending",
                                                         jobs.c.webhook_next_at <= now))).mappings().all()
        for row in due:
            await self._deliver(row)

    async def _deliver(self, row: Any) -> None:
        assert self._http is not None
        body = orjson.dumps(await self._render(row, row["base_url"], None))
        ts = int(time.time())
        ok = False
        try:
            check_url(row["webhook_url"], allow_private=self._allow_private)
            resp = await self._http.post(row["webhook_url"], content=body, headers={
                "Content-Type": "application/json",
                "X-Imagerelay-Signature": self.sign(row["user_id"], ts, body),
                "X-Imagerelay-Job-Id": row["id"],
            })
            ok = 200 <= resp.status_code < 300
        except (httpx.HTTPError, UnsafeUrl) as exc:
            log.info("webhook for %s failed: %s", row["id"], type(exc).__name__)
        attempts = row["webhook_attempts"] + 1
        if ok:
            values: dict[str, Any] = {"webhook_state": "delivered", "webhook_attempts": attempts}
        elif attempts >= WEBHOOK_MAX_ATTEMPTS:
            values = {"webhook_state": "failed", "webhook_attempts": attempts}
        else:
            values = {"webhook_attempts": attempts,
                      "webhook_next_at": time.time() + self._webhook_backoff_s * 2 ** (attempts - 1)}
            self._next_retry_at = min(self._next_retry_at, values["webhook_next_at"])
        async with self._engine.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == row["id"]).values(**values))

    async def purge_expired(self) -> None:
        now = time.time()
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(jobs).where(jobs.c.expires_at < now))).mappings().all()
        for row in rows:
            if row["status"] in ("queued", "running"):
                await self._cancel(row, "The job expired before it finished.", "job_expired")
            await self._cleanup_inputs(row["id"])
        async with self._engine.begin() as conn:
            await conn.execute(jobs.delete().where(jobs.c.expires_at < now - 3600, jobs.c.status.in_(TERMINAL)))


def attempt_request_id(row: Any) -> str:
    attempt = int(row["attempts"])
    return row["request_id"] if attempt <= 1 else f"{row['request_id']}.{attempt}"


def parse_signature(header: str) -> tuple[int, str]:
    """Split ``t=...,v1=...`` (for receivers and tests)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    return int(parts["t"]), parts["v1"]


__all__ = ["JobService", "attempt_request_id", "parse_signature"]
