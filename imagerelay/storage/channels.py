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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.catalog.model import ChannelSpec
from imagerelay.secretbox import SecretBox
from imagerelay.storage.schema import channels as channels_table


class ChannelConflict(ValueError):
    pass


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
    ) -> None:
        self._engine = engine
        self._box = box
        self._catalog = {c.name: c for c in catalog_channels}
        self._env = env if env is not None else os.environ
        self._specs: dict[str, ChannelSpec] = dict(self._catalog)
        self._keys: dict[str, str | None] = {}
        self._disabled: dict[str, str] = {}
        self._by_pool: dict[str, tuple[ChannelSpec, ...]] = {}
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
        self._specs, self._keys, self._disabled = specs, keys, disabled
        self._reindex()

    async def add(self, spec: ChannelSpec, api_key: str | None) -> None:
        if spec.name in self._specs:
            raise ChannelConflict(f"a channel named {spec.name!r} already exists")
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

    async def set_enabled(self, name: str, enabled: bool, reason: str | None = None) -> None:
        if name not in self._specs:
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

    def _reindex(self) -> None:
        by_pool: dict[str, list[ChannelSpec]] = {}
        for spec in self._specs.values():
            for pool in spec.pools:
                by_pool.setdefault(pool, []).append(spec)
        self._by_pool = {pool: tuple(specs) for pool, specs in by_pool.items()}
