"""Operating endpoints: ``/metrics`` (Prometheus), ``/readyz``, and the HTTP metrics middleware."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.admin.auth import require_admin
from imagerelay.api.deps import bearer, services_of
from imagerelay.api.responses import json_response
from imagerelay.errors import AuthenticationFailed
from imagerelay.metrics import CONTENT_TYPE, Metrics, gauge
from imagerelay.services import Services

# A dependency that does not answer within this is reported down (the probe must answer
# before the orchestrator's own probe timeout, typically 1-5 s).
READY_CHECK_TIMEOUT_S = 2.0
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def _require_scraper(request: Request) -> None:
    """IMAGERELAY_METRICS_TOKEN if set, else the admin credential; nothing if METRICS_OPEN."""
    settings = services_of(request).settings
    if settings.metrics_open:
        return
    if settings.metrics_token:
        given = bearer(request)
        if given is None or not hmac.compare_digest(settings.metrics_token.encode(), given.encode()):
            raise AuthenticationFailed(
                "/metrics needs 'Authorization: Bearer <IMAGERELAY_METRICS_TOKEN>'.", code="invalid_metrics_token"
            )
        return
    await require_admin(request)


async def metrics(request: Request) -> Response:
    await _require_scraper(request)
    services = services_of(request)
    assert services.metrics is not None
    body = services.metrics.render(await _scrape_gauges(services))
    return Response(body, media_type=CONTENT_TYPE)


async def _scrape_gauges(services: Services) -> list[Metric]:
    """Gauges computed now, in the scraping process: the database's and the channels'."""
    q = await services.gauges.read()
    pool = services.pool
    up, cooldown, failures = [], [], []
    for view in services.directory.views():
        name = view.spec.name
        remaining = pool.cooldown_remaining(name)
        usable = view.spec.enabled and not pool.health_of(name).disabled_reason and remaining == 0
        up.append(([name], 1.0 if usable else 0.0))
        cooldown.append(([name], remaining))
        failures.append(([name], float(pool.health_of(name).consecutive_failures)))
    return [
        gauge("imagerelay_open_holds", "Balance holds of calls and jobs in flight.", q.open_holds),
        gauge("imagerelay_held_usd_micros", "Money held by open holds, in micro-dollars.", q.held_micros),
        gauge(
            "imagerelay_jobs",
            "Async jobs queued or running.",
            labels=["status"],
            samples=[(["queued"], q.jobs_queued), (["running"], q.jobs_running)],
        ),
        gauge(
            "imagerelay_job_oldest_queued_age_seconds",
            "Age of the oldest queued job (0 when none).",
            q.oldest_queued_age_s,
        ),
        gauge(
            "imagerelay_channel_up",
            "1 if the channel is enabled and not cooling down (this process's view).",
            labels=["channel"],
            samples=up,
        ),
        gauge(
            "imagerelay_channel_cooldown_seconds",
            "Seconds left of the channel's breaker cooldown.",
            labels=["channel"],
            samples=cooldown,
        ),
        gauge(
            "imagerelay_channel_consecutive_failures",
            "The channel's failures since its last success.",
            labels=["channel"],
            samples=failures,
        ),
    ]


async def readyz(request: Request) -> Response:
    """200 when the database (and Redis, if configured) answer and the catalog is loaded."""
    services = services_of(request)
    checks: dict[str, str] = {
        "database": await _check(services.gauges.ping()),
        "catalog": "ok" if services.catalog.routes else "no routes",
    }
    if services.shared is not None:
        checks["redis"] = await _check(services.shared.redis.bounded(services.shared.redis.client.ping()))
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)


async def _check(probe: Any) -> str:
    """'ok', or what failed by type only (an error's text may name an internal address)."""
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            await probe
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"error: {type(exc).__name__}"
    return "ok"


class MetricsMiddleware:
    """Count and time every HTTP request by its route template (never the raw path: a
    caller could mint label values without bound), and track requests in flight."""

    def __init__(self, app: Any, metrics: Metrics, paths: Mapping[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths  # endpoint -> route template

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 499  # nothing sent: the client left first
        started = time.perf_counter()

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_flight.dec()
            path = self.paths.get(scope.get("endpoint"), "other")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            m.http_request(method, path, str(status)).inc()
            m.http_time(path).observe(time.perf_counter() - started)


routes = [
    Route("/metrics", metrics, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
