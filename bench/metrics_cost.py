"""The metrics' own cost per call, in process: what one plain call adds to the hot path
(the HTTP middleware, one usage-record observation, one upstream attempt).

    .venv/bin/python bench/metrics_cost.py

End-to-end benchmarks (bench/run.py) cannot resolve a few microseconds on a shared
machine; this times exactly the code the metrics add, against the same app without it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from imagerelay.api.observe import MetricsMiddleware
from imagerelay.domain.records import UsageRecord
from imagerelay.metrics import Metrics

N = 200_000


async def _app(scope: Any, receive: Any, send: Any) -> None:
    scope["endpoint"] = _app
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _send(message: Any) -> None:
    return None


async def _receive() -> Any:
    return {}


async def _per_request(app: Any) -> float:
    started = time.perf_counter()
    for _ in range(N):
        await app({"type": "http", "method": "POST"}, _receive, _send)
    return (time.perf_counter() - started) / N


def main() -> None:
    metrics = Metrics(["gpt-image-2"], multiproc_dir="")
    record = UsageRecord(
        request_id="r",
        user_id=1,
        token_id=1,
        group="Sora2Official",
        model="gpt-image-2",
        route="official-mixed",
        endpoint="generations",
        status=200,
        billing_mode="usage",
        latency_ms=12,
        channel="first",
        upstream_latency_ms=10,
        cost_micros=1234,
    )
    started = time.perf_counter()
    for _ in range(N):
        metrics.observe_call(record)
        metrics.observe_attempt("first", None)
    observe = (time.perf_counter() - started) / N
    middleware = asyncio.run(_per_request(MetricsMiddleware(_app, metrics, {_app: "/v1/images/generations"})))
    bare = asyncio.run(_per_request(_app))
    added = middleware - bare
    print(
        f"record + attempt observations: {observe * 1e6:.1f} us; HTTP middleware: {added * 1e6:.1f} us; "
        f"total per call: {(observe + added) * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
