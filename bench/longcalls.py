"""Thousands of long calls: what one gateway worker holds while its upstream thinks.

    .venv/bin/python bench/longcalls.py                  # 5,000 plain + 2,000 keep-alive calls, 2,000 jobs, 30 s upstream
    .venv/bin/python bench/longcalls.py --quick          # 200 / 100 / 100 at 3 s: a smoke run
    .venv/bin/python bench/run.py --long-calls           # the same, as a section of bench/RESULTS.md

The upstream is the simulator with a fixed latency (``latency_s``): every call waits
that long for its answer, so the gateway holds every call in flight at once. Three
phases, one after the other, each against the same gateway (one worker, SQLite):

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
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ADMIN_TOKEN, SIM_KEY, Stack, peak_rss_mb, reset_peak_rss, set_sim, start_stack  # noqa: E402

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
    wall_s: float = 0.0

    def row(self) -> dict[str, Any]:
        return {"phase": self.name, "sent": self.sent, "ok": self.ok, "errors": self.errors,
                "added_p50_s": pct(self.added_s, 0.5), "added_p99_s": pct(self.added_s, 0.99),
                "added_max_s": max(self.added_s, default=float("nan")),
                "lag_p50_ms": pct(self.lag_ms, 0.5), "lag_p99_ms": pct(self.lag_ms, 0.99),
                "lag_max_ms": max(self.lag_ms, default=float("nan")), "peak_rss_mb": self.peak_rss_mb,
                "wall_s": self.wall_s}


class RssWatch:
    """The gateway's peak RSS over a phase (VmHWM, reset at the start)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        reset_peak_rss(pid)

    def peak(self) -> float:
        return peak_rss_mb(self.pid)


async def probe_lag(base: str, stop: asyncio.Event, out: list[float]) -> None:
    """GET /healthz every 100 ms on one keep-alive connection; its time, in ms."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with session.get(base + "/healthz", timeout=aiohttp.ClientTimeout(total=30)) as r:
                    await r.read()
                out.append((time.perf_counter() - started) * 1000)
            except aiohttp.ClientError:
                out.append(30_000.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


async def one_call(session: aiohttp.ClientSession, url: str, token: str, headers: dict[str, str],
                   latency_s: float, phase: Phase, expect: int = 200) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, json=SMALL, headers={"Authorization": f"Bearer {token}", **headers}) as r:
            body = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        phase.errors[type(exc).__name__] = phase.errors.get(type(exc).__name__, 0) + 1
        return
    if status != expect or (expect == 200 and b'"error"' in body[:200].lstrip()[:20]):
        key = f"HTTP {status}"
        phase.errors[key] = phase.errors.get(key, 0) + 1
        return
    phase.ok += 1
    phase.added_s.append(time.perf_counter() - started - (latency_s if expect == 200 else 0.0))


async def run_phase(stack: Stack, token: str, name: str, count: int, latency_s: float,
                    headers: dict[str, str], expect: int = 200, direct: bool = False) -> Phase:
    """``direct``: to the simulator itself (its own cost, to subtract), else through the gateway."""
    phase = Phase(name, count)
    target = stack.sim_url if direct else stack.gw_url
    base = stack.gw_url.removesuffix("/v1")
    watch = RssWatch(stack.sim.pid if direct else stack.gateway.pid)
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_lag(base, stop, phase.lag_ms))
    # One connection per call (no limit): the point is N client connections at once.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=latency_s + 300)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = target + "/images/generations"
        await asyncio.gather(*(one_call(session, url, token, headers, latency_s, phase, expect) for _ in range(count)))
    phase.wall_s = time.perf_counter() - started
    if expect != 200:  # jobs: keep probing while the workers start on the queue
        await asyncio.sleep(min(10.0, latency_s))
    stop.set()
    await prober
    phase.peak_rss_mb = watch.peak()
    return phase


def bench_token(stack: Stack, concurrency: int) -> str:
    import httpx

    r = httpx.post(stack.gw_url.removesuffix("/v1") + "/admin/tokens", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                   json={"user": "demo", "group": "Sora2Official", "name": "long", "concurrency": concurrency},
                   timeout=30)
    r.raise_for_status()
    return str(r.json()["token"])


def run(calls: int, keepalive: int, jobs: int, latency_s: float) -> list[dict[str, Any]]:
    limit = raise_fd_limit()
    need = 2 * max(calls, keepalive, jobs) + 1024
    if limit < need:
        raise SystemExit(f"needs {need} file descriptors (a client and an upstream socket per call); "
                         f"the hard limit is {limit}")
    workdir = Path(tempfile.mkdtemp(prefix="imagerelay-bench-long-"))
    conns = max(calls, keepalive, jobs) + 512
    stack = start_stack(workdir, None, channel={"max_connections": conns}, extra_env={
        "IMAGERELAY_MAX_CONNECTIONS": str(conns),
        "IMAGERELAY_JOB_MAX_ACTIVE_PER_USER": str(jobs + 100), "IMAGERELAY_JOB_MAX_ACTIVE_PER_TOKEN": str(jobs + 100)})
    try:
        token = bench_token(stack, 10 * conns)
        set_sim(stack, latency_s=0)
        import httpx

        for _ in range(3):  # warm the render cache and the token cache
            httpx.post(stack.gw_url + "/images/generations", json=SMALL, timeout=60,
                       headers={"Authorization": f"Bearer {token}"}).raise_for_status()
        set_sim(stack, latency_s=latency_s)
        out = []
        for name, count, headers, expect in (
            ("direct to the simulator (its own cost)", calls, {}, 200),
            ("plain calls", calls, {}, 200),
            ("keep-alive calls", keepalive, {"X-Imagerelay-Keepalive": "15"}, 200),
            ("queued jobs (submission)", jobs, {"Prefer": "respond-async"}, 202),
        ):
            if count:
                direct = name.startswith("direct")
                out.append(asyncio.run(run_phase(stack, SIM_KEY if direct else token, name, count, latency_s, headers,
                                                 expect, direct)).row())
                print(json.dumps(out[-1]), flush=True)
        return out
    finally:
        stack.stop()


def table(rows: list[dict[str, Any]], latency_s: float) -> list[str]:
    lines = [f"Upstream answers after {latency_s:g} s; one gateway worker, SQLite; every call on its own client "
             "connection, all sent at once.", "",
             "| phase | completed | added latency p50 / p99 / max | event-loop lag (probe) p50 / p99 / max | gateway peak RSS |",
             "|---|---|---|---|---|"]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
        lines.append(f"| {r['phase']} | {r['ok']} of {r['sent']}{' (' + errors + ')' if errors else ''} | "
                     f"{r['added_p50_s']:.2f} / {r['added_p99_s']:.2f} / {r['added_max_s']:.2f} s | "
                     f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.1f} ms | "
                     f"{r['peak_rss_mb']:.0f} MB |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--keepalive", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.keepalive, args.jobs, args.latency = 200, 100, 100, 3.0
    rows = run(args.calls, args.keepalive, args.jobs, args.latency)
    print("\n".join(table(rows, args.latency)))


if __name__ == "__main__":
    main()
