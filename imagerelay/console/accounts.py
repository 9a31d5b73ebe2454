"""Console account rules: sign-up, sign-in with throttling, password changes.

Shared by the pages and the CLI (``imagerelay user ...``); hashing runs on
``services.passwords`` (its own bounded threads, see :mod:`imagerelay.console.passwords`), so a
sign-in never stalls the event loop, nor a burst of them everything else, for the time scrypt takes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import orjson

from imagerelay.console.passwords import password_problem
from imagerelay.services import Services
from imagerelay.storage.logins import InviteInvalid, Logins, NameTaken

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{2,63}$")
NAME_HELP = "3 to 64 letters, digits or . _ @ -, starting with a letter or digit"


class SignInRefused(Exception):
    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.throttled = throttled


class SignUpRefused(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class SignedIn:
    user_id: int
    session: str  # the new session's cookie value


def signup_mode(services: Services) -> str:
    return services.settings.signup or "off"


def signup_groups(services: Services) -> tuple[str, ...]:
    configured = [g.strip() for g in services.settings.signup_groups.split(",") if g.strip()]
    return tuple(g for g in (configured or services.catalog.groups) if g in services.catalog.groups)


async def set_password(services: Services, logins: Logins, user_id: int, name: str, password: str) -> None:
    """Set a user's password (refusing a weak one with ``ValueError``); every session of
    the user ends."""
    problem = password_problem(password, name)
    if problem:
        raise ValueError(problem)
    await logins.set_password_hash(user_id, await services.passwords.hash(password))


async def sign_up(
    services: Services, logins: Logins, name: str, password: str, confirm: str, invite: str | None
) -> int:
    mode = signup_mode(services)
    if mode == "off":
        raise SignUpRefused("Sign-up is closed on this gateway; ask its administrator for an account.", "name")
    if not NAME_RULE.match(name):
        raise SignUpRefused(f"The user name must be {NAME_HELP}.", "name")
    problem = password_problem(password, name)
    if problem:
        raise SignUpRefused(problem, "password")
    if password != confirm:
        raise SignUpRefused("The two passwords differ.", "confirm")
    if mode == "invite" and not (invite and len(invite) <= 100 and await logins.invite_usable(invite)):
        raise SignUpRefused("This invitation code is unknown, used or expired.", "invite")
    hashed = await services.passwords.hash(password)
    groups = orjson.dumps(list(signup_groups(services))).decode()
    try:
        user_id = await logins.create_user(
            name, hashed, allowed_groups=groups, invite=invite if mode == "invite" else None
        )
    except NameTaken:
        raise SignUpRefused("That user name is taken; choose another.", "name") from None
    except InviteInvalid:
        raise SignUpRefused("This invitation code is unknown, used or expired.", "invite") from None
    credit = services.settings.signup_credit_usd
    if credit > 0:
        await services.billing.adjust(user_id, int(credit * 1_000_000), "sign-up credit", kind="topup")
    return user_id


async def sign_in(services: Services, logins: Logins, name: str, password: str, address: str) -> SignedIn:
    """Check the password under the throttle; a success opens a new session.

    Both counters are checked before the password, so a locked account stays locked even
    for the right password until the window passes (otherwise a guesser learns when it hit)."""
    settings = services.settings
    window = settings.login_lockout_s
    account_key, address_key = "user:" + name.lower()[:128], "addr:" + address
    if (
        await logins.failures(account_key, window) >= settings.login_max_failures
        or await logins.failures(address_key, window) >= settings.login_max_failures_per_address
    ):
        minutes = max(1, math.ceil(window / 60))
        raise SignInRefused(f"Too many failed sign-ins. Try again in {minutes} minutes.", throttled=True)
    user = await services.accounts.find_user(name) if len(name) <= 128 else None
    stored = await logins.password_hash(user.id) if user is not None else None
    ok = await services.passwords.verify(password, stored)
    if user is None or not ok:
        await logins.record_failure([account_key, address_key], window)
        raise SignInRefused("Wrong user name or password.")
    if user.disabled:
        raise SignInRefused("This account is disabled; contact the gateway's administrator.")
    await logins.clear_failures(account_key)
    await logins.purge_sessions(idle_s=settings.session_idle_s, max_s=settings.session_max_s)
    return SignedIn(user.id, await logins.open_session(user.id))
