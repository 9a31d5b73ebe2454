"""Console accounts in the database: passwords, sessions, invitations, failed sign-ins.

Sessions and invitation codes are stored as sha256 hashes of 256-bit random values (like
API tokens, storage/accounts.py): a copy of the table holds nothing usable.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.storage.schema import console_sessions, invites, login_failures, users


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionRow:
    id_hash: str
    user_id: int
    csrf_token: str
    created_at: float
    seen_at: float


class NameTaken(Exception):
    """Sign-up under a name another user has."""


class InviteInvalid(Exception):
    """Sign-up with an invitation code that is unknown, used or expired."""


class Logins:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    # -- passwords ------------------------------------------------------------------

    async def password_hash(self, user_id: int) -> str | None:
        async with self._engine.connect() as conn:
            return (await conn.execute(select(users.c.password_hash).where(users.c.id == user_id))).scalar()

    async def set_password_hash(self, user_id: int, hashed: str) -> None:
        """Set the hash and end every session of the user (a changed password signs
        out everywhere; the caller opens a new session for the one that changed it)."""
        async with self._engine.begin() as conn:
            await conn.execute(update(users).where(users.c.id == user_id).values(password_hash=hashed))
            await conn.execute(delete(console_sessions).where(console_sessions.c.user_id == user_id))

    async def create_user(
        self, name: str, hashed: str, *, allowed_groups: str | None, invite: str | None = None
    ) -> int:
        """A new console user with a password, in one transaction with the invitation's
        use (both or neither); raises ``NameTaken`` or ``InviteInvalid``."""
        now = time.time()
        try:
            async with self._engine.begin() as conn:
                done = await conn.execute(
                    users.insert().values(
                        name=name,
                        is_admin=False,
                        disabled=False,
                        allowed_groups=allowed_groups,
                        password_hash=hashed,
                        balance_micros=0,
                        held_micros=0,
                        created_at=now,
                    )
                )
                user_id = int(done.inserted_primary_key[0])  # type: ignore[index]
                if invite is not None:
                    used = await conn.execute(
                        update(invites)
                        .where(
                            invites.c.code_hash == _sha(invite),
                            invites.c.used_at.is_(None),
                            invites.c.expires_at.is_(None) | (invites.c.expires_at >= now),
                        )
                        .values(used_by=user_id, used_at=now)
                    )
                    if not used.rowcount:
                        raise InviteInvalid()
        except IntegrityError:
            raise NameTaken() from None
        return user_id

    # -- sessions -------------------------------------------------------------------

    async def open_session(self, user_id: int) -> str:
        """A new session; returns the cookie value (only its hash is stored)."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(
                console_sessions.insert().values(
                    id_hash=_sha(sid),
                    user_id=user_id,
                    csrf_token=secrets.token_urlsafe(32),
                    created_at=now,
                    seen_at=now,
                )
            )
        return sid

    async def session(self, sid: str, *, idle_s: float, max_s: float) -> SessionRow | None:
        """The live session for a cookie value, touched; an expired one is deleted."""
        now = time.time()
        key = _sha(sid)
        async with self._engine.connect() as conn:
            row = (
                (await conn.execute(select(console_sessions).where(console_sessions.c.id_hash == key)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        if row["seen_at"] + idle_s < now or row["created_at"] + max_s < now:
            await self.close_session(sid)
            return None
        if now - row["seen_at"] > min(60.0, idle_s / 4):  # at most a write a minute for the idle clock
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(console_sessions).where(console_sessions.c.id_hash == key).values(seen_at=now)
                )
        return SessionRow(row["id_hash"], row["user_id"], row["csrf_token"], row["created_at"], now)

    async def session_created_at(self, id_hash: str) -> float | None:
        """When the session stored under ``id_hash`` was opened (None: it is gone)."""
        async with self._engine.connect() as conn:
            created = (
                await conn.execute(select(console_sessions.c.created_at).where(console_sessions.c.id_hash == id_hash))
            ).scalar()
        return None if created is None else float(created)

    async def purge_sessions(self, *, idle_s: float, max_s: float) -> None:
        """Delete every expired session (an abandoned one is never presented again)."""
        now = time.time()
        c = console_sessions.c
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(console_sessions).where((c.seen_at < now - idle_s) | (c.created_at < now - max_s))
            )

    async def close_session(self, sid: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(console_sessions).where(console_sessions.c.id_hash == _sha(sid)))

    async def close_user_sessions(self, user_id: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(console_sessions).where(console_sessions.c.user_id == user_id))

    # -- invitations ----------------------------------------------------------------

    async def create_invite(
        self, created_by: int | None, *, ttl_s: float | None = 7 * 24 * 3600, note: str = ""
    ) -> str:
        code = "inv-" + secrets.token_urlsafe(18)
        now = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(
                invites.insert().values(
                    code_hash=_sha(code),
                    created_by=created_by,
                    note=note,
                    created_at=now,
                    expires_at=now + ttl_s if ttl_s else None,
                )
            )
        return code

    async def invite_usable(self, code: str) -> bool:
        now = time.time()
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(invites.c.used_at, invites.c.expires_at).where(invites.c.code_hash == _sha(code))
                )
            ).first()
        return row is not None and row[0] is None and (row[1] is None or row[1] >= now)

    # -- throttling -----------------------------------------------------------------

    async def failures(self, key: str, window_s: float) -> int:
        async with self._engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(login_failures)
                        .where(login_failures.c.key == key, login_failures.c.at >= time.time() - window_s)
                    )
                ).scalar()
                or 0
            )

    async def record_failure(self, keys: list[str], window_s: float) -> None:
        now = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(login_failures.insert(), [{"key": k[:200], "at": now} for k in keys])
            # Old rows count for nothing: drop them here, where they are made.
            await conn.execute(delete(login_failures).where(login_failures.c.at < now - window_s))

    async def clear_failures(self, key: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(login_failures).where(login_failures.c.key == key))
