"""The console's admin pages over HTTP against the real gateway: who may open them, CSRF on
every form, an exact top-up with its ledger reason, a channel added -> tested -> disabled
(upstream: the project's simulator speaking the OpenAI protocol), token revocation,
usage filters and CSV, the dashboard and the catalog."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from imagerelay_sim.server import create_upstream_app
from tests.support import backend
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi

ADMIN_TOKEN = "admin-pages-admin-token"
UPSTREAM_KEY = "sk-upstream-admin-pages-secret"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A cookie-keeping client that fills in each form's CSRF token like a browser would."""

    def __init__(self, gw: Gateway) -> None:
        self.client = httpx.Client(base_url=gw.base_url, timeout=60, follow_redirects=False)
        self.csrf = ""

    def get(self, path: str, **kw: object) -> httpx.Response:
        r = self.client.get(path, **kw)  # type: ignore[arg-type]
        found = _CSRF.search(r.text)
        if found:
            self.csrf = html.unescape(found.group(1))
        return r

    def post(self, path: str, data: dict[str, object], *, csrf: bool = True) -> httpx.Response:
        body = {**data, "csrf_token": self.csrf} if csrf else data
        return self.client.post(path, data=body)  # type: ignore[arg-type]

    def sign_in(self, name: str, password: str) -> None:
        self.get("/console/signin")
        r = self.post("/console/signin", {"name": name, "password": password, "next": "/console/"})
        assert r.status_code == 303, r.text
        self.get("/console/")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("admin-pages")
    with run_gateway(tmp, extra_env={"IMAGERELAY_ADMIN_TOKEN": ADMIN_TOKEN}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with ExitStack() as stack:
        yield stack.enter_context(run_asgi(create_upstream_app("openai", api_keys=[UPSTREAM_KEY])))


@pytest.fixture
def admin(gw: Gateway) -> Iterator[Browser]:
    b = Browser(gw)
    b.sign_in(gw.console["admin"]["name"], gw.console["admin"]["password"])
    yield b
    b.client.close()


def _rows(gw: Gateway, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one statement on the gateway's database, whichever backend the suite runs on."""
    return [tuple(row) for row in backend.query(gw.data_dir, sql)]


def _balance(gw: Gateway, name: str) -> int:
    users = httpx.get(gw.base_url + "/admin/users", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    return int(next(u for u in users["data"] if u["name"] == name)["balance_micros"])


ADMIN_GETS = [
    "/console/admin/",
    "/console/admin/users",
    "/console/admin/users/demo",
    "/console/admin/tokens",
    "/console/admin/channels",
    "/console/admin/catalog",
    "/console/admin/usage",
    "/console/admin/usage.csv",
]


def test_only_admins_open_admin_pages(gw: Gateway, admin: Browser) -> None:
    anonymous = httpx.Client(base_url=gw.base_url, follow_redirects=False)
    for path in ADMIN_GETS:
        r = anonymous.get(path)
        assert r.status_code == 303 and "/console/signin" in r.headers["location"], path
    user = Browser(gw)
    user.sign_in(gw.console["user"]["name"], gw.console["user"]["password"])
    for path in ADMIN_GETS:
        assert user.get(path).status_code == 403, path
    # A valid CSRF token of a non-admin's own session does not make a POST an admin's.
    before = _balance(gw, "demo")
    r = user.post("/console/admin/users/demo/balance", {"amount": "1000", "reason": "self-service"})
    assert r.status_code == 403 and _balance(gw, "demo") == before
    for path in ADMIN_GETS:
        r = admin.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert "default-src 'none'" in r.headers["content-security-policy"]


def test_every_admin_form_needs_the_csrf_token(gw: Gateway, admin: Browser) -> None:
    admin.get("/console/admin/users/demo")
    before = _balance(gw, "demo")
    posts = [
        ("/console/admin/users/demo/balance", {"amount": "5", "reason": "no token"}),
        ("/console/admin/users/demo/disable", {}),
        ("/console/admin/users", {"name": "csrf-victim"}),
        ("/console/admin/invites", {"days": "7"}),
        ("/console/admin/channels", {"name": "csrf-ch", "type": "simulator", "pools": "legacy"}),
        ("/console/admin/channels/sim-legacy/disable", {}),
        ("/console/admin/tokens/1/revoke", {}),
    ]
    for path, data in posts:
        assert admin.post(path, data, csrf=False).status_code == 403, path
        assert admin.post(path, {**data, "csrf_token": "forged"}, csrf=False).status_code == 403, path
    assert _balance(gw, "demo") == before
    users = httpx.get(gw.base_url + "/admin/users", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    demo = next(u for u in users["data"] if u["name"] == "demo")
    assert not demo["disabled"] and all(u["name"] != "csrf-victim" for u in users["data"])
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.tokens["default"], max_retries=0)
    assert client.models.list().data  # the demo user's token still works


def test_top_up_is_exact_and_leaves_a_ledger_entry(gw: Gateway, admin: Browser) -> None:
    admin.get("/console/admin/users/demo")
    before = _balance(gw, "demo")
    r = admin.post("/console/admin/users/demo/balance", {"amount": "12.345678", "reason": "promo credit #7"})
    assert r.status_code == 303
    assert _balance(gw, "demo") == before + 12_345_678
    page = admin.get("/console/admin/users/demo").text
    assert "promo credit #7" in page and "is now" in page
    rows = _rows(gw, "SELECT amount_micros, kind, reason FROM ledger WHERE reason = 'promo credit #7'")
    assert rows == [(12_345_678, "topup", "promo credit #7")]

    r = admin.post("/console/admin/users/demo/balance", {"amount": "-0.000001", "reason": "rounding fix"})
    assert r.status_code == 303 and _balance(gw, "demo") == before + 12_345_677
    # Refused amounts change nothing and say why on the page.
    for amount, reason in [
        ("1e3", "float"),
        ("0.0000001", "7 decimals"),
        ("10", ""),
        ("", "empty"),
        ("-99999999", "overdraft"),
    ]:
        r = admin.post("/console/admin/users/demo/balance", {"amount": amount, "reason": reason})
        assert r.status_code == 400, (amount, reason)
        assert 'role="alert"' in r.text
    assert _balance(gw, "demo") == before + 12_345_677


def test_a_user_named_with_url_characters(gw: Gateway, admin: Browser) -> None:
    name = "ann marie #1?"  # the admin API takes any printable name
    r = httpx.post(
        gw.base_url + "/admin/tokens",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"user": name, "group": "default"},
    )
    assert r.status_code == 201
    path = "/console/admin/users/ann%20marie%20%231%3F"
    assert name in html.unescape(admin.get(path).text)
    r = admin.post(path + "/balance", {"amount": "3", "reason": "welcome"})
    assert r.status_code == 303 and r.headers["location"].endswith(path)
    assert _balance(gw, name) == 3_000_000


def test_disable_and_groups_and_create_user(gw: Gateway, admin: Browser) -> None:
    admin.get("/console/admin/users")
    r = admin.post(
        "/console/admin/users",
        {"name": "carol", "password": "a long enough passphrase 42", "groups": ["default", "GPTImage2 Enterprise"]},
    )
    assert r.status_code == 303, r.text
    carol = Browser(gw)
    carol.sign_in("carol", "a long enough passphrase 42")
    assert "carol" in carol.get("/console/").text
    admin.get("/console/admin/users/carol")
    assert admin.post("/console/admin/users/carol/groups", {"groups": ["default"]}).status_code == 303
    users = httpx.get(gw.base_url + "/admin/users", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert next(u for u in users["data"] if u["name"] == "carol")["allowed_groups"] == ["default"]
    assert admin.post("/console/admin/users/carol/groups", {"groups": ["nope"]}).status_code == 400
    assert admin.post("/console/admin/users/carol/disable", {}).status_code == 303
    assert carol.get("/console/").status_code == 303  # signed out: disabled users have no session
    assert admin.post("/console/admin/users/carol/enable", {}).status_code == 303
    # A taken or malformed name is refused with the reason.
    admin.get("/console/admin/users")
    assert admin.post("/console/admin/users", {"name": "carol"}).status_code == 400
    assert admin.post("/console/admin/users", {"name": "x"}).status_code == 400
    r = admin.post("/console/admin/invites", {"days": "3", "note": "for dave"})
    assert r.status_code == 200 and re.search(r"inv-[\w-]{10,}", r.text)


def test_add_channel_test_it_and_disable_it(gw: Gateway, admin: Browser, upstream: str) -> None:
    admin.get("/console/admin/channels")
    form = {
        "name": "extra-openai",
        "type": "openai",
        "pools": ["official-pure"],
        "base_url": upstream + "/v1",
        "api_key": UPSTREAM_KEY,
        "priority": "0",
        "weight": "1",
        "timeout_s": "60",
        "verify": "1",
    }
    bad = admin.post("/console/admin/channels", {**form, "weight": "0"})
    assert bad.status_code == 400 and "weight" in bad.text
    bad = admin.post("/console/admin/channels", {**form, "pools": ["no-such-pool"]})
    assert bad.status_code == 400 and "no-such-pool" in bad.text and UPSTREAM_KEY not in bad.text
    r = admin.post("/console/admin/channels", form)
    assert r.status_code == 303, r.text
    page = admin.get("/console/admin/channels/extra-openai").text
    assert "key stored" in page and UPSTREAM_KEY not in page
    assert UPSTREAM_KEY not in admin.get("/console/admin/channels").text

    tested = admin.post("/console/admin/channels/extra-openai/test", {})
    assert tested.status_code == 200 and "Test passed" in tested.text

    # A wrong key: the test fails and says so, without echoing any key.
    edited = admin.post(
        "/console/admin/channels/extra-openai/edit",
        {**{k: v for k, v in form.items() if k not in ("name", "type")}, "api_key": "sk-wrong-key"},
    )
    assert edited.status_code == 303
    tested = admin.post("/console/admin/channels/extra-openai/test", {})
    assert "Test failed" in tested.text and "sk-wrong-key" not in tested.text

    r = admin.post("/console/admin/channels/extra-openai/disable", {"reason": "maintenance window"})
    assert r.status_code == 303
    page = admin.get("/console/admin/channels/extra-openai").text
    assert "disabled" in page and "maintenance window" in page
    listed = httpx.get(gw.base_url + "/admin/channels", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    ch = next(c for c in listed["data"] if c["name"] == "extra-openai")
    assert ch["enabled"] is False and ch["health"]["disabled_reason"] == "maintenance window"
    assert admin.post("/console/admin/channels/extra-openai/enable", {}).status_code == 303
    assert admin.get("/console/admin/channels/nope").status_code == 404


def test_a_proxy_password_is_never_shown_and_survives_an_edit(gw: Gateway, admin: Browser, upstream: str) -> None:
    admin.get("/console/admin/channels")
    form = {
        "name": "proxied",
        "type": "openai",
        "pools": ["official-mixed"],
        "base_url": upstream + "/v1",
        "api_key": UPSTREAM_KEY,
        "proxy": "http://proxyuser:proxy-pass-123@127.0.0.1:9",
        "verify": "1",
    }
    assert admin.post("/console/admin/channels", form).status_code == 303
    for path in ("/console/admin/channels/proxied", "/console/admin/channels"):
        page = admin.get(path).text
        assert "proxy-pass-123" not in page and "proxyuser" not in page
    assert "***@127.0.0.1:9" in admin.get("/console/admin/channels/proxied").text  # shown masked
    # Saving the edit form as shown (proxy field empty) keeps the proxy, password included.
    assert (
        admin.post(
            "/console/admin/channels/proxied/edit",
            {"pools": ["official-mixed"], "base_url": upstream + "/v1", "weight": "2"},
        ).status_code
        == 303
    )
    spec = str(_rows(gw, "SELECT spec FROM channels WHERE name = 'proxied'")[0][0])
    assert "proxyuser:proxy-pass-123@127.0.0.1:9" in spec and '"weight":2' in spec.replace(" ", "")
    assert (
        admin.post(
            "/console/admin/channels/proxied/edit", {"pools": ["official-mixed"], "clear_proxy": "1"}
        ).status_code
        == 303
    )
    spec = str(_rows(gw, "SELECT spec FROM channels WHERE name = 'proxied'")[0][0])
    assert "proxy-pass-123" not in spec
    assert admin.post("/console/admin/channels/proxied/disable", {}).status_code == 303  # leave the pool as it was


def test_revoke_any_token(gw: Gateway, admin: Browser) -> None:
    created = httpx.post(
        gw.base_url + "/admin/tokens",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"user": "demo", "group": "default", "name": "to-revoke"},
    ).json()
    client = openai.OpenAI(base_url=gw.v1, api_key=created["token"], max_retries=0)
    client.models.list()
    page = admin.get("/console/admin/tokens?user=demo&status=active").text
    assert "<td>to-revoke</td>" in page and created["token"] not in page
    assert admin.post(f"/console/admin/tokens/{created['id']}/revoke", {}).status_code == 303
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert "<td>to-revoke</td>" not in admin.get("/console/admin/tokens?user=demo&status=active").text
    assert admin.get("/console/admin/tokens?status=bogus").status_code == 400
    # Hostile ids are no 500: not a row, or past what an INTEGER column holds.
    for raw in ("\u00b2", "99999999999", "-1"):
        assert admin.post(f"/console/admin/tokens/{raw}/revoke", {}).status_code == 303
        assert admin.get(f"/console/admin/tokens?before={raw}").status_code == 200
        assert admin.get(f"/console/admin/usage?before={raw}").status_code == 200
    assert admin.get("/console/admin/usage?token=\u00b2").status_code == 400


def test_usage_filters_totals_csv_dashboard_and_catalog(gw: Gateway, admin: Browser) -> None:
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.tokens["default"], max_retries=0)
    client.images.generate(model="gpt-image-2", prompt="a red cube")
    records = httpx.get(gw.v1 + "/account/usage", headers={"Authorization": f"Bearer {gw.tokens['default']}"}).json()
    latest = records["data"][0]
    assert latest["status"] == 200

    r = admin.get("/console/admin/usage.csv?user=demo&status=ok&model=gpt-image-2")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO(r.text))}
    row = rows[latest["request_id"]]
    assert row["cost_usd"] == latest["cost_usd"] and row["user"] == "demo" and row["status"] == "200"
    r = admin.get("/console/admin/usage.csv?status=error&user=demo")
    assert latest["request_id"] not in r.text

    page = admin.get("/console/admin/usage?user=demo&model=gpt-image-2")
    assert page.status_code == 200 and "usage.csv?" in page.text and "No usage records match" not in page.text
    assert admin.get("/console/admin/usage?since=2026-99-01").status_code == 400
    assert admin.get("/console/admin/usage?user=nobody-at-all").status_code == 400

    dash = admin.get("/console/admin/?span=24h&by=channel").text
    assert "<svg" in dash and ("<polyline" in dash or "<circle" in dash) and latest["channel"] in dash
    assert "<script" not in dash and "style=" not in dash
    catalog = admin.get("/console/admin/catalog").text
    assert "GPTImage2 Enterprise" in catalog and "per call" in catalog


def test_a_user_created_while_passwords_are_busy_is_not_created_at_all(tmp_path: Path) -> None:
    """With one hashing thread and no waiting line, sign-ins kept running keep the hasher
    busy; an admin creating a user with a first password then gets the 503, and no user
    is left behind without the password the admin typed (it was made before hashing)."""
    import threading

    env = {"IMAGERELAY_ADMIN_TOKEN": ADMIN_TOKEN, "IMAGERELAY_PASSWORD_HASH_THREADS": "1"}
    env["IMAGERELAY_PASSWORD_HASH_QUEUE"] = "0"
    with run_gateway(tmp_path, extra_env=env) as g:
        admin = Browser(g)
        admin.sign_in(g.console["admin"]["name"], g.console["admin"]["password"])
        stop = threading.Event()

        def keep_hashing() -> None:
            with httpx.Client(base_url=g.base_url, timeout=60) as http:
                page = http.get("/console/signin").text
                token = html.unescape(_CSRF.search(page).group(1))  # type: ignore[union-attr]
                creds = {"name": g.console["user"]["name"], "password": g.console["user"]["password"]}
                while not stop.is_set():
                    http.post("/console/signin", data={**creds, "csrf_token": token})

        workers = [threading.Thread(target=keep_hashing) for _ in range(3)]
        for w in workers:
            w.start()
        refused: list[str] = []
        try:
            for i in range(60):
                admin.get("/console/admin/users")
                name = f"busy-{i}"
                r = admin.post("/console/admin/users", {"name": name, "password": "a long enough pass phrase 42"})
                assert r.status_code in (303, 503), r.text
                if r.status_code == 503:
                    refused.append(name)
                    break
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert refused, "the hasher was never busy: the test proved nothing"
        users = httpx.get(g.base_url + "/admin/users", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert refused[0] not in {u["name"] for u in users["data"]}
