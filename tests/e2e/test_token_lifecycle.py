"""Token and user lifecycle over HTTP and the CLI (issue 11): list (never the secret),
update limits, revoke (this process at once, another sharing the database within one
token-cache TTL), disable users, the groups a user may create keys in, a user's own keys
only, the job list with paging, and queued jobs whose key or user lost its right.

Two gateways share one database (A and B, neither runs jobs, so jobs stay queued until a
third process with workers picks them up); each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import backend
from tests.support.gateway import Gateway, run_gateway
from tests.support.services import drop_postgres_database, fresh_postgres_database

ADMIN = "admin-secret-for-token-lifecycle"
H = {"Authorization": f"Bearer {ADMIN}"}
TTL = 1.0  # IMAGERELAY_TOKEN_CACHE_TTL_S of both gateways


@dataclass
class Pair:
    a: Gateway
    b: Gateway
    env: dict[str, str]
    tmp: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("token-lifecycle")
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    dropped = None
    if request.param == "postgresql":
        url, dropped = fresh_postgres_database()
    else:
        url = f"sqlite:///{tmp / 'a' / 'imagerelay.db'}"
    env = {
        "IMAGERELAY_ADMIN_TOKEN": ADMIN,
        "IMAGERELAY_TOKEN_CACHE_TTL_S": str(TTL),
        "IMAGERELAY_JOB_WORKERS": "0",
        "IMAGERELAY_DATABASE_URL": url,
        "IMAGERELAY_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    try:
        with run_gateway(tmp / "a", extra_env=env) as a, run_gateway(tmp / "b", extra_env=env) as b:
            yield Pair(a, b, env, tmp)
    finally:
        if dropped:
            drop_postgres_database(dropped)


def cli(p: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGERELAY_DATABASE_URL": p.env["IMAGERELAY_DATABASE_URL"]}
    return subprocess.run(
        [sys.executable, "-m", "imagerelay", *args, "--data-dir", str(p.a.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_token(p: Pair, user: str, group: str = "default", credit: str | None = "5", **fields: Any) -> dict[str, Any]:
    r = httpx.post(f"{p.a.base_url}/admin/tokens", headers=H, json={"user": user, "group": group, **fields})
    assert r.status_code == 201, r.text
    if credit:
        assert (
            httpx.post(
                f"{p.a.base_url}/admin/users/{user}/balance",
                headers=H,
                json={"amount_usd": credit, "reason": "test credit"},
            ).status_code
            == 200
        )
    return r.json()  # type: ignore[no-any-return]


def models_status(gw: Gateway, token: str) -> httpx.Response:
    return httpx.get(gw.v1 + "/models", headers=auth(token))


def assert_error(r: httpx.Response, status: int, code: str, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and error["param"] == param, error
    return str(error["message"])


def wait_refused(gw: Gateway, token: str, code: str, bound_s: float) -> float:
    """Seconds until ``gw`` refuses ``token`` with ``code``; fails past ``bound_s``."""
    started = time.monotonic()
    while True:
        r = models_status(gw, token)
        if r.status_code == 401:
            assert r.json()["error"]["code"] == code, r.text
            return time.monotonic() - started
        assert time.monotonic() - started < bound_s, f"still accepted after {bound_s} s"
        time.sleep(0.05)


def user_of(p: Pair, name: str) -> dict[str, Any]:
    users = httpx.get(f"{p.a.base_url}/admin/users", headers=H).json()["data"]
    return next(u for u in users if u["name"] == name)  # type: ignore[no-any-return]


# -- listing ---------------------------------------------------------------------------


def test_token_lists_never_show_the_secret_or_its_hash(pair: Pair) -> None:
    made = new_token(pair, "lister", name="prod", rpm=60, spend_cap_usd="2.5", allowed_models=["gpt-image-2"])
    plain = made["token"]
    assert made["key_hint"] == f"{plain[:7]}…{plain[-4:]}" and made["status"] == "active"
    assert made["limits"] == {
        "rpm": 60,
        "concurrency": None,
        "spend_cap_usd": "2.500000",
        "allowed_models": ["gpt-image-2"],
    }
    second = new_token(pair, "lister", name="ci", credit=None)
    listings = [
        httpx.get(f"{pair.a.base_url}/admin/tokens", headers=H, params={"user": "lister"}),
        httpx.get(f"{pair.a.base_url}/admin/tokens/{made['id']}", headers=H),
        httpx.get(pair.a.v1 + "/account/tokens", headers=auth(second["token"])),
        cli(pair, "tokens", "list", "--user", "lister", "--json"),
        cli(pair, "tokens", "list", "--user", "lister"),
    ]
    digest = hashlib.sha256(plain.encode()).hexdigest()
    for listing in listings:
        text = listing.text if isinstance(listing, httpx.Response) else listing.stdout
        assert plain not in text and digest not in text and plain[7:-4] not in text
        assert made["key_hint"] in text
    data = listings[0].json()["data"]
    assert [t["name"] for t in data] == ["ci", "prod"]  # newest first
    assert all("token" not in t for t in data)
    assert json.loads(listings[3].stdout) == data


def test_admin_token_filters_and_paging(pair: Pair) -> None:
    ids = [
        new_token(pair, "pager", group=g, credit=None)["id"] for g in ("default", "default", "Sora2Official", "default")
    ]
    httpx.delete(f"{pair.a.base_url}/admin/tokens/{ids[1]}", headers=H)

    def page(**params: Any) -> dict[str, Any]:
        r = httpx.get(f"{pair.a.base_url}/admin/tokens", headers=H, params={"user": "pager", **params})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    assert [t["id"] for t in page(group="Sora2Official")["data"]] == [ids[2]]
    assert [t["id"] for t in page(status="revoked")["data"]] == [ids[1]]
    assert [t["id"] for t in page(status="active")["data"]] == [ids[3], ids[2], ids[0]]
    first = page(limit=3)
    assert first["has_more"] and [t["id"] for t in first["data"]] == ids[:0:-1]
    rest = page(limit=3, before=first["next_before"])
    assert not rest["has_more"] and [t["id"] for t in rest["data"]] == [ids[0]]
    for params, param in (
        ({"status": "gone"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"before": "9" * 40}, "before"),
        ({"group": "a\u0000b"}, "group"),
    ):
        assert_error(
            httpx.get(f"{pair.a.base_url}/admin/tokens", headers=H, params=params), 400, "invalid_value", param
        )
    assert_error(
        httpx.get(f"{pair.a.base_url}/admin/tokens", headers=H, params={"user": "nobody"}), 404, "not_found", "user"
    )


# -- revocation and updates -----------------------------------------------------------


@pytest.mark.parametrize("group", [[1], {"a": 1}, 7, None])
def test_a_group_that_is_no_string_is_a_400_naming_it(pair: Pair, group: Any) -> None:
    """A list or object as the group was a 500 (an unhashable value tested against the catalog)."""
    made = httpx.post(f"{pair.a.base_url}/admin/tokens", headers=H, json={"user": "groupless", "group": group})
    assert_error(made, 400, "invalid_value", "group")
    own = new_token(pair, "groupless-self", credit=None)["token"]
    if group is not None:  # absent or null: the calling key's own group
        mine = httpx.post(pair.a.v1 + "/account/tokens", headers=auth(own), json={"group": group})
        assert_error(mine, 400, "invalid_value", "group")


def test_revoke_is_refused_here_at_once_and_by_another_process_within_the_ttl(pair: Pair) -> None:
    token = new_token(pair, "revokee", credit=None)
    for gw in (pair.a, pair.b):  # both processes have the token cached as valid
        assert models_status(gw, token["token"]).status_code == 200
    r = httpx.delete(f"{pair.a.base_url}/admin/tokens/{token['id']}", headers=H)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert_error(models_status(pair.a, token["token"]), 401, "revoked_api_key")  # at once, here
    took = wait_refused(pair.b, token["token"], "revoked_api_key", bound_s=TTL + 2)
    assert took <= TTL + 2
    # Revoking twice is harmless; an unknown or absurd id is a 404.
    assert httpx.delete(f"{pair.a.base_url}/admin/tokens/{token['id']}", headers=H).status_code == 200
    for bad in ("999999", "9" * 30, "abc", "-1"):
        assert_error(httpx.delete(f"{pair.a.base_url}/admin/tokens/{bad}", headers=H), 404, "not_found", "token_id")


def test_cli_revoke_from_another_process_is_refused_within_the_ttl(pair: Pair) -> None:
    token = new_token(pair, "cli-revokee", credit=None)
    assert models_status(pair.a, token["token"]).status_code == 200
    result = cli(pair, "tokens", "revoke", str(token["id"]))
    assert result.returncode == 0, result.stderr
    wait_refused(pair.a, token["token"], "revoked_api_key", bound_s=TTL + 2)
    missing = cli(pair, "tokens", "revoke", "987654")
    assert missing.returncode == 2 and "no token" in missing.stderr and "Traceback" not in missing.stderr


def test_patch_sets_and_clears_limits(pair: Pair) -> None:
    token = new_token(pair, "patched", credit=None)
    url = f"{pair.a.base_url}/admin/tokens/{token['id']}"
    r = httpx.patch(
        url,
        headers=H,
        json={
            "name": "renamed",
            "rpm": 5,
            "concurrency": 2,
            "spend_cap_usd": "1.25",
            "allowed_models": ["gpt-image-2-vip"],
            "expires_at": 4_000_000_000,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "renamed" and body["expires_at"] == 4_000_000_000
    assert body["limits"] == {
        "rpm": 5,
        "concurrency": 2,
        "spend_cap_usd": "1.250000",
        "allowed_models": ["gpt-image-2-vip"],
    }
    cleared = httpx.patch(url, headers=H, json={"rpm": None, "allowed_models": None, "expires_at": None}).json()
    assert cleared["limits"]["rpm"] is None and cleared["limits"]["allowed_models"] is None
    assert cleared["expires_at"] is None and cleared["limits"]["concurrency"] == 2 and cleared["name"] == "renamed"
    for patch, param in (
        ({"rmp": 5}, "rmp"),
        ({"rpm": 0}, "rpm"),
        ({"spend_cap_usd": "1e3"}, "spend_cap_usd"),
        ({"allowed_models": []}, "allowed_models"),
        ({"allowed_models": ["dall-e-9"]}, "allowed_models"),
        ({"name": None}, "name"),
        ({"expires_at": "soon"}, "expires_at"),
    ):
        code = "unknown_parameter" if param == "rmp" else "invalid_value"
        assert_error(httpx.patch(url, headers=H, json=patch), 400, code, param)


def test_an_expiry_set_by_patch_refuses_the_key_at_once(pair: Pair) -> None:
    token = new_token(pair, "expiring", credit=None)
    assert models_status(pair.a, token["token"]).status_code == 200
    assert (
        httpx.patch(f"{pair.a.base_url}/admin/tokens/{token['id']}", headers=H, json={"expires_at": 1000}).json()[
            "status"
        ]
        == "expired"
    )
    assert_error(models_status(pair.a, token["token"]), 401, "expired_api_key")


def test_allowed_models_restrict_calls_in_the_official_error_shape(pair: Pair) -> None:
    token = new_token(pair, "restricted")
    h = auth(token["token"])
    assert (
        httpx.patch(
            f"{pair.a.base_url}/admin/tokens/{token['id']}", headers=H, json={"allowed_models": ["gpt-image-2"]}
        ).status_code
        == 200
    )
    r = httpx.post(
        pair.a.v1 + "/images/generations",
        headers=h,
        json={"model": "gpt-image-2-vip", "prompt": "x", "size": "1280x1280"},
    )
    message = assert_error(r, 403, "model_not_allowed", "model")
    assert "gpt-image-2" in message
    assert [m["id"] for m in models_status(pair.a, token["token"]).json()["data"]] == ["gpt-image-2"]
    ok = httpx.post(
        pair.a.v1 + "/images/generations", headers=h, json={"model": "gpt-image-2", "prompt": "x"}, timeout=60
    )
    assert ok.status_code == 200, ok.text


def test_the_spend_cap_error_says_the_worst_case_exceeds_the_cap(pair: Pair) -> None:
    token = new_token(pair, "capped", spend_cap_usd="0.02")  # a default-group call costs $0.03
    r = httpx.post(
        pair.a.v1 + "/images/generations", headers=auth(token["token"]), json={"model": "gpt-image-2", "prompt": "x"}
    )
    message = assert_error(r, 429, "insufficient_quota")
    assert "$0.030000" in message and "exceeds" in message and "reached" not in message


# -- users ------------------------------------------------------------------------------


def test_a_disabled_users_tokens_are_refused_with_a_clear_error(pair: Pair) -> None:
    token = new_token(pair, "suspended")
    for gw in (pair.a, pair.b):
        assert models_status(gw, token["token"]).status_code == 200
    r = httpx.patch(f"{pair.a.base_url}/admin/users/suspended", headers=H, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    message = assert_error(models_status(pair.a, token["token"]), 401, "account_disabled")
    assert "disabled" in message
    wait_refused(pair.b, token["token"], "account_disabled", bound_s=TTL + 2)
    gen = httpx.post(
        pair.a.v1 + "/images/generations", headers=auth(token["token"]), json={"model": "gpt-image-2", "prompt": "x"}
    )
    assert_error(gen, 401, "account_disabled")
    assert (
        httpx.patch(f"{pair.a.base_url}/admin/users/suspended", headers=H, json={"disabled": False}).status_code == 200
    )
    assert models_status(pair.a, token["token"]).status_code == 200
    # The CLI does the same (from another process: within the TTL here).
    assert cli(pair, "users", "update", "suspended", "--disable").returncode == 0
    wait_refused(pair.a, token["token"], "account_disabled", bound_s=TTL + 2)
    assert user_of(pair, "suspended")["disabled"] is True
    assert cli(pair, "users", "update", "suspended", "--enable").returncode == 0


def test_user_patch_refuses_bad_fields(pair: Pair) -> None:
    new_token(pair, "flagged", credit=None)
    url = f"{pair.a.base_url}/admin/users/flagged"
    for body, code, param in (
        ({"disabled": "yes"}, "invalid_value", "disabled"),
        ({"allowed_groups": ["nope"]}, "invalid_value", "allowed_groups"),
        ({"balance": 5}, "unknown_parameter", "balance"),
    ):
        assert_error(httpx.patch(url, headers=H, json=body), 400, code, param)
    assert_error(
        httpx.patch(f"{pair.a.base_url}/admin/users/ghost", headers=H, json={"disabled": True}), 404, "not_found"
    )
    r = httpx.patch(url, headers=H, json={"is_admin": True})
    assert r.status_code == 200 and r.json()["is_admin"] is True


# -- a user's own keys -------------------------------------------------------------------


def test_a_user_creates_keys_only_in_groups_they_may_use(pair: Pair) -> None:
    mine = new_token(pair, "self-service", credit=None)
    h = auth(mine["token"])
    url = pair.a.v1 + "/account/tokens"
    message = assert_error(
        httpx.post(url, headers=h, json={"group": "Sora2Official", "name": "x"}), 403, "group_not_allowed", "group"
    )
    assert "default" in message
    created = httpx.post(url, headers=h, json={"name": "laptop", "rpm": 10})
    assert created.status_code == 201, created.text
    assert created.json()["group"] == "default" and created.json()["limits"]["rpm"] == 10
    assert models_status(pair.a, created.json()["token"]).status_code == 200
    assert (
        httpx.patch(
            f"{pair.a.base_url}/admin/users/self-service",
            headers=H,
            json={"allowed_groups": ["default", "Sora2Official"]},
        ).status_code
        == 200
    )
    assert httpx.post(url, headers=h, json={"group": "Sora2Official"}).status_code == 201
    assert (
        httpx.patch(
            f"{pair.a.base_url}/admin/users/self-service", headers=H, json={"allowed_groups": ["Sora2Official"]}
        ).status_code
        == 200
    )
    assert_error(httpx.post(url, headers=h, json={"group": "default"}), 403, "group_not_allowed", "group")
    assert_error(
        httpx.post(url, headers=h, json={"group": "default", "secret": "x"}), 400, "unknown_parameter", "secret"
    )


def test_a_user_sees_renames_and_revokes_only_their_own_keys(pair: Pair) -> None:
    alice = new_token(pair, "alice-own", credit=None)
    bob = new_token(pair, "bob-own", credit=None)
    h = auth(alice["token"])
    url = pair.a.v1 + "/account/tokens"
    listed = httpx.get(url, headers=h).json()["data"]
    assert {t["user"] for t in listed} == {"alice-own"}
    for method, body in (("PATCH", {"name": "mine now"}), ("DELETE", None)):
        r = httpx.request(method, f"{url}/{bob['id']}", headers=h, json=body)
        assert_error(r, 404, "not_found", "token_id")
    assert models_status(pair.a, bob["token"]).status_code == 200
    spare = httpx.post(url, headers=h, json={"name": "spare"}).json()
    renamed = httpx.patch(f"{url}/{spare['id']}", headers=h, json={"name": "renamed", "concurrency": 3})
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert httpx.delete(f"{url}/{spare['id']}", headers=h).json()["status"] == "revoked"
    assert_error(models_status(pair.a, spare["token"]), 401, "revoked_api_key")
    # A restricted key cannot mint or change keys (it could lift its own limits).
    capped = httpx.post(url, headers=h, json={"name": "capped", "spend_cap_usd": "1"}).json()
    assert_error(httpx.post(url, headers=auth(capped["token"]), json={"name": "free"}), 403, "restricted_api_key")
    assert_error(
        httpx.patch(f"{url}/{capped['id']}", headers=auth(capped["token"]), json={"spend_cap_usd": None}),
        403,
        "restricted_api_key",
    )
    assert httpx.get(url, headers=auth(capped["token"])).status_code == 200


# -- CLI parity -----------------------------------------------------------------------------


def test_cli_tokens_create_update_list_revoke(pair: Pair) -> None:
    made = cli(
        pair,
        "tokens",
        "create",
        "--user",
        "cli-owner",
        "--group",
        "default",
        "--name",
        "batch",
        "--rpm",
        "7",
        "--concurrency",
        "2",
        "--spend-cap",
        "3.5",
        "--allowed-model",
        "gpt-image-2",
        "--expires-at",
        "2100-01-01T00:00:00",
    )
    assert made.returncode == 0, made.stderr
    plain = made.stdout.strip()
    rows = json.loads(cli(pair, "tokens", "list", "--user", "cli-owner", "--json").stdout)
    assert len(rows) == 1 and rows[0]["key_hint"] == f"{plain[:7]}…{plain[-4:]}"
    assert rows[0]["limits"] == {
        "rpm": 7,
        "concurrency": 2,
        "spend_cap_usd": "3.500000",
        "allowed_models": ["gpt-image-2"],
    }
    assert rows[0]["expires_at"] == 4102444800
    token_id = str(rows[0]["id"])
    assert (
        cli(
            pair, "tokens", "update", token_id, "--rpm", "9", "--clear", "spend_cap_usd", "--name", "nightly"
        ).returncode
        == 0
    )
    row = json.loads(cli(pair, "tokens", "list", "--user", "cli-owner", "--json").stdout)[0]
    assert row["name"] == "nightly" and row["limits"]["rpm"] == 9 and row["limits"]["spend_cap_usd"] is None
    for args in (("--rpm", "0"), ("--spend-cap", "1e3"), ("--allowed-model", "dall-e-9"), ("--clear", "balance")):
        bad = cli(pair, "tokens", "update", token_id, *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert cli(pair, "tokens", "revoke", token_id).returncode == 0
    assert json.loads(cli(pair, "tokens", "list", "--user", "cli-owner", "--status", "revoked", "--json").stdout)[0][
        "id"
    ] == int(token_id)


# -- jobs ---------------------------------------------------------------------------------


def submit(gw: Gateway, token: str, **fields: Any) -> str:
    r = httpx.post(
        gw.v1 + "/images/jobs",
        headers=auth(token),
        json={"endpoint": "generations", "model": "gpt-image-2", "prompt": "queued", **fields},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_the_job_list_pages_through_the_callers_jobs(pair: Pair) -> None:
    token = new_token(pair, "jobber")["token"]
    other = new_token(pair, "other-jobber")["token"]
    ids = [submit(pair.a, token) for _ in range(5)]
    submit(pair.a, other)
    seen: list[str] = []
    before = None
    while True:
        r = httpx.get(
            pair.a.v1 + "/images/jobs",
            headers=auth(token),
            params={"limit": 2, **({"before": before} if before else {})},
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["data"]) <= 2
        for job in page["data"]:
            poll = httpx.get(f"{pair.a.v1}/images/jobs/{job['id']}", headers=auth(token)).json()
            assert job == poll and "b64_json" not in json.dumps(job)
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        before = page["next_before"]
    assert seen == ids[::-1]  # newest first, every job once, none of the other user's
    queued = httpx.get(pair.a.v1 + "/images/jobs", headers=auth(token), params={"status": "queued"}).json()
    assert len(queued["data"]) == 5
    assert (
        httpx.get(pair.a.v1 + "/images/jobs", headers=auth(token), params={"status": "succeeded"}).json()["data"] == []
    )
    for params, param in (
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"status": "done"}, "status"),
        ({"before": "imgjob_not_mine"}, "before"),
    ):
        assert_error(
            httpx.get(pair.a.v1 + "/images/jobs", headers=auth(token), params=params), 400, "invalid_value", param
        )
    # Another user's job id as a cursor is refused like an unknown one.
    theirs = httpx.get(pair.a.v1 + "/images/jobs", headers=auth(other)).json()["data"][0]["id"]
    assert_error(
        httpx.get(pair.a.v1 + "/images/jobs", headers=auth(token), params={"before": theirs}),
        400,
        "invalid_value",
        "before",
    )


def test_queued_jobs_of_a_revoked_key_or_disabled_user_fail_cleanly(pair: Pair) -> None:
    revoked = new_token(pair, "job-revoked")
    keeper = new_token(pair, "job-revoked", credit=None)["token"]  # to poll with
    disabled = new_token(pair, "job-disabled")
    expired = new_token(pair, "job-expired")
    jobs = {
        "revoked": submit(pair.a, revoked["token"]),
        "disabled": submit(pair.a, disabled["token"]),
        "expired": submit(pair.a, expired["token"]),
    }
    for name in ("job-revoked", "job-disabled", "job-expired"):
        assert user_of(pair, name)["held_micros"] == 30_000  # the job's hold
    assert httpx.delete(f"{pair.a.base_url}/admin/tokens/{revoked['id']}", headers=H).status_code == 200
    assert (
        httpx.patch(f"{pair.a.base_url}/admin/users/job-disabled", headers=H, json={"disabled": True}).status_code
        == 200
    )
    assert (
        httpx.patch(
            f"{pair.a.base_url}/admin/tokens/{expired['id']}", headers=H, json={"expires_at": time.time() + 0.5}
        ).status_code
        == 200
    )
    time.sleep(0.6)
    (pair.tmp / "c").mkdir()
    with run_gateway(pair.tmp / "c", extra_env={**pair.env, "IMAGERELAY_JOB_WORKERS": "2"}) as c:
        deadline = time.monotonic() + 30
        while any(user_of(pair, n)["held_micros"] for n in ("job-revoked", "job-disabled", "job-expired")):
            assert time.monotonic() < deadline, "holds not released"
            time.sleep(0.1)
        assert (
            httpx.patch(f"{c.base_url}/admin/users/job-disabled", headers=H, json={"disabled": False}).status_code
            == 200
        )
        for key, token, code in (
            ("revoked", keeper, "revoked_api_key"),
            ("disabled", disabled["token"], "account_disabled"),
        ):
            job = httpx.get(f"{c.v1}/images/jobs/{jobs[key]}", headers=auth(token)).json()
            assert job["status"] == "failed" and job["error"]["code"] == code, job
            records = httpx.get(c.v1 + "/account/usage", headers=auth(token)).json()["data"]
            assert [(r["status"], r["error_code"], r["cost_micros"]) for r in records] == [(401, code, 0)]
        for name in ("job-revoked", "job-disabled", "job-expired"):
            user = user_of(pair, name)
            assert user["balance_micros"] == 5_000_000 and user["held_micros"] == 0
    audit = cli(pair, "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_revoking_a_key_or_disabling_a_user_ends_their_queued_jobs_at_once(pair: Pair) -> None:
    """No worker runs anywhere here: the revoke (admin API, or the user's own DELETE) and
    the disable themselves fail the queued jobs, release their holds and send their
    webhooks; other keys' jobs stay queued."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    delivered: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            delivered.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        by_admin = new_token(pair, "end-revoked")
        by_owner = new_token(pair, "end-revoked", credit=None)
        spared = new_token(pair, "end-revoked", credit=None)
        disabled = new_token(pair, "end-disabled")
        ids = {
            "admin": submit(pair.a, by_admin["token"], webhook_url=hook),
            "owner": submit(pair.a, by_owner["token"]),
            "spared": submit(pair.a, spared["token"]),
            "disabled": submit(pair.a, disabled["token"], webhook_url=hook),
        }
        assert user_of(pair, "end-revoked")["held_micros"] == 90_000
        assert httpx.delete(f"{pair.a.base_url}/admin/tokens/{by_admin['id']}", headers=H).status_code == 200
        assert (
            httpx.delete(f"{pair.a.v1}/account/tokens/{by_owner['id']}", headers=auth(spared["token"])).status_code
            == 200
        )
        assert user_of(pair, "end-revoked")["held_micros"] == 30_000  # only the spared key's job holds
        assert (
            httpx.patch(f"{pair.a.base_url}/admin/users/end-disabled", headers=H, json={"disabled": True}).status_code
            == 200
        )
        assert user_of(pair, "end-disabled")["held_micros"] == 0
        assert (
            httpx.patch(f"{pair.a.base_url}/admin/users/end-disabled", headers=H, json={"disabled": False}).status_code
            == 200
        )
        for key, code, token in (
            ("admin", "revoked_api_key", spared["token"]),
            ("owner", "revoked_api_key", spared["token"]),
            ("disabled", "account_disabled", disabled["token"]),
        ):
            job = httpx.get(f"{pair.a.v1}/images/jobs/{ids[key]}", headers=auth(token)).json()
            assert job["status"] == "failed" and job["error"]["code"] == code, job
        assert (
            httpx.get(f"{pair.a.v1}/images/jobs/{ids['spared']}", headers=auth(spared["token"])).json()["status"]
            == "queued"
        )
        deadline = time.monotonic() + 30
        while len(delivered) < 2:
            assert time.monotonic() < deadline, delivered
            time.sleep(0.1)
        assert sorted((d["id"], d["status"], d["error"]["code"]) for d in delivered) == sorted(
            [(ids["admin"], "failed", "revoked_api_key"), (ids["disabled"], "failed", "account_disabled")]
        )
        records = httpx.get(pair.a.v1 + "/account/usage", headers=auth(disabled["token"])).json()["data"]
        assert [(r["status"], r["error_code"], r["cost_micros"]) for r in records] == [(401, "account_disabled", 0)]
    finally:
        server.shutdown()


# -- small things -------------------------------------------------------------------------


def test_pricing_prints_plain_decimals(pair: Pair) -> None:
    for group, token in pair.a.tokens.items():
        body = httpx.get(pair.a.v1 + "/pricing", headers=auth(token)).json()
        prices = [e.get("price_per_call_usd") for e in body["data"]] + [
            v for e in body["data"] for v in (e.get("usd_per_million_tokens") or {}).values()
        ]
        prices += [e["multiplier"] for e in body["data"] if "multiplier" in e]
        for price in filter(None, prices):
            assert "E" not in price and "e" not in price, (group, price)
    official = httpx.get(pair.a.v1 + "/pricing", headers=auth(pair.a.tokens["Sora2Official"])).json()["data"][0]
    assert all(v.replace(".", "").isdigit() for v in official["usd_per_million_tokens"].values())


def test_audit_passes(pair: Pair) -> None:
    result = cli(pair, "audit")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_demo_banner_shows_the_real_balance_and_live_tokens(tmp_path: Path) -> None:
    with run_gateway(tmp_path) as gw:
        assert "$100.000000 available" in gw.log_text()
        r = httpx.post(
            gw.v1 + "/images/generations",
            headers=auth(gw.tokens["default"]),
            json={"model": "gpt-image-2", "prompt": "x"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagerelay",
            "tokens",
            "list",
            "--user",
            "demo",
            "--group",
            "default",
            "--json",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=backend.cli_env(tmp_path),
    )
    revoked_id = json.loads(listed.stdout)[0]["id"]
    subprocess.run(
        [sys.executable, "-m", "imagerelay", "tokens", "revoke", str(revoked_id), "--data-dir", str(tmp_path)],
        capture_output=True,
        check=True,
        env=backend.cli_env(tmp_path),
    )
    with run_gateway(tmp_path) as again:
        assert "$99.970000 available" in again.log_text()
        # A revoked demo token is replaced, not printed again.
        assert again.tokens["default"] != gw.tokens["default"]
        assert models_status(again, again.tokens["default"]).status_code == 200
