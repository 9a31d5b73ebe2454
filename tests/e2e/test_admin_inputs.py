"""Hostile admin inputs over HTTP and on the command line (issue 10): money amounts and
spend caps are plain bounded decimals, a debit never takes a balance below zero, and an
admin user's expired token opens nothing under /admin/*. ``imagerelay audit`` passes after.
Each test runs against a gateway on SQLite and one on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, run_gateway
from tests.support.services import drop_postgres_database, fresh_postgres_database

ADMIN = "admin-secret-for-input-tests"
H = {"Authorization": f"Bearer {ADMIN}"}

HOSTILE_AMOUNTS: list[Any] = [
    "Infinity",
    "-Infinity",
    "NaN",
    "1e100",
    "1E3",
    "1_000",
    "\u0661\u0660",
    "\uff11\uff10",
    "\u00b2",
    "99999999999999999999999",
    "9" * 5000,
    "1000000000.000001",
    "1.0000001",
    " 10",
    "+10",
    ".5",
    "0x10",
    "0",
    "-0",
    "",
    1.5,
    10,
    1e100,
    True,
    None,
    ["1"],
]


_database_url: dict[str, str] = {}  # gateway base URL -> its database URL ("": SQLite)
_created: set[tuple[str, str]] = set()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {"IMAGERELAY_ADMIN_TOKEN": ADMIN}
    dropped = None
    if request.param == "postgresql":
        env["IMAGERELAY_DATABASE_URL"], dropped = fresh_postgres_database()
    try:
        with run_gateway(tmp_path_factory.mktemp("admin-inputs"), extra_env=env) as g:
            _database_url[g.base_url] = env.get("IMAGERELAY_DATABASE_URL", "")
            yield g
    finally:
        if dropped:
            drop_postgres_database(dropped)


def cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGERELAY_DATABASE_URL": _database_url[gw.base_url]} if _database_url[gw.base_url] else None
    return subprocess.run(
        [sys.executable, "-m", "imagerelay", *args, "--data-dir", str(gw.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def new_user(gw: Gateway, name: str, *, admin: bool = False) -> None:
    if (gw.base_url, name) not in _created:
        assert cli(gw, "users", "create", name, *(["--admin"] if admin else [])).returncode == 0
        _created.add((gw.base_url, name))


def balance_of(gw: Gateway, name: str) -> int:
    users = httpx.get(f"{gw.base_url}/admin/users", headers=H).json()["data"]
    return int(next(u for u in users if u["name"] == name)["balance_micros"])


def adjust(gw: Gateway, name: str, amount: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/admin/users/{name}/balance", headers=H, json={"amount_usd": amount, "reason": "input test"}
    )


def assert_error(r: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("amount", HOSTILE_AMOUNTS, ids=lambda v: repr(v)[:24])
def test_hostile_amounts_are_400_and_change_nothing(gw: Gateway, amount: Any) -> None:
    new_user(gw, "target")
    before = balance_of(gw, "target")
    assert_error(adjust(gw, "target", amount), 400, "amount_usd")
    assert balance_of(gw, "target") == before


def test_plain_amounts_are_exact(gw: Gateway) -> None:
    new_user(gw, "exact")
    assert adjust(gw, "exact", "25").json()["balance_micros"] == 25_000_000
    assert adjust(gw, "exact", "0.000001").json()["balance_micros"] == 25_000_001
    assert adjust(gw, "exact", "-0.5").json()["balance_micros"] == 24_500_001
    assert adjust(gw, "exact", "1000000000").json()["balance_micros"] == 1_000_000_024_500_001


def test_a_debit_larger_than_the_balance_is_refused(gw: Gateway) -> None:
    new_user(gw, "debtor")
    assert adjust(gw, "debtor", "5").status_code == 200
    error = assert_error(adjust(gw, "debtor", "-5.000001"), 400, "amount_usd")
    assert error["code"] == "balance_limit" and "$5.000000" in error["message"]
    assert balance_of(gw, "debtor") == 5_000_000
    assert adjust(gw, "debtor", "-5").json()["balance_micros"] == 0
    assert_error(adjust(gw, "debtor", "-0.000001"), 400, "amount_usd")


@pytest.mark.parametrize("cap", ["-1", "-0.01", "Infinity", "1e100", "1_000", "\u0661", "99999999999999999999", 5, 5.0])
def test_hostile_spend_caps_are_400(gw: Gateway, cap: Any) -> None:
    r = httpx.post(
        f"{gw.base_url}/admin/tokens", headers=H, json={"user": "capped", "group": "default", "spend_cap_usd": cap}
    )
    assert_error(r, 400, "spend_cap_usd")


@pytest.mark.parametrize(
    ("key", "value"),
    [("rpm", 18446744073709551615), ("concurrency", 10**12), ("rpm", 0), ("expires_at", -1), ("expires_at", 1.7e308)],
)
def test_hostile_token_limits_are_400(gw: Gateway, key: str, value: Any) -> None:
    r = httpx.post(f"{gw.base_url}/admin/tokens", headers=H, json={"user": "limits", "group": "default", key: value})
    assert_error(r, 400, key)


def test_a_plain_spend_cap_is_accepted(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.base_url}/admin/tokens", headers=H, json={"user": "capped", "group": "default", "spend_cap_usd": "5.25"}
    )
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("name", "value"),
    [("status", "9" * 30), ("before", "9" * 5000), ("since", "inf"), ("until", "nan"), ("limit", "\u00b2")],
)
def test_hostile_usage_filters_are_400(gw: Gateway, name: str, value: str) -> None:
    assert_error(httpx.get(f"{gw.base_url}/admin/usage", headers=H, params={name: value}), 400, name)


@pytest.mark.parametrize("amount", ["1e100", "Infinity", "1_000", "\u0661\u0660", "99999999999999999999", "0"])
def test_cli_balance_add_refuses_hostile_amounts(gw: Gateway, amount: str) -> None:
    new_user(gw, "cli-target")
    before = balance_of(gw, "cli-target")
    result = cli(gw, "balance", "add", "--user", "cli-target", "--amount", amount, "--reason", "t")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert balance_of(gw, "cli-target") == before


def test_cli_balance_add_refuses_an_overdraft(gw: Gateway) -> None:
    new_user(gw, "cli-debtor")
    assert cli(gw, "balance", "add", "--user", "cli-debtor", "--amount", "2.5", "--reason", "t").returncode == 0
    result = cli(gw, "balance", "add", "--user", "cli-debtor", "--amount", "-3", "--reason", "t")
    assert result.returncode == 2 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert cli(gw, "balance", "add", "--user", "cli-debtor", "--amount", "-2.5", "--reason", "t").returncode == 0
    assert balance_of(gw, "cli-debtor") == 0


def test_an_expired_admin_token_opens_nothing(gw: Gateway) -> None:
    new_user(gw, "boss", admin=True)
    fresh = httpx.post(f"{gw.base_url}/admin/tokens", headers=H, json={"user": "boss", "group": "default"})
    expired = httpx.post(
        f"{gw.base_url}/admin/tokens",
        headers=H,
        json={"user": "boss", "group": "default", "name": "old", "expires_at": 1000},
    )
    assert fresh.status_code == expired.status_code == 201
    ok = {"Authorization": f"Bearer {fresh.json()['token']}"}
    old = {"Authorization": f"Bearer {expired.json()['token']}"}
    assert httpx.get(f"{gw.base_url}/admin/users", headers=ok).status_code == 200
    for method, path, body in (
        ("GET", "/admin/users", None),
        ("GET", "/admin/channels", None),
        ("GET", "/admin/usage", None),
        ("POST", "/admin/users/boss/balance", {"amount_usd": "1000", "reason": "self-service"}),
        ("POST", "/admin/tokens", {"user": "boss", "group": "default"}),
    ):
        r = httpx.request(method, gw.base_url + path, headers=old, json=body)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "expired_api_key"
    assert balance_of(gw, "boss") == 0


def test_admin_api_without_credentials_is_401(gw: Gateway) -> None:
    r = httpx.get(f"{gw.base_url}/admin/users")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.get(f"{gw.base_url}/admin/users", headers={"Authorization": "Bearer sk-not-a-token"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("field", "value"),
    [("user", "x" * 129), ("user", "a\u0000b"), ("user", ""), ("user", 5), ("name", "n" * 129), ("name", "t\u0000")],
)
def test_hostile_names_are_400(gw: Gateway, field: str, value: Any) -> None:
    body = {"user": "named", "group": "default", field: value}
    assert_error(httpx.post(f"{gw.base_url}/admin/tokens", headers=H, json=body), 400, field)


@pytest.mark.parametrize("reason", ["r" * 1001, "a\u0000b", " ", 7])
def test_hostile_reasons_are_400(gw: Gateway, reason: Any) -> None:
    new_user(gw, "reasoned")
    r = httpx.post(f"{gw.base_url}/admin/users/reasoned/balance", headers=H, json={"amount_usd": "1", "reason": reason})
    assert_error(r, 400, "reason")


@pytest.mark.parametrize("name", ["a%00b", "x" * 300])
def test_hostile_user_names_in_urls_are_404(gw: Gateway, name: str) -> None:
    r = httpx.post(f"{gw.base_url}/admin/users/{name}/balance", headers=H, json={"amount_usd": "1", "reason": "r"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{gw.base_url}/admin/usage", headers=H, params={"user": name.replace("%00", "\u0000")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_audit_passes_after_the_money_tests(gw: Gateway) -> None:
    result = cli(gw, "audit")
    assert result.returncode == 0, result.stdout + result.stderr
