"""The channel directory: catalog channels plus channels added at run time.

Catalog channels take their key from the environment variable they name; channels
added through the admin API or CLI keep theirs encrypted in the database. The hot
path reads an in-memory index (pool -> channels) that is rebuilt when an admin
changes something and reloaded periodically, so other worker processes catch up.
Keys never leave this module except into a connector's outgoing request.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Mapping, Sequence
from urllib.parse import urlsplit
from dataclasses import dataclass

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.catalog.model import ChannelSpec
from imagerelay.secretbox import SecretBox
from imagerelay.storage.schema import channels as channels_table


class ChannelConflict(ValueError):
    pass


class ChannelInvalid(ValueError):
    """A channel field that would break calls through it; ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


# Names that go into URL paths (Azure deployments), query strings (api-version), logs
# and admin URLs: letters, digits and a few separators, nothing a URL or header treats
# specially. Azure deployment names allow exactly these, up to 64 characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_channel(spec: ChannelSpec, api_key: str | None, known_pools: Collection[str] | None) -> None:
    """Refuse a channel whose fields would make every call through it fail oddly.

    Checked where channels come in at run time (admin API, CLI), before anything is
    stored: an http(s) base URL with a host and nothing the connector appends to
    (no query, fragment or credentials); pools some route uses; a key that can be
    sent as a header value; names that are safe in URLs. Raises :class:`ChannelInvalid`.
    """
    if not _NAME.fullmatch(spec.name):
        raise ChannelInvalid("name", "use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    if spec.base_url is not None:
        _check_base_url(spec.base_url)
    if not spec.pools:
        raise ChannelInvalid("pools", "list at least one pool")
    if known_pools is not None:
        unknown = sorted(set(spec.pools) - set(known_pools))
        if unknown:
            raise ChannelInvalid(
                "pools", f"no route uses pool(s) {', '.join(unknown)}; known pools: {', '.join(sorted(known_pools))}"
            )
    if api_key is not None and (not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key):
        raise ChannelInvalid("api_key", "must be printable ASCII without spaces (it is sent as a header value)")
    if spec.api_key_env is not None and (
        not _ENV_NAME.fullmatch(spec.api_key_env) or spec.api_key_env.upper().startswith("IMAGERELAY_")
    ):
        raise ChannelInvalid("api_key_env", "must be an environment variable name outside the gateway's own settings")
    if spec.api_version is not None and not _VERSION.fullmatch(spec.api_version):
        raise ChannelInvalid("api_version", "use letters, digits, '.', '_' or '-' (e.g. 2025-04-01-preview)")
    if spec.proxy is not None:
        _check_proxy(spec.proxy)
    if spec.ca_bundle is not None and not os.path.isfile(spec.ca_bundle):
        raise ChannelInvalid("ca_bundle", "must be the path of a PEM file on the gateway's machine")
    for source, target in spec.model_map.items():
        # Azure puts the deployment name into the URL path; others send it as the model.
        pattern = _NAME if spec.type == "azure" else _MODEL
        if not _MODEL.fullmatch(source) or not pattern.fullmatch(target):
            raise ChannelInvalid("model_map", f"{source!r} -> {target!r} is not a valid model or deployment name")


def _check_proxy(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ChannelInvalid("proxy", f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https", "socks5", "socks5h") or not parts.hostname:
        raise ChannelInvalid("proxy", "must be an http://, https:// or socks5:// URL with a host")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ChannelInvalid("proxy", "must be printable ASCII without spaces")


def _check_base_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ChannelInvalid("base_url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChannelInvalid("base_url", "must be an http:// or https:// URL with a host, e.g. https://api.openai.com/v1")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ChannelInvalid("base_url", "must be printable ASCII without spaces")
    if parts.username is not None or parts.password is not None:
        raise ChannelInvalid("base_url", "must not carry credentials; give the key as api_key")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ChannelInvalid("base_url", "must not have a query or fragment (the connector adds its own)")
    if port == 0:
        raise ChannelInvalid("base_url", "port 0 is not a port")


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
    ) -> None:
        self._engine = engine
        self._box = box
        self._catalog = {c.name: c for c in catalog_channels}
        self._env = env if env is not None else os.environ
        self._known_pools = known_pools  # pools some route uses; None: not checked
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
