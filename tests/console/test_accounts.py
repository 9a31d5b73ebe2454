"""Console accounts over HTTP against the real gateway: sign-up modes, sign-in/out,
password change, CSRF, cookie flags, session fixation, login throttling, the console
switched off, and a path prefix behind a proxy."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.console.http import SESSION, Visitor, set_cookie_header
from tests.support import backend
from tests.support.gateway import Gateway, run_gateway
from tests.support.services import drop_postgres_database, fresh_postgres_database

PASSWORD = "correct horse battery"


def _address() -> str:
    return f"198.51.100.{secrets.randbelow(250) + 1}"


_database_url: dict[str, str] = {}  # gateway base URL -> its database URL ("": SQLite)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {
        "IMAGERELAY_CONSOLE": "true",
        "IMAGERELAY_SIGNUP": "open",
        "IMAGERELAY_SIGNUP_GROUPS": "default",
        "IMAGERELAY_LOGIN_MAX_FAILURES": "3",
        "IMAGERELAY_LOGIN_MAX_FAILURES_PER_ADDRESS": "6",
    }
    dropped = None
    if request.param == "postgresql":
        env["IMAGERELAY_DATABASE_URL"], dropped = fresh_postgres_database()
    try:
        with run_gateway(tmp_path_factory.mktemp("accounts"), extra_env=env) as g:
            _database_url[g.base_url] = env.get("IMAGERELAY_DATABASE_URL", "")
            yield g
    finally:
        if dropped:
            drop_postgres_database(dropped)


def visitor(gw: Gateway, **kw: object) -> Visitor:
    return Visitor(gw.base_url, address=_address(), **kw)  # type: ignore[arg-type]


def signed_up(gw: Gateway, name: str | None = None) -> tuple[Visitor, str]:
    name = name or "u" + secrets.token_hex(4)
    v = visitor(gw)
    r = v.post("/console/signup", {"name": name, "password": PASSWORD, "confirm": PASSWORD})
    assert r.status_code == 303, r.text
    return v, name


def cli(gw: Gateway, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = backend.cli_env(gw.data_dir)  # the suite's backend for a gateway this module did not start
    if _database_url.get(gw.base_url):
        env["IMAGERELAY_DATABASE_URL"] = _database_url[gw.base_url]
    return subprocess.run(
        [sys.executable, "-m", "imagerelay", *args, "--data-dir", str(gw.data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# -- sign-up -------------------------------------------------------------------------------


def test_open_sign_up_signs_in_and_limits_groups(gw: Gateway) -> None:
    v, name = signed_up(gw)
    with v:
        home = v.get("/console/")
        assert home.status_code == 200 and f"Welcome, {name}" in home.text
        # IMAGERELAY_SIGNUP_GROUPS=default: the picker offers that group only.
        picker = v.get("/console/tokens/new").text
        assert 'value="default"' in picker and "GPTImage2 Enterprise" not in picker
        refused = v.post(
            "/console/tokens/new", {"name": "k", "group": "GPTImage2 Enterprise"}, csrf_from="/console/tokens/new"
        )
        assert refused.status_code == 403 and "may not create keys in group" in refused.text
        # The name is taken now, whatever its case of arrival.
    again = visitor(gw)
    with again:
        r = again.post("/console/signup", {"name": name, "password": PASSWORD, "confirm": PASSWORD})
        assert r.status_code == 400 and "taken" in r.text and again.session is None


def test_sign_up_refuses_weak_or_mismatched_passwords(gw: Gateway) -> None:
    with visitor(gw) as v:
        short = v.post("/console/signup", {"name": "shorty1", "password": "short", "confirm": "short"})
        assert short.status_code == 400 and "at least 10 characters" in short.text
        differ = v.post("/console/signup", {"name": "differ1", "password": PASSWORD, "confirm": PASSWORD + "x"})
        assert differ.status_code == 400 and "differ" in differ.text
        assert v.session is None


def test_sign_up_off_and_invite_only(tmp_path: Path) -> None:
    (tmp_path / "off").mkdir()
    (tmp_path / "inv").mkdir()
    with run_gateway(tmp_path / "off", extra_env={"IMAGERELAY_SIGNUP": "off"}) as off, Visitor(off.base_url) as v:
        assert v.get("/console/signup").status_code == 404
        token = v.csrf()
        r = v.http.post(
            "/console/signup", data={"csrf_token": token, "name": "someone", "password": PASSWORD, "confirm": PASSWORD}
        )
        assert r.status_code == 404 and v.session is None
        assert "Sign up" not in v.get("/console/signin").text
    with run_gateway(tmp_path / "inv", extra_env={"IMAGERELAY_SIGNUP": "invite"}) as inv:
        with Visitor(inv.base_url) as v:
            bare = v.post("/console/signup", {"name": "invitee", "password": PASSWORD, "confirm": PASSWORD})
            assert bare.status_code == 400 and "invitation code" in bare.text and v.session is None
        made = cli(inv, "invite", "create", "--note", "for invitee")
        assert made.returncode == 0, made.stderr
        code = made.stdout.strip()
        assert code.startswith("inv-")
        with Visitor(inv.base_url) as v:
            ok = v.post(
                "/console/signup", {"name": "invitee", "password": PASSWORD, "confirm": PASSWORD, "invite": code}
            )
            assert ok.status_code == 303 and v.session
        with Visitor(inv.base_url) as v:  # one use only
            again = v.post(
                "/console/signup", {"name": "second", "password": PASSWORD, "confirm": PASSWORD, "invite": code}
            )
            assert again.status_code == 400 and "unknown, used or expired" in again.text


# -- sign-in, sign-out, password -------------------------------------------------------------


def test_sign_in_and_out(gw: Gateway) -> None:
    creds = gw.console["user"]
    with visitor(gw) as v:
        assert v.get("/console/").headers["location"].endswith("/console/signin")
        wrong = v.sign_in(creds["name"], "not the password")
        assert wrong.status_code == 400 and "Wrong user name or password" in wrong.text and v.session is None
        ok = v.sign_in(creds["name"], creds["password"])
        assert ok.status_code == 303 and ok.headers["location"] == "/console/"
        assert "Welcome, demo" in v.get("/console/").text
        sid = v.session
        out = v.post("/console/signout", {}, csrf_from="/console/")
        assert out.status_code == 303 and v.session is None
        # The session is closed on the server, not only forgotten by this browser.
        with visitor(gw) as replay:
            replay.http.cookies.set(SESSION, sid or "", path="/console")
            assert replay.get("/console/").status_code == 303


def test_next_parameter_is_only_a_console_path(gw: Gateway) -> None:
    creds = gw.console["user"]
    with visitor(gw) as v:
        assert v.get("/console/usage").headers["location"] == "/console/signin?next=%2Fconsole%2Fusage"
        token = v.csrf()
        evil = v.http.post(
            "/console/signin",
            data={
                "csrf_token": token,
                "name": creds["name"],
                "password": creds["password"],
                "next": "//evil.example/x",
            },
        )
        assert evil.status_code == 303 and evil.headers["location"] == "/console/"


def test_password_change_ends_other_sessions(gw: Gateway) -> None:
    v, name = signed_up(gw)
    other, _ = visitor(gw), None
    with v, other:
        assert other.sign_in(name, PASSWORD).status_code == 303
        wrong = v.post(
            "/console/password",
            {"current": "nope nope nope", "password": "a new password 1", "confirm": "a new password 1"},
        )
        assert wrong.status_code == 400 and "current password is wrong" in wrong.text
        ok = v.post(
            "/console/password", {"current": PASSWORD, "password": "a new password 1", "confirm": "a new password 1"}
        )
        assert ok.status_code == 303
        assert v.get("/console/").status_code == 200  # this browser got a fresh session
        assert other.get("/console/").status_code == 303  # the other one is signed out
    with visitor(gw) as fresh:
        assert fresh.sign_in(name, PASSWORD).status_code == 400
        assert fresh.sign_in(name, "a new password 1").status_code == 303


def test_first_admin_from_the_cli(gw: Gateway) -> None:
    name = "boss" + secrets.token_hex(3)
    made = cli(gw, "user", "create", name, "--admin")
    assert made.returncode == 0, made.stderr
    weak = cli(gw, "user", "set-password", name, stdin="short\n")
    assert weak.returncode == 2 and "at least 10 characters" in weak.stderr + weak.stdout
    done = cli(gw, "user", "set-password", name, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    with visitor(gw) as v:
        assert v.sign_in(name, PASSWORD).status_code == 303
        assert 'href="/console/admin/users"' in v.get("/console/").text
    assert cli(gw, "user", "set-password", "nobody-here", stdin=PASSWORD + "\n").returncode == 2


# -- CSRF ------------------------------------------------------------------------------------


def test_forms_without_the_csrf_token_are_refused(gw: Gateway) -> None:
    creds = gw.console["user"]
    with visitor(gw) as v:
        v.get("/console/signin")  # the anonymous token's cookie
        no_token = v.http.post("/console/signin", data={"name": creds["name"], "password": creds["password"]})
        assert no_token.status_code == 403 and v.session is None
        forged = v.http.post(
            "/console/signin", data={"name": creds["name"], "password": creds["password"], "csrf_token": "x" * 43}
        )
        assert forged.status_code == 403 and v.session is None
        assert v.sign_in(creds["name"], creds["password"]).status_code == 303
        # Signed in: the anonymous token no longer counts, only the session's.
        anon = v.http.cookies.get("imagerelay_csrf")
        tokens = v.get("/console/tokens/new")
        assert tokens.status_code == 200
        r = v.http.post("/console/tokens/new", data={"csrf_token": anon, "name": "x", "group": "default"})
        assert r.status_code == 403 and "security token" in r.text
        r = v.http.post("/console/tokens/new", data={"name": "x", "group": "default"})
        assert r.status_code == 403
        # A cross-site page cannot read the token, so it cannot sign anyone out either.
        assert v.http.post("/console/signout", data={}).status_code == 403
        assert v.get("/console/").status_code == 200


def test_json_endpoint_needs_the_csrf_header(gw: Gateway) -> None:
    v, _ = signed_up(gw)
    with v:
        created = v.post(
            "/console/tokens/new", {"name": "json-rename", "group": "default"}, csrf_from="/console/tokens/new"
        )
        token_id = re.search(r'action="/console/tokens/(\d+)"', created.text)
        assert created.status_code == 200 and token_id, created.text[:500]
        path = f"/console/tokens/{token_id.group(1)}"
        missing = v.http.patch(path, json={"name": "renamed"})
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
        wrong = v.http.patch(path, json={"name": "renamed"}, headers={"x-csrf-token": "nope"})
        assert wrong.status_code == 403
        good = v.http.patch(path, json={"name": "renamed"}, headers={"x-csrf-token": v.csrf("/console/")})
        assert good.status_code == 200 and good.json()["name"] == "renamed"
    with visitor(gw) as anon:
        assert anon.http.patch(path, json={"name": "x"}, headers={"x-csrf-token": "x"}).status_code == 401


# -- cookies and sessions ------------------------------------------------------------------


def test_session_cookie_flags(gw: Gateway) -> None:
    creds = gw.console["user"]
    with visitor(gw) as v:
        r = v.sign_in(creds["name"], creds["password"])
        cookie = set_cookie_header(r, SESSION).lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
        assert "secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    # Behind a TLS-terminating proxy on a trusted address (loopback by default).
    with Visitor(gw.base_url, address=_address()) as v:
        v.http.headers["x-forwarded-proto"] = "https"
        form = v.get("/console/signin")
        assert "; secure" in set_cookie_header(form, "imagerelay_csrf").lower()
        token = form.cookies[
            "imagerelay_csrf"
        ]  # httpx keeps a Secure cookie off plain HTTP: send it as the browser would
        r = v.http.post(
            "/console/signin",
            data={"csrf_token": token, "name": creds["name"], "password": creds["password"]},
            headers={"cookie": f"imagerelay_csrf={token}"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        assert "; secure" in set_cookie_header(r, SESSION).lower()


def test_sign_in_never_keeps_the_session_id_it_was_given(gw: Gateway) -> None:
    creds = gw.console["user"]
    with visitor(gw) as v:
        planted = secrets.token_urlsafe(32)  # an attacker's value, set before sign-in
        v.http.cookies.set(SESSION, planted, domain="127.0.0.1", path="/console")
        v.sign_in(creds["name"], creds["password"])
        first = v.session
        assert first and first != planted
        v.post(
            "/console/signin", {"name": creds["name"], "password": creds["password"]}, csrf_from="/console/"
        )  # signing in again, signed in
        second = v.session
        assert second and second != first
        assert v.get("/console/").status_code == 200
    with visitor(gw) as old:
        old.http.cookies.set(SESSION, first, path="/console")
        assert old.get("/console/").status_code == 303  # the previous id is closed


def test_sessions_expire(tmp_path: Path) -> None:
    """Idle and absolute expiry, with short settings: a session unused for longer than
    IMAGERELAY_SESSION_IDLE_S is refused, and so is one older than IMAGERELAY_SESSION_MAX_S
    however busy (both checked on the server: the cookie alone proves nothing)."""
    import time

    env = {"IMAGERELAY_SESSION_IDLE_S": "2", "IMAGERELAY_SESSION_MAX_S": "6"}
    with run_gateway(tmp_path, extra_env=env) as g, Visitor(g.base_url) as v:
        creds = g.console["user"]
        assert v.sign_in(creds["name"], creds["password"]).status_code == 303
        time.sleep(3)  # past the idle limit
        assert v.get("/console/").status_code == 303
        assert v.sign_in(creds["name"], creds["password"]).status_code == 303
        busy_until = time.monotonic() + 7  # past the absolute limit, never idle for 2 s
        while time.monotonic() < busy_until:
            v.get("/console/")
            time.sleep(0.3)
        assert v.get("/console/").status_code == 303


# -- throttling ------------------------------------------------------------------------------


def test_failed_sign_ins_lock_the_account(gw: Gateway) -> None:
    v0, name = signed_up(gw)
    v0.close()
    for _ in range(3):  # IMAGERELAY_LOGIN_MAX_FAILURES=3, each from another address
        with visitor(gw) as v:
            assert v.sign_in(name, "wrong password!").status_code == 400
    with visitor(gw) as v:
        locked = v.sign_in(name, PASSWORD)  # even the right password, from a fresh address
        assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text and v.session is None
    other = gw.console["user"]
    with visitor(gw) as v:  # other accounts are not locked
        assert v.sign_in(other["name"], other["password"]).status_code == 303


def test_failed_sign_ins_lock_the_address(gw: Gateway) -> None:
    address = _address()
    for i in range(6):  # IMAGERELAY_LOGIN_MAX_FAILURES_PER_ADDRESS=6, over different accounts
        with Visitor(gw.base_url, address=address) as v:
            assert v.sign_in(f"guess{i}-{secrets.token_hex(2)}", "wrong password!").status_code == 400
    creds = gw.console["user"]
    with Visitor(gw.base_url, address=address) as v:
        assert v.sign_in(creds["name"], creds["password"]).status_code == 429
    with visitor(gw) as v:
        assert v.sign_in(creds["name"], creds["password"]).status_code == 303


def test_a_burst_of_sign_ins_is_bounded_and_starves_nothing(tmp_path: Path) -> None:
    """Password hashing has threads of its own and a short waiting line
    (IMAGERELAY_PASSWORD_HASH_THREADS=1, ..._QUEUE=2 here): a burst of sign-ins past it is
    answered 503 with retry-after at once instead of queueing, and /healthz and an API call
    made during the burst are answered while hashes are still running."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    env = {"IMAGERELAY_PASSWORD_HASH_THREADS": "1", "IMAGERELAY_PASSWORD_HASH_QUEUE": "2"}
    with run_gateway(tmp_path, extra_env=env) as g:
        creds = g.console["user"]
        visitors = [Visitor(g.base_url, address=_address()) for _ in range(24)]
        done: list[str] = []  # completion order
        lock = threading.Lock()
        started = threading.Barrier(len(visitors) + 1)

        def sign_in(v: Visitor) -> httpx.Response:
            token = v.csrf()
            started.wait()
            r = v.http.post(
                "/console/signin", data={"csrf_token": token, "name": creds["name"], "password": creds["password"]}
            )
            with lock:
                done.append("signin")
            return r

        try:
            with ThreadPoolExecutor(len(visitors)) as threads:
                answers = [threads.submit(sign_in, v) for v in visitors]
                started.wait()
                with httpx.Client(base_url=g.base_url, timeout=30) as http:
                    health = http.get("/healthz")
                    with lock:
                        done.append("healthz")
                    models = http.get("/v1/models", headers={"authorization": f"Bearer {g.tokens['default']}"})
                    with lock:
                        done.append("api")
                results = [a.result() for a in answers]
            assert health.status_code == 200 and models.status_code == 200, (health.text, models.text)
            statuses = sorted(r.status_code for r in results)
            assert set(statuses) == {303, 503}, statuses
            busy = [r for r in results if r.status_code == 503]
            assert all(r.headers.get("retry-after") == "1" and "Try again" in r.text for r in busy)
            # The extra calls did not wait behind the burst's hashes.
            assert done.index("api") < len(done) - 1 and done[-1] == "signin", done
        finally:
            for v in visitors:
                v.close()
        with Visitor(g.base_url, address=_address()) as v:  # the line drained: sign-in works again
            assert v.sign_in(creds["name"], creds["password"]).status_code == 303


# -- deployment ----------------------------------------------------------------------------


def test_console_off_is_404(tmp_path: Path) -> None:
    with run_gateway(tmp_path, extra_env={"IMAGERELAY_CONSOLE": "false"}) as off:
        assert off.console == {}  # --demo makes no console accounts either
        for path in (
            "/",
            "/playground",
            "/console",
            "/console/",
            "/console/signin",
            "/console/tokens",
            "/console/static/console.css",
        ):
            r = httpx.get(off.base_url + path)
            assert r.status_code == 404, path
            assert r.json()["error"]["type"] == "invalid_request_error"
        # The API still works, and its 401 points to the console's token page.
        r = httpx.post(off.v1 + "/images/generations", json={"model": "gpt-image-2", "prompt": "x"})
        assert r.status_code == 401 and "/console/tokens" in r.json()["error"]["message"]


def test_path_prefix_behind_a_proxy(tmp_path: Path) -> None:
    """uvicorn --root-path as IMAGERELAY_ROOT_PATH: the proxy strips /relay; every link,
    redirect and cookie carries it. X-Forwarded-* from an untrusted address is ignored."""
    env = {"IMAGERELAY_ROOT_PATH": "/relay", "IMAGERELAY_FORWARDED_ALLOW_IPS": "10.255.255.1"}
    with run_gateway(tmp_path, extra_env=env) as g, Visitor(g.base_url) as v:
        assert v.get("/").headers["location"] == "/relay/console/"
        assert v.get("/playground").headers["location"] == "/relay/console/playground"
        page = v.get("/console/signin")
        assert page.status_code == 200
        links = re.findall(r'(?:href|action|src)="([^"]+)"', page.text)
        assert links and all(link.startswith(("/relay/console/", "#")) for link in links), links
        css = re.search(r'href="/relay(/console/static/console\.css\?v=\w+)"', page.text)
        assert css and v.get(css.group(1)).status_code == 200
        # The browser would send the cookies under /relay/console; the proxy strips the prefix
        # (this client talks to the gateway directly, so it sends them itself).
        token = page.cookies["imagerelay_csrf"]
        assert "path=/relay/console" in set_cookie_header(page, "imagerelay_csrf").lower()
        creds = g.console["user"]
        r = v.http.post(
            "/console/signin",
            data={"csrf_token": token, "name": creds["name"], "password": creds["password"]},
            headers={"cookie": f"imagerelay_csrf={token}", "x-forwarded-proto": "https"},
        )  # not from the trusted proxy: ignored
        assert r.status_code == 303 and r.headers["location"] == "/relay/console/"
        cookie = set_cookie_header(r, SESSION).lower()
        assert "path=/relay/console" in cookie and "secure" not in cookie
        sid = r.cookies.get(SESSION) or ""
        home = httpx.get(g.base_url + "/console/", cookies={SESSION: sid})
        assert home.status_code == 200 and 'href="/relay/console/tokens"' in home.text
        assert "http://127.0.0.1" in httpx.get(g.base_url + "/console/tokens/1", cookies={SESSION: sid}).text
