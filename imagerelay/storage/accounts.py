"""Users and API tokens.

Tokens are stored only as sha256 hashes. A token is 256 bits of randomness, so a
slow password hash would buy nothing and cost a hash per request; sha256 keeps
lookup a single indexed read, and the lookup result is cached for a few seconds so
the hot path usually does no database I/O at all for authentication.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.domain.accounts import TokenFilter, TokenInfo, TokenLimits, TokenView, UserInfo, check_token
from imagerelay.storage.schema import tokens, users

log = logging.getLogger("imagerelay.accounts")

TOKEN_PREFIX = "sk-"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


# Columns a token update may set; None in ``TokenChanges`` values clears a limit.
TOKEN_CHANGE_COLUMNS = ("name", "expires_at", "spend_cap_micros", "allowed_models", "rpm_limit", "concurrency_limit")
USER_CHANGE_COLUMNS = ("disabled", "is_admin", "allowed_groups")


_Entry = tuple[float, TokenInfo | None]  # (fresh until, monotonic; the answer)


class _LruCache:
    """A bounded map that evicts its least recently used entry, one at a time.

    Hand-rolled on ``OrderedDict`` (a dozen lines) rather than ``cachetools.TTLCache``:
    the token cache must keep answering from an entry for one TTL after it expired while
    a refresh runs, and a TTL cache drops expired entries on access."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.bound:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def keys_where(self, keep: Callable[[_Entry], bool]) -> list[str]:
        return [key for key, entry in self._entries.items() if keep(entry)]

    def __len__(self) -> int:
        return len(self._entries)


class Accounts:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cache_ttl_s: float = 5.0,
        known_cache_size: int = 100_000,
        unknown_cache_size: int = 10_000,
    ) -> None:
        self._engine = engine
        self._cache_ttl_s = cache_ttl_s
        # token hash -> (fresh until, TokenInfo | None). Misses are cached too, so a flood
        # of bad tokens does not become a flood of queries, but in their own LRU: a flood
        # of distinct bad tokens evicts only other bad tokens, never a valid one.
        self._known = _LruCache(known_cache_size)
        self._unknown = _LruCache(unknown_cache_size)
        self._lookups: dict[str, asyncio.Future[TokenInfo | None]] = {}
        # Told after a key is revoked ("token", id) or a user disabled ("user", id), so
        # their queued and running jobs end at once (wired to JobService.end_jobs_of by services.py).
        self.on_keys_ended: Callable[[Literal["token", "user"], int], Awaitable[None]] | None = None

    async def get_or_create_user(self, name: str, *, is_admin: bool = False) -> UserInfo:
        """The user of that name, created when new. Several processes or hosts may
        create the same new user at once: the unique name lets one insert win, and the
        others read the winner's row (no 500 for the losers)."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).mappings().first()
        if row is not None:
            return _user(row)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    users.insert().values(
                        name=name, is_admin=is_admin, balance_micros=0, held_micros=0, created_at=time.time()
                    )
                )
        except IntegrityError:
            pass  # created meanwhile by another request, process or host
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).mappings().one()
        return _user(row)

    async def get_user(self, user_id: int) -> UserInfo | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings().first()
        return _user(row) if row else None

    async def find_user(self, name: str) -> UserInfo | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).mappings().first()
        return _user(row) if row else None

    async def list_users(self) -> list[UserInfo]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(users).order_by(users.c.id))).mappings().all()
        return [_user(r) for r in rows]

    async def create_token(
        self,
        user_id: int,
        group: str,
        *,
        name: str = "default",
        token: str | None = None,
        expires_at: float | None = None,
        limits: TokenLimits | None = None,
    ) -> str:
        limits = limits or TokenLimits()
        plain = token or new_token()
        async with self._engine.begin() as conn:
            await conn.execute(
                tokens.insert().values(
                    user_id=user_id,
                    name=name,
                    group_name=group,
                    token_hash=hash_token(plain),
                    prefix=plain[:7],
                    suffix=plain[-4:],
                    created_at=time.time(),
                    expires_at=expires_at,
                    revoked=False,
                    spent_micros=0,
                    held_micros=0,
                    spend_cap_micros=limits.spend_cap_micros,
                    allowed_models=_json_list(limits.allowed_models),
                    rpm_limit=limits.rpm_limit,
                    concurrency_limit=limits.concurrency_limit,
                )
            )
        return plain

    async def token_by_id(self, token_id: int) -> TokenInfo | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_token_query().where(tokens.c.id == token_id))).mappings().first()
        return _token(row) if row else None

    async def revoke_token(self, token_id: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked=True))
        self._forget(lambda info: info.id == token_id)
        if self.on_keys_ended is not None:
            await self.on_keys_ended("token", token_id)

    async def update_token(self, token_id: int, changes: dict[str, object]) -> None:
        """Set some of :data:`TOKEN_CHANGE_COLUMNS` (``allowed_models`` as a tuple or None);
        this process applies them at once, others within one cache TTL."""
        values = {
            k: (_json_list(v) if k == "allowed_models" else v)  # type: ignore[arg-type]
            for k, v in changes.items()
            if k in TOKEN_CHANGE_COLUMNS
        }
        if values:
            async with self._engine.begin() as conn:
                await conn.execute(update(tokens).where(tokens.c.id == token_id).values(**values))
        self._forget(lambda info: info.id == token_id)

    async def update_user(self, user_id: int, changes: dict[str, object]) -> None:
        """Set some of :data:`USER_CHANGE_COLUMNS` (``allowed_groups`` as a tuple, or None
        for the default); the user's tokens' cached answers are dropped, so a disable
        applies in this process at once and in others within one cache TTL."""
        values = {
            k: (_json_list(v) if k == "allowed_groups" else v)  # type: ignore[arg-type]
            for k, v in changes.items()
            if k in USER_CHANGE_COLUMNS
        }
        if values:
            async with self._engine.begin() as conn:
                await conn.execute(update(users).where(users.c.id == user_id).values(**values))
        self._forget(lambda info: info.user_id == user_id)
        if values.get("disabled") and self.on_keys_ended is not None:
            await self.on_keys_ended("user", user_id)

    async def token_groups(self, user_id: int) -> tuple[str, ...]:
        """The groups of the tokens a user holds (revoked ones included: an administrator gave them)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(tokens.c.group_name).where(tokens.c.user_id == user_id).distinct())).all()
        return tuple(sorted(r[0] for r in rows))

    async def view_token(self, token_id: int) -> TokenView | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_view_query().where(tokens.c.id == token_id))).mappings().first()
        return _view(row) if row else None

    async def view_token_by_secret(self, plain: str) -> TokenView | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_view_query().where(tokens.c.token_hash == hash_token(plain)))).mappings().first()
        return _view(row) if row else None

    async def list_tokens(self, where: TokenFilter) -> tuple[list[TokenView], bool]:
        """A page of tokens, newest first, and whether there are more (``before_id`` pages on)."""
        query = _view_query()
        if where.user_id is not None:
            query = query.where(tokens.c.user_id == where.user_id)
        if where.group is not None:
            query = query.where(tokens.c.group_name == where.group)
        if where.before_id is not None:
            query = query.where(tokens.c.id < where.before_id)
        now = time.time()
        unexpired = or_(tokens.c.expires_at.is_(None), tokens.c.expires_at >= now)
        if where.status == "revoked":
            query = query.where(tokens.c.revoked.is_(True))
        elif where.status == "expired":
            query = query.where(tokens.c.revoked.is_(False), tokens.c.expires_at < now)
        elif where.status == "active":
            query = query.where(and_(tokens.c.revoked.is_(False), unexpired))
        query = query.order_by(tokens.c.id.desc()).limit(where.limit + 1)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_view(r) for r in rows[: where.limit]], len(rows) > where.limit

    def _forget(self, matches: Callable[[TokenInfo], bool]) -> None:
        for key in self._known.keys_where(lambda entry: entry[1] is not None and matches(entry[1])):
            self._known.pop(key)

    async def identify(self, plain: str, now: float) -> TokenInfo:
        """The one place a secret key becomes an identity: the cached lookup, then the one
        rule (:func:`~imagerelay.domain.accounts.check_token`: unknown, revoked, expired,
        user disabled is a 401). The HTTP edge (api/deps.py ``authenticate``, so every
        route, ``require_admin`` included) and the CLI come here."""
        return check_token(await self.lookup_token(plain), now)

    async def lookup_token(self, plain: str) -> TokenInfo | None:
        """The token a secret names, whatever its state (no checks: use :meth:`identify`
        to let a key act). Cached for the hot path, including misses.

        When an entry expires under load, every call in flight misses at once; one
        lookup per token is shared by all of them rather than one each."""
        key = hash_token(plain)
        now = time.monotonic()
        hit = self._known.get(key) or self._unknown.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._lookups.get(key)
        if pending is None:
            pending = self._lookups[key] = asyncio.ensure_future(self._lookup(key))
            pending.add_done_callback(lambda done: self._lookup_done(key, done))
        if hit is not None and hit[0] + self._cache_ttl_s / 2 > now:
            # Fresh for half a TTL, then answered from while it refreshes for the other
            # half, so no call waits on the lookup and a change made by another process
            # (a revocation, a disabled user) applies here within one TTL.
            return hit[1]
        return await asyncio.shield(pending)

    def _lookup_done(self, key: str, done: asyncio.Future[TokenInfo | None]) -> None:
        self._lookups.pop(key, None)
        # A refresh nobody awaited (served from the stale entry) must not fail silently.
        if not done.cancelled() and done.exception() is not None:
            log.warning("token lookup failed: %s", type(done.exception()).__name__)

    async def _lookup(self, key: str) -> TokenInfo | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_token_query().where(tokens.c.token_hash == key))).mappings().first()
        info = _token(row) if row else None
        entry = (time.monotonic() + self._cache_ttl_s / 2, info)
        if info is None:
            self._known.pop(key)  # a token deleted since: not valid any longer
            self._unknown.put(key, entry)
        else:
            self._unknown.pop(key)
            self._known.put(key, entry)
        return info

    def cached_tokens(self) -> tuple[int, int]:
        """(known, unknown) token answers held in the cache: bounded by the sizes given."""
        return len(self._known), len(self._unknown)


def _token_query() -> Select[Any]:
    return select(
        tokens.c.id,
        tokens.c.user_id,
        tokens.c.group_name,
        tokens.c.name,
        tokens.c.expires_at,
        tokens.c.revoked,
        tokens.c.spend_cap_micros,
        tokens.c.allowed_models,
        tokens.c.rpm_limit,
        tokens.c.concurrency_limit,
        users.c.name.label("user_name"),
        users.c.is_admin,
        users.c.disabled.label("user_disabled"),
    ).join(users, users.c.id == tokens.c.user_id)


def _view_query() -> Select[Any]:
    return select(
        tokens.c.id,
        tokens.c.user_id,
        tokens.c.name,
        tokens.c.group_name,
        tokens.c.prefix,
        tokens.c.suffix,
        tokens.c.created_at,
        tokens.c.expires_at,
        tokens.c.revoked,
        tokens.c.spend_cap_micros,
        tokens.c.spent_micros,
        tokens.c.held_micros,
        tokens.c.allowed_models,
        tokens.c.rpm_limit,
        tokens.c.concurrency_limit,
        users.c.name.label("user_name"),
    ).join(users, users.c.id == tokens.c.user_id)


def _view(row) -> TokenView:  # type: ignore[no-untyped-def]
    return TokenView(
        id=row["id"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        name=row["name"],
        group=row["group_name"],
        hint=f"{row['prefix']}…{row['suffix'] or ''}",
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked=bool(row["revoked"]),
        spend_cap_micros=row["spend_cap_micros"],
        spent_micros=int(row["spent_micros"]),
        held_micros=int(row["held_micros"]),
        allowed_models=_tuple(row["allowed_models"]),
        rpm_limit=row["rpm_limit"],
        concurrency_limit=row["concurrency_limit"],
    )


def _json_list(values: tuple[str, ...] | None) -> str | None:
    return orjson.dumps(list(values)).decode() if values is not None else None


def _tuple(text: str | None) -> tuple[str, ...] | None:
    return tuple(orjson.loads(text)) if text else None


def _token(row) -> TokenInfo:  # type: ignore[no-untyped-def]
    return TokenInfo(
        id=row["id"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        group=row["group_name"],
        name=row["name"],
        expires_at=row["expires_at"],
        revoked=bool(row["revoked"]),
        is_admin=bool(row["is_admin"]),
        spend_cap_micros=row["spend_cap_micros"],
        allowed_models=_tuple(row["allowed_models"]),
        rpm_limit=row["rpm_limit"],
        concurrency_limit=row["concurrency_limit"],
        user_disabled=bool(row["user_disabled"]),
    )


def _user(row) -> UserInfo:  # type: ignore[no-untyped-def]
    return UserInfo(
        id=row["id"],
        name=row["name"],
        is_admin=bool(row["is_admin"]),
        balance_micros=int(row["balance_micros"]),
        held_micros=int(row["held_micros"]),
        disabled=bool(row["disabled"]),
        allowed_groups=_tuple(row["allowed_groups"]),
    )
