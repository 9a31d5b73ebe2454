"""Pure rules for what an operator or a user may set on tokens and users.

One reading of a token's settings for every door: the admin API, the self-service API
(``/v1/account/tokens``) and the CLI all pass their fields through
:func:`token_changes`, so a limit accepted by one is accepted by all, and refused with
the same message and ``param``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from imagerelay.domain.money import MoneyInputError, parse_usd
from imagerelay.errors import InvalidRequest, UnknownParameter

MAX_UNIX_TIME = 253_402_300_799  # 9999-12-31: beyond it a date is a typo
# Per-token limits are counters in memory and Redis: bounded so no typo becomes an
# integer the database or Redis cannot hold.
MAX_TOKEN_LIMIT = 1_000_000
MAX_ALLOWED_MODELS = 64

# API field -> token column. ``None`` for a limit clears it.
TOKEN_FIELDS = {
    "name": "name",
    "expires_at": "expires_at",
    "spend_cap_usd": "spend_cap_micros",
    "allowed_models": "allowed_models",
    "rpm": "rpm_limit",
    "concurrency": "concurrency_limit",
}


def label(value: object, limit: int = 128) -> str | None:
    """A user or token name, or a ledger reason, as the database can store it on every
    backend (PostgreSQL refuses NUL and text past the column's length): else None."""
    if isinstance(value, str) and value.strip() and len(value) <= limit and value.isprintable():
        return value
    return None


def usd_field(body: Mapping[str, Any], name: str, *, signed: bool = False) -> int | None:
    """An optional money field, as micro-dollars (see :func:`~imagerelay.domain.money.parse_usd`)."""
    if body.get(name) is None:
        return None
    try:
        return parse_usd(body[name], signed=signed)
    except MoneyInputError as exc:
        raise InvalidRequest(f"{name} {exc}.", param=name) from None


def refuse_unknown(body: Mapping[str, Any], known: Collection[str]) -> None:
    """A misspelt limit ("rmp") must not be silently ignored."""
    for key in body:
        if key not in known:
            raise UnknownParameter(f"Unknown field {key!r}; expected: {', '.join(sorted(known))}.", param=key)


def name_list(value: object, field: str, *, offered: Collection[str] | None = None) -> tuple[str, ...]:
    """A non-empty list of distinct names (models, groups), each one of ``offered`` if given."""
    if not (isinstance(value, list) and value and len(value) <= MAX_ALLOWED_MODELS and all(label(v) for v in value)):
        raise InvalidRequest(
            f"{field} must be a non-empty list of up to {MAX_ALLOWED_MODELS} names (or null for no restriction).",
            param=field,
        )
    if offered is not None:
        unknown = [v for v in value if v not in offered]
        if unknown:
            raise InvalidRequest(
                f"{field}: {', '.join(map(repr, unknown))} not offered here; "
                f"choose from: {', '.join(offered) or 'none'}.",
                param=field,
            )
    return tuple(dict.fromkeys(value))


def token_changes(body: Mapping[str, Any], *, models: Collection[str] | None = None) -> dict[str, object]:
    """The token columns set by ``body``'s fields among :data:`TOKEN_FIELDS` (absent:
    unchanged; ``null``: no limit). ``models``: the models of the token's group, which
    ``allowed_models`` must name. Raises :class:`InvalidRequest` naming the field."""
    changes: dict[str, object] = {}
    if "name" in body:
        name = label(body["name"])
        if name is None:
            raise InvalidRequest("name must be up to 128 printable characters.", param="name")
        changes["name"] = name
    if "spend_cap_usd" in body:
        changes["spend_cap_micros"] = usd_field(body, "spend_cap_usd")
    if "allowed_models" in body:
        value = body["allowed_models"]
        changes["allowed_models"] = None if value is None else name_list(value, "allowed_models", offered=models)
    for key in ("rpm", "concurrency"):
        if key in body:
            value = body[key]
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKEN_LIMIT
            ):
                raise InvalidRequest(f"{key} must be an integer from 1 to {MAX_TOKEN_LIMIT:,} (or null).", param=key)
            changes[TOKEN_FIELDS[key]] = value
    if "expires_at" in body:
        expires = body["expires_at"]
        if expires is not None and (
            not isinstance(expires, (int, float)) or isinstance(expires, bool) or not 0 <= expires <= MAX_UNIX_TIME
        ):
            raise InvalidRequest("expires_at must be a unix time (or null for never).", param="expires_at")
        changes["expires_at"] = float(expires) if expires is not None else None
    return changes


def user_changes(body: Mapping[str, Any], *, groups: Collection[str]) -> dict[str, object]:
    """The user columns set by ``body`` (``disabled``, ``is_admin``, ``allowed_groups``:
    a list of catalog groups, or null for the default: the groups of the user's tokens)."""
    refuse_unknown(body, ("disabled", "is_admin", "allowed_groups"))
    changes: dict[str, object] = {}
    for key in ("disabled", "is_admin"):
        if key in body:
            if not isinstance(body[key], bool):
                raise InvalidRequest(f"{key} must be true or false.", param=key)
            changes[key] = body[key]
    if "allowed_groups" in body:
        value = body["allowed_groups"]
        changes["allowed_groups"] = None if value is None else name_list(value, "allowed_groups", offered=groups)
    return changes
