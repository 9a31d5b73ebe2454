"""Channel lifecycle over HTTP and on the command line (issue 11): update a channel's
base URL, key, priority, weight and pools and see calls follow; remove one and see it
unused; `channels test` right after `channels add`. Upstreams are simulator servers
speaking the real OpenAI protocol. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from imagerelay_sim.server import create_upstream_app
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi
from tests.support.services import drop_postgres_database, fresh_postgres_database
from tests.support.upstreams import simulated_channels

ADMIN = "lifecycle-admin-token"
H = {"Authorization": f"Bearer {ADMIN}"}
KEYS = {"LEGACY_KEY": "sk-legacy-lc-1", "AZURE_KEY": "az-lc-2", "OPENAI_A_KEY": "sk-openai-a-lc-3"}
EXTRA_KEYS = ["sk-extra-one-secret", "sk-extra-two-secret"]


@dataclass
class Rig:
    gw: Gateway
    database_url: str  # "" for SQLite
    sims: dict[str, str]  # catalog channel -> simulator base URL
    extra: list[str]  # simulators for run-time channels, accepting EXTRA_KEYS

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "IMAGERELAY_ADMIN_TOKEN": ADMIN, "IMAGERELAY_DATA_DIR": str(self.gw.data_dir)}
        if self.database_url:
            env["IMAGERELAY_DATABASE_URL"] = self.database_url
        return subprocess.run(
            [sys.executable, "-m", "imagerelay", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.gw.base_url + path, headers=H, timeout=60, **kw)

    def generate(self, group: str = "GPTImage2 Enterprise") -> None:
        client = openai.OpenAI(base_url=self.gw.v1, api_key=self.gw.tokens[group], max_retries=0)
        client.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")

    def seen(self, url: str) -> list[dict[str, Any]]:
        body = httpx.get(url + "/_sim/requests").json()
        return list(body["requests"] if isinstance(body, dict) else body)

    def clear(self) -> None:
        for url in [*self.sims.values(), *self.extra]:
            httpx.delete(url + "/_sim/requests")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    env = {**KEYS, "IMAGERELAY_ADMIN_TOKEN": ADMIN}
    dropped = None
    if request.param == "postgresql":
        env["IMAGERELAY_DATABASE_URL"], dropped = fresh_postgres_database()
    try:
        with ExitStack() as stack:
            sims, channels = stack.enter_context(simulated_channels(KEYS))
            extra = [
                stack.enter_context(run_asgi(create_upstream_app("openai", api_keys=EXTRA_KEYS))) for _ in range(2)
            ]
            env["IMAGERELAY_CATALOG"] = str(write_catalog(tmp / "catalog.yaml", channels))
            gw = stack.enter_context(run_gateway(tmp, extra_env=env))
            yield Rig(gw, env.get("IMAGERELAY_DATABASE_URL", ""), sims, extra)
    finally:
        if dropped:
            drop_postgres_database(dropped)


@pytest.fixture(autouse=True)
def _clean(rig: Rig) -> Iterator[None]:
    rig.clear()
    yield
    for v in rig.admin("GET", "/admin/channels").json()["data"]:
        if v["source"] == "database":
            rig.admin("DELETE", f"/admin/channels/{v['name']}")


def add(rig: Rig, name: str, url: str, **fields: Any) -> None:
    body = {
        "name": name,
        "type": "openai",
        "base_url": url + "/v1",
        "api_key": EXTRA_KEYS[0],
        "pools": ["official-pure"],
        "priority": 100,
        **fields,
    }
    r = rig.admin("POST", "/admin/channels", json=body)
    assert r.status_code == 201, r.text


def key_used(req: dict[str, Any]) -> str:
    headers = req["headers"]
    pairs = headers.items() if isinstance(headers, dict) else headers
    return next(v for k, v in pairs if k.lower() == "authorization").removeprefix("Bearer ")


def test_update_base_url_key_priority_and_pools_calls_follow(rig: Rig) -> None:
    one, two = rig.extra
    add(rig, "rt-1", one)
    rig.generate()
    assert len(rig.seen(one)) == 1 and key_used(rig.seen(one)[0]) == EXTRA_KEYS[0]

    r = rig.admin("PATCH", "/admin/channels/rt-1", json={"base_url": two + "/v1", "api_key": EXTRA_KEYS[1]})
    assert r.status_code == 200, r.text
    assert EXTRA_KEYS[1] not in r.text and r.json()["base_url"] == two + "/v1" and r.json()["has_key"] is True
    rig.generate()
    assert len(rig.seen(one)) == 1 and len(rig.seen(two)) == 1  # at once, in this process
    assert key_used(rig.seen(two)[0]) == EXTRA_KEYS[1]

    # priority below the catalog channels: they serve, rt-1 is not tried
    assert rig.admin("PATCH", "/admin/channels/rt-1", json={"priority": -5}).status_code == 200
    rig.generate()
    assert len(rig.seen(two)) == 1 and len(rig.seen(rig.sims["openai-a"])) == 1

    # pools: moved to official-mixed (above azure's priority 10), it serves Sora2Official only
    r = rig.admin("PATCH", "/admin/channels/rt-1", json={"pools": ["official-mixed"], "priority": 50})
    assert r.status_code == 200 and r.json()["pools"] == ["official-mixed"]
    rig.generate()
    assert len(rig.seen(two)) == 1
    rig.generate("Sora2Official")
    assert len(rig.seen(two)) == 2 and rig.seen(rig.sims["azure-1"]) == []
    listing = rig.admin("GET", "/admin/channels").text
    assert EXTRA_KEYS[0] not in listing and EXTRA_KEYS[1] not in listing


def _connections_to(gw: Gateway, port: int) -> int:
    """Established TCP connections the gateway process holds to ``port`` on loopback
    (its socket inodes in /proc/<pid>/fd, matched in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{gw.process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
        count += remote_port == port and state == "01" and inode in inodes
    return count


def test_a_connection_setting_change_rebuilds_the_session_and_closes_the_old_one(rig: Rig) -> None:
    """PATCHing a channel's timeout (a connection setting) gives it a new session at the
    next call; the old session serves its call in flight to the end and is then closed,
    so its keep-alive connection goes (it used to linger, pool and all, until a restart)."""
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    # Its own simulator, keeping idle connections for 2 minutes: only the gateway closes them.
    with run_asgi(create_upstream_app("openai", api_keys=EXTRA_KEYS), timeout_keep_alive=120) as sim:
        port = urlsplit(sim).port
        assert port is not None
        add(rig, "rt-session", sim, timeout_s=60)
        rig.generate()
        assert _connections_to(rig.gw, port) == 1  # kept alive for the next call

        assert httpx.post(sim + "/_sim/config", json={"latency_s": 2}).status_code == 200
        with ThreadPoolExecutor(1) as thread:
            slow = thread.submit(rig.generate)  # in flight on the old session
            deadline = time.monotonic() + 30
            while len(rig.seen(sim)) < 2:
                assert time.monotonic() < deadline and not slow.done(), "the slow call never reached the upstream"
                time.sleep(0.05)
            assert httpx.post(sim + "/_sim/config", json={"latency_s": 0}).status_code == 200
            r = rig.admin("PATCH", "/admin/channels/rt-session", json={"timeout_s": 30})
            assert r.status_code == 200 and r.json()["timeout_s"] == 30, r.text
            rig.generate()  # on a new session (a second connection): the old one is busy
            slow.result()  # the old session was not closed under its call
        assert len(rig.seen(sim)) == 3
        deadline = time.monotonic() + 10
        while _connections_to(rig.gw, port) != 1:  # the old session's connection is closed
            assert time.monotonic() < deadline, _connections_to(rig.gw, port)
            time.sleep(0.1)
        rig.generate()  # the new session serves on
        assert len(rig.seen(sim)) == 4 and _connections_to(rig.gw, port) == 1


def test_update_weight_shifts_the_share(rig: Rig) -> None:
    one, two = rig.extra
    add(rig, "rt-a", one)
    add(rig, "rt-b", two)
    assert rig.admin("PATCH", "/admin/channels/rt-b", json={"weight": 1000}).status_code == 200
    for _ in range(20):
        rig.generate()
    # weight 1 against 1000: rt-a is picked first in about 0.1% of calls
    assert len(rig.seen(one)) <= 3 and len(rig.seen(two)) >= 17


@pytest.mark.parametrize(
    "body, param",
    [
        ({"base_url": "ftp://x.example"}, "base_url"),
        ({"base_url": "https://user:pw@x.example/v1"}, "base_url"),
        ({"pools": ["no-such-pool"]}, "pools"),
        ({"pools": []}, "pools"),
        ({"api_key": "sk bad\nkey"}, "api_key"),
        ({"api_key": 5}, "api_key"),
        ({"weight": 0}, "weight"),
        ({"name": "renamed"}, "name"),
        ({"type": "quantum"}, "type"),
        ({"api_version": "../../x"}, "api_version"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_update_validates_every_field(rig: Rig, body: dict[str, Any], param: str) -> None:
    one, _two = rig.extra
    add(rig, "rt-v", one)
    before = rig.admin("GET", "/admin/channels").json()["data"]
    r = rig.admin("PATCH", "/admin/channels/rt-v", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert rig.admin("GET", "/admin/channels").json()["data"] == before


def test_catalog_channels_and_unknown_names(rig: Rig) -> None:
    r = rig.admin("PATCH", "/admin/channels/openai-a", json={"weight": 3})
    assert r.status_code == 409 and "catalog" in r.json()["error"]["message"]
    assert rig.admin("DELETE", "/admin/channels/openai-a").status_code == 409
    assert rig.admin("PATCH", "/admin/channels/nope", json={"weight": 3}).status_code == 404
    assert rig.admin("DELETE", "/admin/channels/nope").status_code == 404
    no_auth = httpx.request("DELETE", rig.gw.base_url + "/admin/channels/openai-a")
    assert no_auth.status_code == 401


def test_remove_stops_serving_at_once(rig: Rig) -> None:
    one, _two = rig.extra
    add(rig, "rt-r", one)
    rig.generate()
    assert len(rig.seen(one)) == 1
    r = rig.admin("DELETE", "/admin/channels/rt-r")
    assert r.status_code == 200 and r.json()["deleted"] is True
    for _ in range(3):
        rig.generate()
    assert len(rig.seen(one)) == 1
    assert "rt-r" not in [c["name"] for c in rig.admin("GET", "/admin/channels").json()["data"]]
    add(rig, "rt-r", one)  # the name is free again


def test_cli_add_test_update_remove(rig: Rig) -> None:
    one, two = rig.extra
    added = rig.cli(
        "channels",
        "add",
        "--name",
        "cli-lc",
        "--type",
        "openai",
        "--pool",
        "official-pure",
        "--priority",
        "100",
        "--base-url",
        one + "/v1",
        "--key-stdin",
        stdin=EXTRA_KEYS[0] + "\n",
    )
    assert added.returncode == 0, added.stderr
    # right after add, through the running gateway: no wait for its channel reload
    tested = rig.cli("channels", "test", "cli-lc", "--url", rig.gw.base_url)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    line = tested.stdout.strip()
    assert line.startswith("channel cli-lc: ok, one image in ") and line.endswith(" ms") and "\n" not in line
    assert len(rig.seen(one)) == 1

    updated = rig.cli(
        "channels", "update", "cli-lc", "--base-url", two + "/v1", "--key-stdin", stdin=EXTRA_KEYS[1] + "\n"
    )
    assert updated.returncode == 0, updated.stderr
    assert rig.cli("channels", "test", "cli-lc", "--url", rig.gw.base_url).returncode == 0
    assert len(rig.seen(two)) == 1 and key_used(rig.seen(two)[0]) == EXTRA_KEYS[1]
    assert EXTRA_KEYS[1] not in rig.cli("channels", "list").stdout

    bad = rig.cli("channels", "update", "cli-lc", "--base-url", "javascript:alert(1)")
    assert bad.returncode == 2 and "base_url" in bad.stderr and "Traceback" not in bad.stderr
    assert rig.cli("channels", "update", "openai-a", "--weight", "2").returncode == 2

    # removed by another process: the gateway stops using it within its channel reload (10 s)
    removed = rig.cli("channels", "remove", "cli-lc")
    assert removed.returncode == 0, removed.stderr
    deadline = time.monotonic() + 15
    while True:
        rig.clear()
        rig.generate()
        if not rig.seen(two):
            break
        assert time.monotonic() < deadline, "a removed channel kept serving"
        time.sleep(0.5)
    failed = rig.cli("channels", "test", "cli-lc", "--url", rig.gw.base_url)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "No channel named" in failed.stderr


def test_a_channel_failing_its_test_prints_one_line(rig: Rig) -> None:
    one, _two = rig.extra
    add(rig, "rt-bad-key", one, api_key="sk-not-accepted-here")
    tested = rig.cli("channels", "test", "rt-bad-key", "--url", rig.gw.base_url)
    assert tested.returncode == 1 and "Traceback" not in tested.stderr
    assert tested.stderr.strip().startswith("error: channel rt-bad-key: failed after ")
    assert tested.stderr.count("\n") == 1 and "sk-not-accepted-here" not in tested.stderr


def test_a_channel_disabled_for_its_key_comes_back_when_enabled_from_the_cli(rig: Rig) -> None:
    # The gateway disables a channel whose key is rejected in its own memory as well as
    # in the database; an enable written by another process (the CLI) must reach it.
    one, _two = rig.extra
    add(rig, "rt-rotate", one, api_key="sk-revoked-key")
    rig.generate()  # 401 from rt-rotate, served by openai-a
    view = next(c for c in rig.admin("GET", "/admin/channels").json()["data"] if c["name"] == "rt-rotate")
    assert view["enabled"] is False and "401" in view["health"]["disabled_reason"]
    rig.clear()
    assert rig.cli("channels", "update", "rt-rotate", "--key-stdin", stdin=EXTRA_KEYS[0] + "\n").returncode == 0
    assert rig.cli("channels", "enable", "rt-rotate").returncode == 0
    deadline = time.monotonic() + 15
    while not rig.seen(one):
        assert time.monotonic() < deadline, "the re-enabled channel stayed disabled in the gateway"
        time.sleep(0.5)
        rig.generate()
    assert key_used(rig.seen(one)[-1]) == EXTRA_KEYS[0]


def test_cli_sets_proxy_and_tls_fields_and_listings_hide_proxy_credentials(rig: Rig) -> None:
    one, _ = rig.extra
    added = rig.cli(
        "channels",
        "add",
        "--name",
        "cli-proxy",
        "--type",
        "openai",
        "--pool",
        "official-pure",
        "--base-url",
        one + "/v1",
        "--proxy",
        "http://scott:tiger@127.0.0.1:3128",
        "--no-verify",
    )
    assert added.returncode == 0, added.stderr
    try:

        def listed() -> dict[str, Any]:
            return {c["name"]: c for c in httpx.get(rig.gw.base_url + "/admin/channels", headers=H).json()["data"]}

        deadline = time.monotonic() + 15  # added by another process: seen within the channel reload
        while "cli-proxy" not in listed():
            assert time.monotonic() < deadline, "the gateway never loaded the channel the CLI added"
            time.sleep(0.2)
        entry = listed()["cli-proxy"]
        assert entry["proxy"] == "http://***@127.0.0.1:3128" and entry["verify"] is False and entry["ca_bundle"] is None
        assert "tiger" not in httpx.get(rig.gw.base_url + "/admin/channels", headers=H).text

        missing = rig.cli("channels", "update", "cli-proxy", "--ca-bundle", "/nonexistent/ca.pem")
        assert missing.returncode == 2 and "ca_bundle" in missing.stderr and "Traceback" not in missing.stderr
        bad = rig.cli("channels", "update", "cli-proxy", "--proxy", "ftp://127.0.0.1:21")
        assert bad.returncode == 2 and "proxy" in bad.stderr
        cleared = rig.cli("channels", "update", "cli-proxy", "--verify")
        assert cleared.returncode == 0, cleared.stderr
        deadline = time.monotonic() + 15
        while listed()["cli-proxy"]["verify"] is not True:
            assert time.monotonic() < deadline, "the gateway never loaded the updated channel"
            time.sleep(0.2)
    finally:
        rig.cli("channels", "remove", "cli-proxy")
