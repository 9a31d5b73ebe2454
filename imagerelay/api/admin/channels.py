"""Admin HTTP API: channels (add, list, update, remove, enable/disable, test). Keys go in,
never out.

Authenticated by ``IMAGERELAY_ADMIN_TOKEN`` or by the token of an admin user
(api/admin/auth.py).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.admin.auth import require_admin
from imagerelay.api.deps import services_of
from imagerelay.api.parsing import read_json_object
from imagerelay.api.responses import json_response
from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.accountrules import label
from imagerelay.domain.types import ImageRequest
from imagerelay.errors import ApiError, InvalidRequest, NotFound
from imagerelay.services import Services
from imagerelay.storage.channels import ChannelConflict, ChannelInvalid
from imagerelay.upstreams.base import UpstreamFailure


def channel_json(services: Services, view: Any) -> dict[str, Any]:
    """A channel as admins see it (API and console): its spec, never its key, and its health."""
    spec: ChannelSpec = view.spec
    health = services.pool.health_of(spec.name)
    return {
        "name": spec.name,
        "type": spec.type,
        "pools": list(spec.pools),
        "base_url": spec.base_url,
        "api_version": spec.api_version,
        "model_map": spec.model_map,
        "priority": spec.priority,
        "weight": spec.weight,
        "timeout_s": spec.timeout_s,
        "proxy": _without_credentials(spec.proxy),
        "ca_bundle": spec.ca_bundle,
        "verify": spec.verify,
        "enabled": spec.enabled and not health.disabled_reason,
        "source": view.source,
        "has_key": view.has_key,
        "health": {
            "disabled_reason": health.disabled_reason or view.disabled_reason,
            "cooldown_remaining_s": round(services.pool.cooldown_remaining(spec.name), 1),
            "consecutive_failures": health.consecutive_failures,
            "successes": health.successes,
            "failures": health.failures,
            "success_rate": health.success_rate,
            "last_error": health.last_error,
            "last_error_at": health.last_error_at,
        },
    }


def _without_credentials(url: str | None) -> str | None:
    """A proxy URL as listings show it: a proxy's user and password are secrets too."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, "***@" + netloc, parts.path, parts.query, parts.fragment))


async def list_channels(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    return json_response({"object": "list", "data": [channel_json(services, v) for v in services.directory.views()]})


def channel_view_json(services: Services, name: str) -> dict[str, Any]:
    view = next(v for v in services.directory.views() if v.spec.name == name)
    return channel_json(services, view)


async def add_channel_from(services: Services, body: dict[str, Any]) -> dict[str, Any]:
    """Add the channel ``body`` describes (``api_key`` included, stored encrypted); the
    admin API and the console both come here. Raises :class:`ApiError` naming the field."""
    api_key = _key_of(body)
    try:
        spec = ChannelSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{where or 'channel'}: {first['msg']}", param=where or None) from None
    try:
        await services.directory.add(spec, api_key)
    except ChannelConflict as exc:
        raise ApiError(str(exc), status=409, code="conflict", param="name") from None
    except ChannelInvalid as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    return channel_view_json(services, spec.name)


async def add_channel(request: Request) -> Response:
    await require_admin(request)
    body = await read_json_object(request, 1024 * 1024)
    return json_response(await add_channel_from(services_of(request), body), status=201)


def _key_of(body: dict[str, Any]) -> str | None:
    api_key = body.pop("api_key", None)
    if api_key is not None and not isinstance(api_key, str):
        raise InvalidRequest("api_key must be a string.", param="api_key")
    return api_key


async def update_channel_from(services: Services, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Change fields of a run-time channel; absent fields keep their value, ``api_key``
    replaces the key (``null`` removes it). Calls follow at once in this process and
    within the channel reload interval in the others."""
    set_key = "api_key" in body
    api_key = _key_of(body)
    try:
        await services.directory.update(name, body, set_key=set_key, api_key=api_key)
    except KeyError:
        raise NotFound(f"No channel named {name!r}.") from None
    except ChannelConflict as exc:
        raise ApiError(str(exc), status=409, code="conflict", param="name") from None
    except ChannelInvalid as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    if body.get("enabled") is True:
        services.pool.enable(name)
    return channel_view_json(services, name)


async def update_channel(request: Request) -> Response:
    await require_admin(request)
    body = await read_json_object(request, 1024 * 1024)
    return json_response(await update_channel_from(services_of(request), request.path_params["name"], body))


async def remove_channel(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    name = request.path_params["name"]
    try:
        await services.directory.remove(name)
    except KeyError:
        raise NotFound(f"No channel named {name!r}.") from None
    except ChannelConflict as exc:
        raise ApiError(str(exc), status=409, code="conflict", param="name") from None
    services.pool.enable(name)  # forget its health: a new channel of that name starts clean
    return json_response({"name": name, "object": "channel", "deleted": True})


async def set_channel_enabled(services: Services, name: str, enable: bool, reason: object = None) -> dict[str, Any]:
    """Enable a channel (forgetting its cooldown and any disable of its own) or disable it
    with a reason (printable, at most 1,000 characters, else the default)."""
    text = "disabled by an administrator" if enable else (label(reason, 1000) or "disabled by an administrator")
    try:
        await services.directory.set_enabled(name, enable, text)
    except KeyError:
        raise NotFound(f"No channel named {name!r}.") from None
    if enable:
        services.pool.enable(name)
    return channel_view_json(services, name)


async def set_enabled(request: Request) -> Response:
    await require_admin(request)
    if request.path_params["action"] not in ("enable", "disable"):
        raise NotFound("Unknown channel action; use enable, disable or test.")
    enable = request.path_params["action"] == "enable"
    reason = None
    if not enable and request.headers.get("content-length", "0") != "0":
        reason = (await read_json_object(request, 64 * 1024)).get("reason")
    return json_response(await set_channel_enabled(services_of(request), request.path_params["name"], enable, reason))


async def probe_channel(services: Services, name: str) -> dict[str, Any]:
    """One small real generation through exactly this channel, by the pool's own attempt
    (:meth:`ChannelPool.probe`: key, model map, timeout, connector, answer cleaning),
    whatever the channel's health: ``{name, ok, latency_ms, error}`` (the error scrubbed
    of the channel's secrets)."""
    # Read the database first: the CLI writes channels there directly, and a test right
    # after `channels add` or `channels update` must see what was just written.
    await services.directory.load()
    spec = services.directory.get(name)
    if spec is None:
        raise NotFound(f"No channel named {name!r}.")
    model = next(
        (r.upstream_model for r in services.catalog.routes.values() if r.spec.pool in spec.pools), "gpt-image-2"
    )
    probe = ImageRequest(
        endpoint="generations",
        model=model,
        prompt="a small test square",
        quality="low",
        upstream_params={"quality": "low", "size": "1024x1024"},
        size="1024x1024",
    )
    started = time.monotonic()
    outcome = await services.pool.probe(spec, model, "1024x1024", probe)
    if isinstance(outcome, UpstreamFailure):
        ok, error = False, f"{outcome.kind}: {outcome.detail}"
    else:
        ok, error = bool(outcome.result.items), None
    return {"name": name, "ok": ok, "latency_ms": int((time.monotonic() - started) * 1000), "error": error}


async def test_channel(request: Request) -> Response:
    await require_admin(request)
    return json_response(await probe_channel(services_of(request), request.path_params["name"]))


routes = [
    Route("/admin/channels", list_channels, methods=["GET"]),
    Route("/admin/channels", add_channel, methods=["POST"]),
    Route("/admin/channels/{name}", update_channel, methods=["PATCH"]),
    Route("/admin/channels/{name}", remove_channel, methods=["DELETE"]),
    Route("/admin/channels/{name}/test", test_channel, methods=["POST"]),
    Route("/admin/channels/{name}/{action:str}", set_enabled, methods=["POST"]),
]
