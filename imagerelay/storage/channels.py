"""The channel directory: catalog channels plus channels added at run time.

Catalog channels take their key from the environment variable they name; channels
added through the admin API or CLI keep theirs encrypted in the database. The hot
path reads an in-memory index (pool -> channels) that is rebuilt when an admin
changes something and reloaded periodically, so other worker processes catch up.
Keys never leave this module except into a connector's outgoing request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.catalog.channel_rules import ChannelInvalid, check_channel, serving_index
from imagerelay.catalog.model import ChannelSpec
from imagerelay.secretbox import SecretBox
from imagerelay.storage.schema import channels as channels_table

__all__ = ["ChannelConflict", "ChannelDirectory", "ChannelInvalid", "ChannelView", "check_channel"]


class ChannelConflict(ValueError):
    """The name is taken, or the channel is the catalog file's to change."""


@dataclass(frozen=True, slots=True)
class ChannelView:
    """What an admin may see of a channel: everything but the key."""

    spec: ChannelSpec
    source: str  # catalog | database
    has_key: bool
    disabled_reason: str | None


class ChannelDirectory:
    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        catalog_channels: Sequence[ChannelSpec],
        env: Mapping[str, str] | None = None,
        known_pools: Collection[str] | None = None,
        mixed_pools: Collection[str] = (),
    ) -> None:
        self._engine = engine
        self._box = box
        self._catalog = {c.name: c for c in catalog_channels}
        self._env = env if env is not None else os.environ
        self._known_pools = known_pools  # pools some route uses; None: not checked
        self._mixed_pools = frozenset(mixed_pools)  # pools where simulators may serve beside real channels
        self._specs: dict[str, ChannelSpec] = dict(self._catalog)
        self._keys: dict[str, str | None] = {}
        self._disabled: dict[str, str] = {}
        self._by_pool: dict[str, tuple[ChannelSpec, ...]] = {}
        self.on_reenabled: Callable[[str], None] | None = None
        self._reindex()

    # -- hot path ---------------------------------------------------------------------

    def channels_for(self, pool: str) -> tuple[ChannelSpec, ...]:
        return self._by_pool.get(pool, ())

    def key_for(self, channel: ChannelSpec) -> str | None:
        if channel.name in self._keys:
            return self._keys[channel.name]
        return self._env.get(channel.api_key_env) if channel.api_key_env else None

    # -- admin ----------------------------------------------------------------------------

    def get(self, name: str) -> ChannelSpec | None:
        return self._specs.get(name)

    def views(self) -> list[ChannelView]:
        return [
            ChannelView(
                spec=spec,
                source="catalog" if name in self._catalog else "database",
                has_key=self.key_for(spec) is not None,
                disabled_reason=self._disabled.get(name),
            )
            for name, spec in sorted(self._specs.items())
        ]

    async def load(self) -> None:
        """Read the stored channels and rebuild the index. A channel disabled at the
        previous load and enabled now (by an administrator, maybe through another process
        or the CLI) is passed to ``on_reenabled``, so this process forgets its own reasons
        to skip it (a rejected key disables a channel in memory too)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(channels_table))).mappings().all()
        specs = dict(self._catalog)
        keys: dict[str, str | None] = {}
        disabled: dict[str, str] = {}
        for row in rows:
            name = row["name"]
            if row["spec"]:
                spec = ChannelSpec.model_validate(orjson.loads(row["spec"]))
                keys[name] = self._box.decrypt(row["key_ciphertext"]) if row["key_ciphertext"] else None
            elif name in self._catalog:
                spec = self._catalog[name]  # a state row for a catalog channel
            else:
                continue
            specs[name] = spec.model_copy(update={"enabled": bool(row["enabled"])})
            if not row["enabled"] and row["disabled_reason"]:
                disabled[name] = row["disabled_reason"]
        reenabled = {n for n, spec in specs.items() if spec.enabled and n in self._specs and not self._specs[n].enabled}
        self._specs, self._keys, self._disabled = specs, keys, disabled
        self._reindex()
        if self.on_reenabled is not None:
            for name in sorted(reenabled):
                self.on_reenabled(name)

    async def add(self, spec: ChannelSpec, api_key: str | None) -> None:
        if await self.knows(spec.name):
            raise ChannelConflict(f"a channel named {spec.name!r} already exists")
        check_channel(spec, api_key, self._known_pools)
        now = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(
                channels_table.insert().values(
                    name=spec.name,
                    spec=orjson.dumps(spec.model_dump(mode="json")).decode(),
                    key_ciphertext=self._box.encrypt(api_key) if api_key else None,
                    enabled=spec.enabled,
                    created_at=now,
                    updated_at=now,
                )
            )
        await self.load()

    async def knows(self, name: str) -> bool:
        """Whether a channel exists, reading the database when this process has not seen
        it yet (another process or the CLI may have added it since the last load)."""
        if name not in self._specs:
            await self.load()
        return name in self._specs

    async def set_enabled(self, name: str, enabled: bool, reason: str | None = None) -> None:
        if not await self.knows(name):
            raise KeyError(name)
        now = time.time()
        values = {"enabled": enabled, "disabled_reason": None if enabled else reason, "updated_at": now}
        async with self._engine.begin() as conn:
            res = await conn.execute(update(channels_table).where(channels_table.c.name == name).values(**values))
            if res.rowcount == 0:
                await conn.execute(
                    channels_table.insert().values(name=name, spec="", key_ciphertext=None, created_at=now, **values)
                )
        await self.load()

    async def update(
        self, name: str, changes: Mapping[str, Any], *, set_key: bool = False, api_key: str | None = None
    ) -> None:
        """Change fields of a channel added at run time; every field is checked again as
        on :meth:`add`. ``set_key`` replaces the key with ``api_key`` (``None`` removes it).
        ``enabled`` goes to the state column that :meth:`set_enabled` writes."""
        if "name" in changes and changes["name"] != name:
            raise ChannelInvalid("name", "a channel cannot be renamed; add a new one and remove this one")
        now = time.time()
        async with self._engine.begin() as conn:
            row = (
                (await conn.execute(select(channels_table).where(channels_table.c.name == name).with_for_update()))
                .mappings()
                .first()
            )
            if row is None or not row["spec"]:
                self._refuse_catalog(name, "change")
                raise KeyError(name)
            merged = {**orjson.loads(row["spec"]), "enabled": bool(row["enabled"]), **changes, "name": name}
            try:
                spec = ChannelSpec.model_validate(merged)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ChannelInvalid(".".join(str(p) for p in first["loc"]) or "channel", first["msg"]) from None
            enabled = spec.enabled
            check_channel(spec, api_key if set_key else None, self._known_pools)
            values: dict[str, Any] = {
                "spec": orjson.dumps(spec.model_dump(mode="json")).decode(),
                "enabled": enabled,
                "updated_at": now,
            }
            if "enabled" in changes:
                values["disabled_reason"] = None if enabled else "disabled by an administrator"
            if set_key:
                values["key_ciphertext"] = self._box.encrypt(api_key) if api_key else None
            await conn.execute(update(channels_table).where(channels_table.c.name == name).values(**values))
        await self.load()

    async def remove(self, name: str) -> None:
        """Delete a channel added at run time; it stops serving here at once (other
        processes drop it on their next :meth:`load`)."""
        async with self._engine.begin() as conn:
            res = await conn.execute(
                delete(channels_table).where(channels_table.c.name == name, channels_table.c.spec != "")
            )
        if res.rowcount == 0:
            self._refuse_catalog(name, "remove")
            raise KeyError(name)
        await self.load()

    def _refuse_catalog(self, name: str, verb: str) -> None:
        if name in self._catalog:
            raise ChannelConflict(f"channel {name!r} comes from the catalog file; {verb} it there (or disable it here)")

    def _reindex(self) -> None:
        self._by_pool = serving_index(self._specs.values(), self._mixed_pools)
