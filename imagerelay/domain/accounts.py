"""Who calls: API keys (tokens) and users as values, and the one rule for whether a key
may act now. Storage (storage/accounts.py) reads and writes them; the HTTP edge, the
console, job workers and the limiters use them. Nothing here touches a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imagerelay.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class TokenLimits:
    spend_cap_micros: int | None = None
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    concurrency_limit: int | None = None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    user_id: int
    user_name: str
    group: str
    name: str
    expires_at: float | None
    revoked: bool
    is_admin: bool
    spend_cap_micros: int | None = None
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    concurrency_limit: int | None = None
    user_disabled: bool = False

    @property
    def restricted(self) -> bool:
        """A key limited in what it may spend or call: it may not mint keys without those limits."""
        return self.spend_cap_micros is not None or self.allowed_models is not None


def check_token(info: TokenInfo | None, now: float) -> TokenInfo:
    """The one rule for whether a token may act now, for the HTTP edge and for job
    workers alike: unknown, revoked, expired, or its user disabled is a 401."""
    if info is None:
        raise AuthenticationFailed(
            "Incorrect API key provided. Check the key, or create one on the console's token page: /console/tokens."
        )
    if info.revoked:
        raise AuthenticationFailed("This API key has been revoked; create a new one.", code="revoked_api_key")
    if info.expires_at is not None and info.expires_at < now:
        raise AuthenticationFailed("This API key has expired; create a new one.", code="expired_api_key")
    if info.user_disabled:
        raise AuthenticationFailed(
            "This account is disabled; contact the gateway's administrator.", code="account_disabled"
        )
    return info


TokenStatus = Literal["active", "revoked", "expired"]
TOKEN_STATUSES: tuple[TokenStatus, ...] = ("active", "revoked", "expired")


@dataclass(frozen=True, slots=True)
class TokenView:
    """A token as lists show it: never its secret or hash, only a hint to recognise it."""

    id: int
    user_id: int
    user_name: str
    name: str
    group: str
    hint: str  # "sk-abcd…wxyz"
    created_at: float
    expires_at: float | None
    revoked: bool
    spend_cap_micros: int | None
    spent_micros: int
    held_micros: int
    allowed_models: tuple[str, ...] | None
    rpm_limit: int | None
    concurrency_limit: int | None

    def status(self, now: float) -> TokenStatus:
        if self.revoked:
            return "revoked"
        return "expired" if self.expires_at is not None and self.expires_at < now else "active"


@dataclass(frozen=True, slots=True)
class TokenFilter:
    user_id: int | None = None
    group: str | None = None
    status: TokenStatus | None = None
    limit: int = 100
    before_id: int | None = None


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    name: str
    is_admin: bool
    balance_micros: int
    held_micros: int
    disabled: bool = False
    allowed_groups: tuple[str, ...] | None = None  # None: the groups of the user's tokens

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros
