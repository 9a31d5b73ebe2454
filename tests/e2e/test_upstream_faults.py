"""Hostile and failing upstreams, end to end: the real gateway against real simulator servers.

Pools (a catalog written for this module):
- ``official-pure`` (GPTImage2 Enterprise): one channel, ``solo`` (openai protocol);
- ``official-mixed`` (Sora2Official): ``first`` (azure, priority 10) then ``second`` (openai).
Faults are injected on ``solo`` and ``first``; ``second`` stays clean. The servers are
started once for the module and every test resets faults and channel health.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from imagerelay_sim.faults import FAULT_TYPES
from imagerelay_sim.server import create_upstream_app
from tests.support import backend
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi

ADMIN = "faults-admin-token"
KEYS = {
    "SOLO_KEY": "sk-solo-9f8e7d6c5b4a39281706f5e4",
    "FIRST_KEY": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",  # Azure keys are 32 hex characters
    "SECOND_KEY": "sk-second-1a2b3c4d5e6f7a8b9c0d",
}
ONE, TWO = "GPTImage2 Enterprise", "Sora2Official"  # groups of the one- and two-channel pools
FAULTY = {ONE: "solo", TWO: "first"}


@dataclass
class Rig:
    gw: Gateway
    sims: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    def fault(self, name: str, **rule: Any) -> None:
        r = httpx.post(self.sims[name] + "/_sim/faults", json=rule)
        assert r.status_code in (200, 201), r.text

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", {"Authorization": f"Bearer {ADMIN}"})
        return httpx.request(method, self.gw.base_url + path, timeout=30, **kw)

    def channel(self, name: str) -> dict[str, Any]:
        return next(c for c in self.admin("GET", "/admin/channels").json()["data"] if c["name"] == name)

    def reset(self) -> None:
        for name, url in self.sims.items():
            httpx.delete(url + "/_sim/faults")
            httpx.delete(url + "/_sim/requests")
            assert self.admin("POST", f"/admin/channels/{name}/enable").status_code == 200

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return backend.query(self.gw.data_dir, sql, params)

    def record(self, request_id: str) -> dict[str, Any]:
        """The call's usage record and its ledger charges, once it has been written."""
        deadline = time.monotonic() + 10
        while True:
            rows = self.query("select * from usage_records where request_id=?", (request_id,))
            charges = [
                r[0]
                for r in self.query(
                    "select amount_micros from ledger where kind='charge' and request_id=?", (request_id,)
                )
            ]
            if rows:
                rec = dict(rows[0]._mapping)
                rec["price_basis"] = json.loads(rec["price_basis"])
                rec["charges"] = charges
                return rec
            assert time.monotonic() < deadline, f"no usage record for {request_id}"
            time.sleep(0.05)

    def audit(self) -> None:
        audit = subprocess.run(
            [sys.executable, "-m", "imagerelay", "audit", "--data-dir", str(self.gw.data_dir)],
            capture_output=True,
            text=True,
            env=backend.cli_env(self.gw.data_dir, self.env),
            timeout=60,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("faults")
    with (
        run_asgi(create_upstream_app("openai", api_keys=[KEYS["SOLO_KEY"]])) as solo,
        run_asgi(
            create_upstream_app("azure", api_keys=[KEYS["FIRST_KEY"]], deployments={"img2": "gpt-image-2"})
        ) as first,
        run_asgi(create_upstream_app("openai", api_keys=[KEYS["SECOND_KEY"]])) as second,
    ):
        catalog = write_catalog(
            tmp / "catalog.yaml",
            [
                {
                    "name": "solo",
                    "type": "openai",
                    "base_url": solo + "/v1",
                    "api_key_env": "SOLO_KEY",
                    "pools": ["official-pure"],
                },
                {
                    "name": "first",
                    "type": "azure",
                    "base_url": first,
                    "api_key_env": "FIRST_KEY",
                    "model_map": {"gpt-image-2": "img2"},
                    "pools": ["official-mixed"],
                    "priority": 10,
                },
                {
                    "name": "second",
                    "type": "openai",
                    "base_url": second + "/v1",
                    "api_key_env": "SECOND_KEY",
                    "pools": ["official-mixed"],
                },
                # every route needs an enabled channel to start; these tests do not call the legacy ones
                {"name": "sim-legacy", "type": "simulator", "pools": ["legacy", "legacy-vip"]},
            ],
        )
        env = {
            **KEYS,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_ADMIN_TOKEN": ADMIN,
            "IMAGERELAY_MAX_RETRY_AFTER_S": "0.1",
            "IMAGERELAY_RETRY_BACKOFF_S": "0.01",
            "IMAGERELAY_RETRY_BACKOFF_MAX_S": "0.05",
        }
        data = tmp / "data"
        data.mkdir()
        with run_gateway(data, extra_env=env) as gw:
            yield Rig(gw, {"solo": solo, "first": first, "second": second}, env)


@pytest.fixture(autouse=True)
def _clean(rig: Rig) -> Iterator[None]:
    rig.reset()
    yield
    rig.reset()


# -- calling -------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    request_id: str
    body: dict[str, Any] | None = None  # plain answers and errors before a stream began
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (event, payload)
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def event_types(self) -> list[str]:
        return [name for name, _ in self.events]


def call(rig: Rig, group: str, *, stream: bool, n: int = 1, partial_images: int = 1, timeout: float = 60) -> Outcome:
    body: dict[str, Any] = {
        "model": "gpt-image-2",
        "prompt": "a lighthouse",
        "size": "1024x1024",
        "quality": "low",
        "n": n,
    }
    if stream:
        body.update(stream=True, partial_images=partial_images)
    headers = {"Authorization": f"Bearer {rig.gw.tokens[group]}"}
    with httpx.stream("POST", rig.gw.v1 + "/images/generations", json=body, headers=headers, timeout=timeout) as r:
        text = r.read().decode()
        out = Outcome(r.status_code, r.headers.get("x-request-id", ""), text=text, headers=dict(r.headers))
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            out.events = _sse(text)
        else:
            out.body = json.loads(text)
    return out


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        if data and data != "[DONE]":
            events.append((name, json.loads(data)))
    return events


# -- the fault matrix ------------------------------------------------------------------------
#
# One row per fault x mode (plain | stream) x pool (one channel | two channels): what the
# client sees and what the ledger does. Streams ask for one partial image, so a "cut" or
# an "error" after the first event comes before the image is complete.
#
# client: an HTTP status and error code for plain answers and refusals before a stream
# begins; for streams that began, "events:" and the event types the client receives.
# charge: "reported" (upstream usage), "estimate" (usage refused: the fallback estimate),
# "none" (nothing charged, one free record).

OK_PLAIN = (200, None)
OK_STREAM = "events:image_generation.partial_image,image_generation.completed"
CUT_STREAM = "events:image_generation.partial_image,error"


@dataclass(frozen=True)
class Row:
    fault: str
    mode: str  # plain | stream
    pool: str  # one | two
    client: Any  # (status, code) or "events:..."
    charge: str  # reported | estimate | none
    rule: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.fault}-{self.mode}-{self.pool}"


def _rows() -> list[Row]:
    rules: dict[str, dict[str, Any]] = {
        "latency": {"latency_s": 0.2},
        "rate_limit": {"retry_after": 0.1},
        "status": {"status": 502},
    }
    # A channel failure with nowhere to fail over to, on every retry: a 503 with
    # retry-after once the attempts are spent (it was a 502 when nothing was retried).
    down = (503, "upstream_unavailable")
    failed_one = {
        "server_error": down,
        "overloaded": down,
        "rate_limit": (503, "upstream_overloaded"),
        "unauthorized": down,
        "status": down,
        "reset": down,
        "drop": down,
        "truncate": down,
        "invalid_json": down,
        "bad_base64": down,
        "stream_cut": down,
        "stream_error": down,
    }
    refused = {  # the caller's request refused upstream: no failover, nothing charged
        "moderation": {"one": (400, "moderation_blocked"), "two": (400, "moderation_blocked")},
        # the openai dialect does not know Azure's filter code; the azure connector does
        "content_filter": {"one": (400, "upstream_invalid_request"), "two": (400, "moderation_blocked")},
        "echo_key": {"one": (400, "upstream_invalid_request"), "two": (400, "upstream_invalid_request")},
    }
    rows: list[Row] = []
    for fault in FAULT_TYPES:
        rule = tuple(rules.get(fault, {}).items())
        for mode in ("plain", "stream"):
            for pool in ("one", "two"):
                ok = OK_PLAIN if mode == "plain" else OK_STREAM
                if fault in refused:
                    rows.append(Row(fault, mode, pool, refused[fault][pool], "none", rule))
                elif fault in ("stream_cut", "stream_error") and mode == "stream":
                    # after the first event there is no failover: the client sees the cut
                    rows.append(Row(fault, mode, pool, CUT_STREAM, "none", rule))
                elif fault in failed_one:
                    if pool == "one":
                        rows.append(Row(fault, mode, pool, failed_one[fault], "none", rule))
                    else:
                        rows.append(Row(fault, mode, pool, ok, "reported", rule))
                elif fault in ("no_usage", "empty_usage", "zero_usage", "garbage_usage"):
                    rows.append(Row(fault, mode, pool, ok, "estimate", rule))
                else:  # latency, data_url_prefix, no_padding: served as usual
                    rows.append(Row(fault, mode, pool, ok, "reported", rule))
    return rows


ROWS = _rows()


def test_the_matrix_covers_every_simulator_fault() -> None:
    assert {r.fault for r in ROWS} == set(FAULT_TYPES)
    assert len(ROWS) == 4 * len(FAULT_TYPES)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_fault_matrix(rig: Rig, row: Row) -> None:
    group = ONE if row.pool == "one" else TWO
    faulty = FAULTY[group]
    rig.fault(faulty, type=row.fault, **dict(row.rule))
    out = call(rig, group, stream=row.mode == "stream")
    assert out.request_id, out.text

    if isinstance(row.client, str):
        assert out.status == 200, out.text
        assert ",".join(out.event_types) == row.client.removeprefix("events:"), out.text
        if out.event_types[-1] == "error":
            assert out.events[-1][1]["error"]["code"] == "upstream_stream_failed"
    else:
        status, code = row.client
        assert out.status == status, out.text
        if code is None:
            assert out.body is not None and len(out.body["data"]) == 1
        else:
            assert out.body is not None and out.body["error"]["code"] == code, out.text
            if status == 503:
                assert int(out.headers["retry-after"]) >= 1
    for key in KEYS.values():
        assert key not in out.text
    assert "127.0.0.1" not in out.text

    rec = rig.record(out.request_id)
    if row.charge == "none":
        assert rec["cost_micros"] == 0 and rec["charges"] == [], rec
        assert rec["status"] != 200 and rec["error_code"], rec
    else:
        assert rec["cost_micros"] > 0 and rec["charges"] == [-rec["cost_micros"]], rec
        assert rec["status"] == 200 and rec["error_code"] is None
        source = "reported" if row.charge == "reported" else "estimated_fallback"
        assert rec["price_basis"]["usage_source"] == source, rec["price_basis"]
        assert rec["output_tokens"] > 0  # the record shows the tokens it was charged for
    if (
        row.pool == "two"
        and row.charge != "none"
        and row.fault not in ("latency", "data_url_prefix", "no_padding")
        and row.fault not in ("no_usage", "empty_usage", "zero_usage", "garbage_usage")
    ):
        assert rec["channel"] == "second" and rec["attempts"] >= 2, rec
    if row.fault == "unauthorized":
        _wait_disable_persisted(rig, faulty)


def _wait_disable_persisted(rig: Rig, name: str) -> None:
    """A rejected key disables the channel in the database in the background; let that
    land before the next test re-enables it."""
    deadline = time.monotonic() + 10
    while True:
        rows = rig.query("select enabled from channels where name=?", (name,))
        row = rows[0] if rows else None
        if row is not None and not row[0]:
            return
        assert time.monotonic() < deadline, "the disable was never persisted"
        time.sleep(0.05)


def test_zz_audit_passes_after_the_matrix(rig: Rig) -> None:
    rig.audit()


# -- an upstream that echoes the key ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_echoed_key_reaches_no_client_record_health_or_log(rig: Rig, stream: bool) -> None:
    rig.fault("solo", type="echo_key")
    rig.fault("first", type="echo_key")
    outs = [call(rig, group, stream=stream) for group in (ONE, TWO)]
    for out in outs:
        assert out.status == 400 and out.body is not None, out.text
        err = out.body["error"]
        assert err["code"] == "upstream_invalid_request" and err["param"] is None
        assert "[redacted]" in err["message"]  # the upstream's words, scrubbed
    exposed = [out.text for out in outs]
    # the admin listing shows each channel's base_url by design; its health must not
    exposed += [json.dumps(c["health"]) for c in rig.admin("GET", "/admin/channels").json()["data"]]
    for group in (ONE, TWO):
        exposed.append(
            httpx.get(rig.gw.v1 + "/account/usage", headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"}).text
        )
    exposed.append(repr(rig.query("select * from usage_records")))
    for name in ("solo", "first"):  # the admin channel test shows the upstream's error, scrubbed
        probe = rig.admin("POST", f"/admin/channels/{name}/test")
        assert probe.status_code == 200 and probe.json()["ok"] is False
        exposed.append(probe.text)
    exposed.append(rig.gw.log_text())
    assert (
        "key_rejected" in rig.channel("solo")["health"]["last_error"]
        or "HTTP 400" in rig.channel("solo")["health"]["last_error"]
    )
    text = "\n".join(exposed)
    for key in KEYS.values():
        assert key not in text
        assert key[-12:] not in text  # not even a piece of it
    for url in rig.sims.values():
        assert url.removeprefix("http://") not in text


# -- a stream cut after an image was delivered --------------------------------------------------


def test_stream_cut_after_a_completed_image_is_charged_for_that_image(rig: Rig) -> None:
    whole = call(rig, ONE, stream=True, n=2, partial_images=0)
    assert whole.event_types == ["image_generation.completed"] * 2
    full = rig.record(whole.request_id)

    rig.fault("solo", type="stream_cut")
    out = call(rig, ONE, stream=True, n=2, partial_images=0)
    assert out.event_types == ["image_generation.completed", "error"], out.text
    assert out.events[-1][1]["error"]["code"] == "upstream_stream_failed"
    rec = rig.record(out.request_id)
    assert rec["status"] == 502 and rec["error_code"] == "upstream_stream_failed"
    assert 0 < rec["cost_micros"] < full["cost_micros"] and rec["charges"] == [-rec["cost_micros"]]
    assert rec["price_basis"]["images_delivered"] == 1 and rec["price_basis"]["images_requested"] == 2
    assert rec["price_basis"]["usage_source"] == "reported"
    assert rec["output_tokens"] == -(-full["output_tokens"] // 2)
    rig.audit()


def test_stream_cut_before_any_image_costs_nothing(rig: Rig) -> None:
    rig.fault("solo", type="stream_cut")
    out = call(rig, ONE, stream=True, n=1, partial_images=1)
    assert out.event_types == ["image_generation.partial_image", "error"], out.text
    rec = rig.record(out.request_id)
    assert rec["status"] == 502 and rec["error_code"] == "upstream_stream_failed"
    assert rec["cost_micros"] == 0 and rec["charges"] == []
    rig.audit()


# -- a client that leaves while an upstream attempt fails ---------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_client_leaving_mid_failing_attempt_leaves_no_unretrieved_task(rig: Rig, stream: bool) -> None:
    mark = len(rig.gw.log_text())
    for name in ("first", "second"):
        rig.fault(name, type="latency", latency_s=0.6)
        rig.fault(name, type="reset")
    for _ in range(3):
        with pytest.raises(httpx.ReadTimeout):
            call(rig, TWO, stream=stream, timeout=0.3)
    time.sleep(2.0)  # both attempts fail after the clients left
    log = rig.gw.log_text()[mark:]
    assert "never retrieved" not in log, log
    assert "Traceback" not in log, log
    rig.audit()  # and the calls nobody waited for cost nothing


# -- channel fields are checked where channels come in -------------------------------------------


BAD_CHANNELS = [
    ({"base_url": "ftp://upstream.example/v1"}, "base_url"),
    ({"base_url": "http:///v1"}, "base_url"),
    ({"base_url": "http://upstream.example:99999/v1"}, "base_url"),
    ({"base_url": "https://user:pass@upstream.example/v1"}, "base_url"),
    ({"base_url": "https://upstream.example/v1?x=1"}, "base_url"),
    ({"base_url": "https://upstream.example/v 1"}, "base_url"),
    ({"pools": ["no-such-pool"]}, "pools"),
    ({"api_key": "sk-abc\r\nX-Injected: 1"}, "api_key"),
    ({"api_key": "sk-clé"}, "api_key"),
    ({"type": "azure", "model_map": {"gpt-image-2": "../../other?x="}}, "model_map"),
    ({"type": "azure", "api_version": "2025-04-01&evil=1"}, "api_version"),
    ({"api_key_env": "IMAGERELAY_SECRET_KEY"}, "api_key_env"),
    ({"name": "bad name/with slash"}, "name"),
    ({"proxy": "ftp://proxy.example:21"}, "proxy"),
    ({"proxy": "http://proxy.example:3128\r\nX-Injected: 1"}, "proxy"),
    ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle"),
]


@pytest.mark.parametrize(("change", "param"), BAD_CHANNELS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_CHANNELS)])
def test_admin_refuses_channel_fields_that_would_break_calls(rig: Rig, change: dict[str, Any], param: str) -> None:
    body = {
        "name": "bad-channel",
        "type": "openai",
        "base_url": "https://upstream.example/v1",
        "api_key": "sk-fine-key",
        "pools": ["official-pure"],
        **change,
    }
    r = rig.admin("POST", "/admin/channels", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert all(c["name"] != body["name"] for c in rig.admin("GET", "/admin/channels").json()["data"])


def test_cli_refuses_a_malformed_base_url_and_an_unknown_pool(rig: Rig) -> None:
    def add(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "imagerelay",
                "channels",
                "add",
                "--name",
                "cli-bad",
                "--type",
                "openai-compatible",
                *args,
                "--data-dir",
                str(rig.gw.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=backend.cli_env(rig.gw.data_dir, rig.env),
        )

    bad_url = add("--pool", "official-pure", "--base-url", "htp:/nowhere")
    assert bad_url.returncode == 2 and "base_url" in bad_url.stderr, bad_url.stderr
    bad_pool = add("--pool", "nope", "--base-url", "https://upstream.example/v1")
    assert bad_pool.returncode == 2 and "pools" in bad_pool.stderr, bad_pool.stderr


# -- a connector that raises something unexpected --------------------------------------------------


def _insert_raw_channel(rig: Rig, name: str, spec: dict[str, Any]) -> None:
    """A channel stored before fields were checked (or by hand): straight into the database."""
    now = time.time()
    rig.query(
        "insert into channels (name, spec, key_ciphertext, enabled, created_at, updated_at) "
        "values (?, ?, NULL, true, ?, ?)",
        (name, json.dumps({"name": name, **spec}), now, now),
    )
    # any admin change reloads the directory from the database
    assert rig.admin("POST", "/admin/channels/second/enable").status_code == 200
    assert rig.channel(name)["base_url"] == spec["base_url"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_malformed_stored_channel_fails_over_and_counts_as_a_channel_failure(rig: Rig, stream: bool) -> None:
    name = f"malformed-{'stream' if stream else 'plain'}"
    _insert_raw_channel(
        rig,
        name,
        {
            "type": "openai-compatible",
            "base_url": "ftp://upstream.example/v1",
            "pools": ["official-mixed"],
            "priority": 99,
        },
    )
    try:
        out = call(rig, TWO, stream=stream)
        assert out.status == 200, out.text
        rec = rig.record(out.request_id)
        assert rec["status"] == 200 and rec["attempts"] == 2 and rec["channel"] == "first"
        health = rig.channel(name)["health"]
        assert health["failures"] == 1 and health["last_error"].startswith(("connector", "connect")), health
        assert "upstream.example" not in health["last_error"]
    finally:
        assert rig.admin("POST", f"/admin/channels/{name}/disable").status_code == 200


@pytest.mark.parametrize("reads_for_s", [0.0, 1.5], ids=["leaves_mid_event", "leaves_while_sent_to"])
def test_a_client_leaving_a_blocked_stream_is_recorded_as_gone(rig: Rig, reads_for_s: float) -> None:
    """The client reads the first bytes of a stream of multi-megabyte events, then leaves:
    at once, while the gateway is reading the next event from the upstream (a chunk on
    every turn of the event loop), or after ``reads_for_s`` of not reading, while the
    gateway is blocked sending. Either way the call is released as 499 at once, nothing
    is charged, and no task's exception goes unretrieved."""
    group = ONE
    auth = {"Authorization": f"Bearer {rig.gw.tokens[group]}"}
    mark = len(rig.gw.log_text())
    assert httpx.post(rig.sims["solo"] + "/_sim/config", json={"incompressible": True}).status_code == 200
    try:
        body = {
            "model": "gpt-image-2",
            "prompt": "noise",
            "size": "2048x2048",
            "quality": "low",
            "stream": True,
            "partial_images": 3,
            "n": 2,
        }
        with httpx.stream("POST", rig.gw.v1 + "/images/generations", json=body, headers=auth, timeout=60) as r:
            request_id = r.headers["x-request-id"]
            # Kept in a name: httpx closes the connection as soon as this iterator is
            # dropped, so ``next(r.iter_raw())`` alone would leave at once.
            chunks = r.iter_raw(1024)
            next(chunks)  # the stream began; now stop reading while the gateway sends
            time.sleep(reads_for_s)
        rec = rig.record(request_id)
    finally:
        httpx.post(rig.sims["solo"] + "/_sim/config", json={"incompressible": False})
    assert rec["status"] == 499 and rec["error_code"] == "client_disconnected", rec
    assert rec["cost_micros"] == 0 and rec["charges"] == []
    time.sleep(0.5)
    log = rig.gw.log_text()[mark:]
    assert "never retrieved" not in log and "Traceback" not in log, log
    rig.audit()


def test_stream_events_of_megabytes_are_relayed(rig: Rig) -> None:
    """A real partial image is one SSE line of megabytes (aiohttp's line reader stops at 128 KiB)."""
    assert httpx.post(rig.sims["solo"] + "/_sim/config", json={"incompressible": True}).status_code == 200
    try:
        out = call(rig, ONE, stream=True, n=1, partial_images=1)
    finally:
        httpx.post(rig.sims["solo"] + "/_sim/config", json={"incompressible": False})
    assert out.event_types == ["image_generation.partial_image", "image_generation.completed"], out.text[:300]
    assert len(out.events[-1][1]["b64_json"]) > 1_000_000
    rec = rig.record(out.request_id)
    assert rec["status"] == 200 and rec["cost_micros"] > 0 and rec["charges"] == [-rec["cost_micros"]]
