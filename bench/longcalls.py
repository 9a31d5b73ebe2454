"""Thousands of long calls: what one gateway worker holds while its upstream thinks.

    .venv/bin/python bench/longcalls.py                  # 5,000 plain + 2,000 keep-alive calls, 2,000 jobs, 30 s upstream
    .venv/bin/python bench/longcalls.py --quick          # 100 / 50 / 50 at 1 s: a smoke run
    .venv/bin/python bench/run.py --long-calls           # the same, as a section of bench/RESULTS.md

The upstream is ``bench/fixed_upstream.py`` with a fixed latency (``latency_s``): it sends
the simulator's own small answer, pre-encoded, after one ``asyncio.sleep``, so every
call waits that long and the gateway holds every call in flight at once. (The simulator
itself, rendering and serialising each answer, added ~6 s p99 at 5,000 calls: the bench
measured the simulator.) A first phase sends the same calls straight to that upstream:
its own added latency, the floor. Then three phases, one after the other, each against
the same gateway (one worker, SQLite):

1. ``--calls`` plain calls, each on its own client connection, all sent at once;
2. ``--keepalive`` calls with ``X-Imagerelay-Keepalive: 15`` (whitespace every 15 s);
3. ``--jobs`` async jobs (``Prefer: respond-async``): the submissions are timed, then the
   queue is left to the workers.

For each: calls completed, the latency each call added to the upstream's (p50, p99,
max), the gateway's peak RSS, and the event loop's lag seen from outside: a probe asks
``/healthz`` every 100 ms on its own connection throughout, and its answer time is an
upper bound on how long the loop was busy. The bench raises its file-descriptor limit to
the hard limit (the gateway inherits it, and raises its own too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    ADMIN_TOKEN,
    PY,
    ROOT,
    SIM_KEY,
    Stack,
    admin,
    free_ports,
    peak_rss_mb,
    reset_peak_rss,
    start_stack,
    wait_http,
)

QUICK = (100, 50, 50, 1.0)  # calls, keep-alive calls, jobs, upstream latency: a smoke run
SMALL = {"model": "gpt-image-2", "prompt": "bench long", "size": "1024x1024", "quality": "low"}


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Phase:
    name: str
    sent: int
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    added_s: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0
    hold_rss_mb: float = 0.0  # the largest RSS while every call waited for the upstream
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the measured process's user + system CPU over the phase

    def row(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "added_p50_s": pct(self.added_s, 0.5),
            "added_p99_s": pct(self.added_s, 0.99),
            "added_max_s": max(self.added_s, default=float("nan")),
            "lag_p50_ms": pct(self.lag_ms, 0.5),
            "lag_p99_ms": pct(self.lag_ms, 0.99),
            "lag_max_ms": max(self.lag_ms, default=float("nan")),
            "peak_rss_mb": self.peak_rss_mb,
            "start_rss_mb": self.start_rss_mb,
            "hold_rss_mb": self.hold_rss_mb,
            "wall_s": self.wall_s,
            "cpu_ms_per_call": 1000 * self.cpu_s / max(1, self.sent),
        }


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid``, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssWatch:
    """The measured process's RSS over a phase: its peak (VmHWM, reset at the start), and
    samples every 250 ms, to tell what holding the calls costs from what answering
    them all at once does (every answer arrives in the same second)."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.start_mb = rss_mb(pid)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        reset_peak_rss(pid)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.samples.append((time.perf_counter() - self._t0, rss_mb(self.pid)))

    def holding(self, until_s: float) -> float:
        """The largest RSS sampled before ``until_s`` (the first answers are due)."""
        return max((mb for t, mb in self.samples if t < until_s), default=float("nan"))

    def peak(self) -> float:
        self._stop.set()
        return peak_rss_mb(self.pid)


def probe_main(base: str) -> None:
    """``--probe URL``: GET ``URL/healthz`` every 100 ms on one keep-alive connection until
    stdin closes, then print every answer time (ms) as one JSON list. A process of its own:
    a probe in the load generator's loop would time the load generator too."""
    import threading

    out: list[float] = []
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.get(base + "/healthz")
                out.append((time.perf_counter() - started) * 1000)
            except httpx.HTTPError:
                out.append(30_000.0)
            stop.wait(0.1)
    print(json.dumps(out), flush=True)


class Probe:
    """The event loop's lag seen from outside, for the length of a ``with`` block."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.lag_ms: list[float] = []

    def __enter__(self) -> Probe:
        self.proc = subprocess.Popen(
            [PY, __file__, "--probe", self.base], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate(timeout=60)
        self.lag_ms = json.loads(out)


class _Exchange(asyncio.Protocol):
    """One HTTP/1.1 call on its own connection (``Connection: close``): writes the
    pre-built request, collects the answer until the server closes. aiohttp's client
    cost ~2 ms of CPU per call here: with 5,000 sent at once the load generator itself
    added seconds (the upstream measured directly took 4.6 s p50 at 2,000)."""

    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request = request
        self.done = done
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(b"".join(self.chunks))


def build_request(url: str, token: str, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, the request's bytes) for a POST of ``SMALL`` to ``url``/images/generations."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    body = json.dumps(SMALL).encode()
    head = [
        f"POST /{path}/images/generations HTTP/1.1",
        f"Host: {hostport}",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return host, int(port), ("\r\n".join(head) + "\r\n\r\n").encode() + body


def complete(answer: bytes) -> tuple[int, bytes] | None:
    """(status, body) of a whole HTTP answer, or None if it was cut short."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 "):
        return None
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return (int(head[9:12]), body) if body.endswith(b"0\r\n\r\n") else None
    marker = lower.find(b"content-length:")
    if marker >= 0 and len(body) != int(lower[marker + 15 :].split(b"\r\n", 1)[0]):
        return None
    return int(head[9:12]), body


async def one_call(target: tuple[str, int, bytes], latency_s: float, phase: Phase, expect: int = 200) -> None:
    host, port, request = target
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    done: asyncio.Future[bytes] = loop.create_future()
    try:
        transport, _ = await loop.create_connection(lambda: _Exchange(request, done), host, port)
        try:
            answer = await asyncio.wait_for(done, latency_s + 300)
        finally:
            transport.close()
    except (OSError, TimeoutError) as exc:
        phase.errors[type(exc).__name__] = phase.errors.get(type(exc).__name__, 0) + 1
        return
    got = complete(answer)
    if got is None or got[0] != expect or (expect == 200 and b'"error"' in got[1]):
        key = "cut short" if got is None else f"HTTP {got[0]}"
        phase.errors[key] = phase.errors.get(key, 0) + 1
        return
    phase.ok += 1
    phase.added_s.append(time.perf_counter() - started - (latency_s if expect == 200 else 0.0))


@dataclass
class Upstream:
    url: str  # .../v1
    pid: int


@contextlib.contextmanager
def fixed_latency_channel(stack: Stack, conns: int, latency_s: float) -> Iterator[Upstream]:
    """A ``bench/fixed_upstream.py`` answering the simulator's own small answer after
    ``latency_s``, added as a run-time channel above the simulator in the bench route's
    pool (the simulator stays as the fallback nobody reaches), removed on exit."""
    answer = httpx.post(
        stack.sim_url + "/images/generations", json=SMALL, headers={"Authorization": f"Bearer {SIM_KEY}"}, timeout=60
    )
    answer.raise_for_status()
    answer_file = stack.workdir / "answer-small.json"
    answer_file.write_bytes(answer.content)
    (port,) = free_ports(1)
    with open(stack.workdir / "fixed-latency.log", "wb") as log:
        fixed = subprocess.Popen(
            [
                PY,
                str(ROOT / "bench" / "fixed_upstream.py"),
                "--port",
                str(port),
                "--answer",
                str(answer_file),
                "--latency",
                str(latency_s),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_http(f"http://127.0.0.1:{port}/health", fixed, "fixed-latency upstream")
        admin(
            stack,
            "POST",
            "/admin/channels",
            {
                "name": "slow",
                "type": "openai",
                "base_url": url,
                "api_key": SIM_KEY,
                "pools": ["official-mixed"],
                "priority": 10,
                "max_connections": conns,
            },
        )
        try:
            yield Upstream(url, fixed.pid)
        finally:
            admin(stack, "DELETE", "/admin/channels/slow")
    finally:
        fixed.terminate()
        try:
            fixed.wait(10)
        except subprocess.TimeoutExpired:  # queued jobs still hold calls open on it: stop it hard
            fixed.kill()
            fixed.wait()


async def run_phase(
    stack: Stack,
    token: str,
    name: str,
    count: int,
    latency_s: float,
    headers: dict[str, str],
    expect: int = 200,
    direct: Upstream | None = None,
) -> Phase:
    """``direct``: to the upstream itself (its own cost, the floor), else through the gateway."""
    phase = Phase(name, count)
    target = direct.url if direct else stack.gw_url
    base = stack.gw_url.removesuffix("/v1")
    watch = RssWatch(direct.pid if direct else stack.gateway.pid)
    target_request = build_request(target, token, headers)
    cpu_before = cpu_s(watch.pid)
    with Probe(base) as probe:
        started = time.perf_counter()
        # One connection per call: the point is N client connections at once.
        await asyncio.gather(*(one_call(target_request, latency_s, phase, expect) for _ in range(count)))
        phase.wall_s = time.perf_counter() - started
        if expect != 200:  # jobs: keep probing while the workers start on the queue
            await asyncio.sleep(min(10.0, latency_s))
    phase.lag_ms = probe.lag_ms
    phase.cpu_s = cpu_s(watch.pid) - cpu_before
    phase.peak_rss_mb = watch.peak()
    phase.start_rss_mb = watch.start_mb
    phase.hold_rss_mb = watch.holding(0.9 * latency_s)
    return phase


def _run(main: Any) -> Any:
    """uvloop where installed (it is, with uvicorn): the load generator stays cheap."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def bench_token(stack: Stack, concurrency: int) -> str:
    import httpx

    r = httpx.post(
        stack.gw_url.removesuffix("/v1") + "/admin/tokens",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"user": "demo", "group": "Sora2Official", "name": "long", "concurrency": concurrency},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["token"])


def run(calls: int, keepalive: int, jobs: int, latency_s: float) -> list[dict[str, Any]]:
    """The phases against a gateway of their own, sized for ``calls`` connections at once."""
    limit = raise_fd_limit()
    need = 2 * max(calls, keepalive, jobs) + 1024
    if limit < need:
        raise SystemExit(
            f"needs {need} file descriptors (a client and an upstream socket per call); the hard limit is {limit}"
        )
    workdir = Path(tempfile.mkdtemp(prefix="imagerelay-bench-long-"))
    conns = max(calls, keepalive, jobs) + 512
    stack = start_stack(
        workdir,
        None,
        channel={"max_connections": conns},
        extra_env={
            "IMAGERELAY_MAX_CONNECTIONS": str(conns),
            "IMAGERELAY_JOB_MAX_ACTIVE_PER_USER": str(jobs + 100),
            "IMAGERELAY_JOB_MAX_ACTIVE_PER_TOKEN": str(jobs + 100),
        },
    )
    try:
        return run_on(stack, bench_token(stack, 10 * conns), calls, keepalive, jobs, latency_s)
    finally:
        stack.stop()


def run_on(stack: Stack, token: str, calls: int, keepalive: int, jobs: int, latency_s: float) -> list[dict[str, Any]]:
    """The phases against a running gateway (the quick run reuses bench/run.py's: a few
    hundred calls fit its default limits, and a gateway start is seconds here)."""
    conns = max(calls, keepalive, jobs) + 512
    for _ in range(3):  # warm the render cache and the token cache
        httpx.post(
            stack.gw_url + "/images/generations", json=SMALL, timeout=60, headers={"Authorization": f"Bearer {token}"}
        ).raise_for_status()
    out = []
    with fixed_latency_channel(stack, conns, latency_s) as upstream:
        for name, count, headers, expect in (
            ("direct to the upstream (its own cost)", calls, {}, 200),
            ("plain calls", calls, {}, 200),
            ("keep-alive calls", keepalive, {"X-Imagerelay-Keepalive": "15"}, 200),
            ("queued jobs (submission)", jobs, {"Prefer": "respond-async"}, 202),
        ):
            if count:
                direct = upstream if name.startswith("direct") else None
                out.append(
                    _run(
                        run_phase(stack, SIM_KEY if direct else token, name, count, latency_s, headers, expect, direct)
                    ).row()
                )
                print(json.dumps(out[-1]), flush=True)
    return out


def table(rows: list[dict[str, Any]], latency_s: float) -> list[str]:
    lines = [
        f"Upstream (bench/fixed_upstream.py) answers after {latency_s:g} s; one gateway worker, SQLite; every "
        "call on its own client connection, all sent at once. Added latency: the call's time less the "
        "upstream's; the first row is the upstream called directly (the floor on this machine). Lag: a "
        "/healthz probe every 100 ms from a process of its own. CPU: the measured process's user + system "
        "time over the phase, per call. RSS: idle at the start, the largest while every call waited, the "
        "peak (the answers all arrive in the same second).",
        "",
        "| phase | completed | added latency p50 / p99 / max | event-loop lag (probe) p50 / p99 / max "
        "| CPU per call | RSS idle / waiting / peak |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
        lines.append(
            f"| {r['phase']} | {r['ok']} of {r['sent']}{' (' + errors + ')' if errors else ''} | "
            f"{r['added_p50_s']:.2f} / {r['added_p99_s']:.2f} / {r['added_max_s']:.2f} s | "
            f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.1f} ms | "
            f"{r['cpu_ms_per_call']:.2f} ms | "
            f"{r['start_rss_mb']:.0f} / {r['hold_rss_mb']:.0f} / {r['peak_rss_mb']:.0f} MB |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--keepalive", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe_main(args.probe)
        return
    if args.quick:
        args.calls, args.keepalive, args.jobs, args.latency = QUICK
    rows = run(args.calls, args.keepalive, args.jobs, args.latency)
    print("\n".join(table(rows, args.latency)))


if __name__ == "__main__":
    main()
