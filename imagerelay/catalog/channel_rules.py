"""Rules for channels, pure: the fields of one channel, and what the pools of a whole
channel set must look like. Used where channels come in (catalog load, admin API, CLI)
and at start-up, so a channel that would fail every call, or a route nobody serves, is
refused with a message naming it instead of surfacing later as a 503 or a fake image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from imagerelay.catalog.model import ChannelSpec


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

    Checked wherever channels come in (catalog load, admin API, CLI), before anything
    is stored or served: an http(s) base URL with a host and nothing the connector appends to
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
        raise ChannelInvalid(
            "base_url", "must be an http:// or https:// URL with a host, e.g. https://api.openai.com/v1"
        )
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ChannelInvalid("base_url", "must be printable ASCII without spaces")
    if parts.username is not None or parts.password is not None:
        raise ChannelInvalid("base_url", "must not carry credentials; give the key as api_key")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ChannelInvalid("base_url", "must not have a query or fragment (the connector adds its own)")
    if port == 0:
        raise ChannelInvalid("base_url", "port 0 is not a port")


def serving_index(
    channels: Iterable[ChannelSpec], mixed_pools: Collection[str] = ()
) -> dict[str, tuple[ChannelSpec, ...]]:
    """Pool -> the channels that may serve it, enabled or not (the pool skips disabled ones).

    A simulator channel never serves a pool that has a real channel, enabled or not,
    unless the catalog lists the pool under ``mixed_simulator_pools``: otherwise a real
    channel that is disabled or added at run time would silently hand customers
    locally rendered pictures instead of an error.
    """
    by_pool: dict[str, list[ChannelSpec]] = {}
    for spec in channels:
        for pool in spec.pools:
            by_pool.setdefault(pool, []).append(spec)
    index: dict[str, tuple[ChannelSpec, ...]] = {}
    for pool, specs in by_pool.items():
        if pool not in mixed_pools and any(s.type != "simulator" for s in specs):
            specs = [s for s in specs if s.type != "simulator"]
        index[pool] = tuple(specs)
    return index


@dataclass(frozen=True, slots=True)
class PoolProblems:
    """What is wrong with how a set of channels covers the routes (labels name the routes)."""

    mixed: tuple[str, ...]  # pools where enabled simulator and real channels meet, not allowed
    unserved: tuple[str, ...]  # routes whose pool no enabled channel serves
    simulator_only: tuple[str, ...]  # routes only simulator channels serve (fine for demos)


def pool_problems(
    routes: Mapping[str, str], channels: Iterable[ChannelSpec], mixed_pools: Collection[str] = ()
) -> PoolProblems:
    """Check ``routes`` (label -> pool) against ``channels``."""
    channels = list(channels)
    mixed = []
    for pool in sorted({p for c in channels for p in c.pools}):
        enabled = [c for c in channels if pool in c.pools and c.enabled]
        if pool not in mixed_pools and {c.type == "simulator" for c in enabled} == {True, False}:
            sims = ", ".join(c.name for c in enabled if c.type == "simulator")
            reals = ", ".join(c.name for c in enabled if c.type != "simulator")
            mixed.append(f"pool {pool!r} has simulator channel(s) {sims} and real channel(s) {reals}")
    index = serving_index(channels, mixed_pools)
    unserved, simulator_only = [], []
    for label, pool in routes.items():
        serving = [c for c in index.get(pool, ()) if c.enabled]
        if not serving:
            unserved.append(f"{label} (pool {pool!r})")
        elif all(c.type == "simulator" for c in serving):
            simulator_only.append(f"{label} (pool {pool!r})")
    return PoolProblems(tuple(mixed), tuple(unserved), tuple(simulator_only))
