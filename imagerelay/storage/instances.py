"""Which gateway processes are alive, so a process can clean up after one that is gone.

Several processes may share one database (``serve --workers N`` on SQLite, replicas on
PostgreSQL). A call's hold and its running idempotency claim name the process that
runs the call; when that process dies (``kill -9``, OOM, power) nobody will ever settle
them, and a peer — or the same deployment restarted — must release them. It must never
release those of a LIVE peer. Two signals tell a dead process from a live one:

- a **lock file** ``<data dir>/instances/<id>.lock`` that the process holds with
  ``flock`` while it runs. The kernel drops the lock the moment the process dies,
  however it dies, so a peer that can see the file knows at once and for certain
  (a restart on the same machine releases the holds at start-up, not minutes later);
- a **lease**: the process's row in ``instances``, renewed three times per lease.
  For a peer on another machine (no lock file here), a lapsed lease or a missing row
  means gone.

A held lock means alive whatever its lease says (a stalled process comes back and
renews). The lock is ``fcntl.flock``, hand-rolled in a few lines because nothing more
is needed: a library (filelock) would add a dependency for the same two system calls,
and it offers no non-blocking "is someone else's lock held?" query.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.storage.schema import instances

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: leases alone decide
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("imagerelay")

LockState = Literal["held", "free", "absent"]


def is_dead(lock: LockState, lease_expires_at: float | None, now: float) -> bool:
    """The liveness rule: a free lock is certain death (the kernel dropped it); a held
    lock is certain life; with no lock file here (another machine), a process whose
    lease lapsed or whose row is gone is dead."""
    if lock != "absent":
        return lock == "free"
    return lease_expires_at is None or lease_expires_at < now


class Instances:
    """This process's identity and lease, and the liveness of the others."""

    def __init__(self, engine: AsyncEngine, lock_dir: Path | None, *, lease_s: float) -> None:
        self._engine = engine
        self._lock_dir = lock_dir if fcntl is not None else None
        self.lease_s = lease_s
        self.id = "inst_" + secrets.token_hex(8)
        self._lock_fd: int | None = None

    async def register(self) -> None:
        """Take this process's lock, then write its row: a peer that sees the row can
        already see the held lock (the lock file appears locked, by a rename)."""
        if self._lock_dir is not None:
            self._lock_fd = await asyncio.to_thread(_take_lock, self._lock_dir, self.id)
        now = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(instances).values(
                    id=self.id,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    expires_at=now + self.lease_s,
                )
            )

    async def renew(self) -> None:
        now = time.time()
        async with self._engine.begin() as conn:
            res = await conn.execute(
                update(instances).where(instances.c.id == self.id).values(expires_at=now + self.lease_s)
            )
            if res.rowcount == 1:
                return
            # A peer took this process for dead (its lease lapsed: the process or its
            # database stalled), and may have released its calls' holds: those calls
            # then cost nothing (a settle after a release is a no-op), never twice.
            log.warning("this process's lease had lapsed; peers may have released its calls")
            await conn.execute(
                insert(instances).values(
                    id=self.id,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    expires_at=now + self.lease_s,
                )
            )

    async def dead(self, named: Iterable[str | None] = ()) -> set[str]:
        """The processes known here to be gone: those ``named`` (read from holds or
        claims BEFORE this call: a process writes its row before anything naming it,
        so a name whose row is missing here is a process that is gone), those with a
        row, and those with a lock file here."""
        now = time.time()
        async with self._engine.connect() as conn:
            leases = {r[0]: float(r[1]) for r in (await conn.execute(select(instances.c.id, instances.c.expires_at)))}
        files = await asyncio.to_thread(self._lock_files)
        ids = ({n for n in named if n} | set(leases) | files) - {self.id}
        if not ids:
            return set()
        locks = await asyncio.to_thread(lambda: {i: self._lock_state(i) for i in ids})
        return {i for i in ids if is_dead(locks[i], leases.get(i), now)}

    async def is_dead(self, instance_id: str | None) -> bool:
        """One process's liveness (None: a row written before processes were named)."""
        if instance_id is None or instance_id == self.id:
            return False
        async with self._engine.connect() as conn:
            expires = (
                await conn.execute(select(instances.c.expires_at).where(instances.c.id == instance_id))
            ).scalar_one_or_none()
        lock = await asyncio.to_thread(self._lock_state, instance_id)
        return is_dead(lock, None if expires is None else float(expires), time.time())

    async def forget(self, ids: Iterable[str]) -> None:
        """Drop the rows and lock files of processes that are gone, once nothing they
        left is open any more."""
        ids = [i for i in ids if i != self.id]
        if not ids:
            return
        async with self._engine.begin() as conn:
            await conn.execute(delete(instances).where(instances.c.id.in_(ids)))
        if self._lock_dir is not None:
            for i in ids:
                _remove_lock_file(self._lock_dir / f"{i}.lock")

    async def retire(self) -> None:
        """A clean stop: remove the row and let go of the lock."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(instances).where(instances.c.id == self.id))
        if self._lock_fd is not None and self._lock_dir is not None:
            _remove_lock_file(self._lock_dir / f"{self.id}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_files(self) -> set[str]:
        if self._lock_dir is None or not self._lock_dir.is_dir():
            return set()
        return {p.stem for p in self._lock_dir.glob("inst_*.lock")}

    def _lock_state(self, instance_id: str) -> LockState:
        if self._lock_dir is None:
            return "absent"
        try:
            fd = os.open(self._lock_dir / f"{instance_id}.lock", os.O_RDWR)
        except FileNotFoundError:
            return "absent"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        finally:
            os.close(fd)  # closing drops the lock if this call took it
        return "free"


def _remove_lock_file(path: Path) -> None:
    """Tidy a lock file away. A data directory made read-only after start keeps it: a
    lock file nobody holds says "gone" to peers all the same, and the clean-up of the
    rest of a stop must not be skipped for it."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot remove %s: %s", path.name, exc.strerror)


def _take_lock(lock_dir: Path, instance_id: str) -> int:
    """Create ``<id>.lock`` already locked: lock a temporary name, then rename it into
    place, so no peer can ever find the file unlocked while this process lives."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    temporary = lock_dir / f".{instance_id}.tmp"
    fd = os.open(temporary, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(temporary, lock_dir / f"{instance_id}.lock")
    return fd


__all__ = ["Instances", "is_dead"]
