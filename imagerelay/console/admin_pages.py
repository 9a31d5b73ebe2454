"""Console pages for administrators: dashboard, users, all tokens, channels, catalog, usage.

Every handler starts with :func:`require_admin` (a 403 page for anyone else) and every
POST reads its form through :func:`read_form` (CSRF). The work itself is done by the
functions the admin JSON API uses (``api/admin.py``: channels; ``api/account.py``:
balance; ``domain/accountrules.py``: user settings), so a page and the API accept and
refuse exactly the same input. Form fields are turned into those functions' bodies by
the small pure readers below.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imagerelay.api.admin.channels import (
    add_channel_from,
    channel_json,
    probe_channel,
    set_channel_enabled,
    update_channel_from,
)
from imagerelay.api.admin.users import adjust_balance
from imagerelay.api.deps import services_of
from imagerelay.catalog.model import ChannelSpec
from imagerelay.console import charts, reports
from imagerelay.console.accounts import NAME_HELP, NAME_RULE
from imagerelay.console.auth import logins_of, require_admin
from imagerelay.console.passwords import password_problem
from imagerelay.console.web import read_form, redirect, render
from imagerelay.domain import capabilities
from imagerelay.domain.accountrules import label, user_changes
from imagerelay.domain.accounts import TOKEN_STATUSES, TokenFilter, UserInfo
from imagerelay.domain.records import UsageQuery
from imagerelay.errors import ApiError, InvalidRequest
from imagerelay.services import Services

TOKENS_PAGE = 50
USAGE_PAGE = 50
CHANNEL_TYPES = ChannelSpec.model_fields["type"].annotation.__args__  # type: ignore[union-attr]


async def _missing(request: Request, message: str) -> Response:
    return await render(request, "error.html", {"title": "Not found", "message": message}, status=404)


def _row_id(raw: str) -> int | None:
    """A row id from a URL, or None: ASCII digits within an INTEGER column (PostgreSQL
    refuses a larger parameter; ``"²".isdigit()`` is true but no int)."""
    try:
        return reports.parse_id(raw, "id")
    except InvalidRequest:
        return None


def _error(exc: ApiError) -> dict[str, Any]:
    """A refusal from the shared functions, for a form: the message and the field."""
    return {"error": exc.message, "error_param": exc.param}


# -- dashboard --------------------------------------------------------------------------


async def dashboard(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    span = request.query_params.get("span") or "24h"
    by = request.query_params.get("by") or "route"
    if span not in ("24h", "7d", "30d") or by not in ("route", "channel"):
        span, by = "24h", "route"
    since, until, size = reports.window(time.time(), span)
    f = UsageQuery(since=since, until=until)
    buckets = await services.reports.buckets(f, size_s=size, by=by)
    starts = list(range(int(since), int(until), size))
    figures = []
    for metric, (title, _) in charts.METRICS.items():
        series = charts.pivot(buckets, starts, metric)
        figures.append(
            {
                "id": metric,
                "chart": charts.line_chart(title, starts, size, series),
                "labels": [charts.bucket_label(s, size) for s in starts],
                "series": series,
            }
        )
    totals = await services.reports.totals(f)
    return await render(
        request,
        "admin/dashboard.html",
        {
            "span": span,
            "by": by,
            "figures": figures,
            "totals": totals,
            "since": since,
            "until": until,
            "utc": reports.utc_text,
            "per_key": reports.totals_by_key(buckets),
        },
    )


# -- users ------------------------------------------------------------------------------


async def _named_user(request: Request) -> UserInfo | None:
    name = request.path_params["name"]
    return await services_of(request).accounts.find_user(name) if label(name) else None


async def users_page(request: Request, extra: Mapping[str, Any] | None = None, status: int = 200) -> Response:
    await require_admin(request)
    services = services_of(request)
    return await render(
        request,
        "admin/users.html",
        {
            "users": await services.accounts.list_users(),
            "groups": list(services.catalog.groups),
            "name_help": NAME_HELP,
            "form": {},
            **(extra or {}),
        },
        status=status,
    )


async def create_user(request: Request) -> Response:
    """A console user: a name, optionally an admin, optionally a first password (else the
    operator sets one with ``imagerelay user set-password``), and the groups they may use."""
    await require_admin(request)
    services = services_of(request)
    form = await read_form(request)
    name = (form.get("name") or "").strip()  # type: ignore[union-attr]
    password = str(form.get("password") or "")
    groups = form.getlist("groups")
    keep = {"name": name, "is_admin": bool(form.get("is_admin")), "groups": groups}
    if not NAME_RULE.match(name):
        return await users_page(
            request, {"error": f"The user name must be {NAME_HELP}.", "error_param": "name", "form": keep}, 400
        )
    if await services.accounts.find_user(name) is not None:
        return await users_page(
            request, {"error": f"A user named {name!r} already exists.", "error_param": "name", "form": keep}, 400
        )
    try:
        changes = user_changes(
            {"allowed_groups": list(groups) if groups else None}, groups=list(services.catalog.groups)
        )
    except ApiError as exc:
        return await users_page(request, {**_error(exc), "form": keep}, 400)
    if password:
        problem = password_problem(password, name)
        if problem:
            return await users_page(request, {"error": problem, "error_param": "password", "form": keep}, 400)
    # Hashed before the user exists: a busy hasher (503) then leaves no user behind
    # without the password the admin typed.
    hashed = await services.passwords.hash(password) if password else None
    user = await services.accounts.get_or_create_user(name, is_admin=bool(form.get("is_admin")))
    await services.accounts.update_user(user.id, changes)
    if hashed is not None:
        await logins_of(request).set_password_hash(user.id, hashed)
    return redirect(request, f"/console/admin/users/{quote(name, safe='')}", flash=f"User {name} created.")


async def create_invite(request: Request) -> Response:
    """A sign-up invitation code (``IMAGERELAY_SIGNUP=invite``), shown once: it is stored hashed."""
    admin = await require_admin(request)
    form = await read_form(request)
    raw_days = str(form.get("days") or "7")
    if not (raw_days.isascii() and raw_days.isdigit() and 1 <= int(raw_days) <= 365):
        return await users_page(request, {"error": "Valid for must be 1 to 365 days.", "error_param": "days"}, 400)
    note = label(form.get("note") or "-", 500) or "-"
    code = await logins_of(request).create_invite(admin.id, ttl_s=int(raw_days) * 86_400, note=note)
    return await users_page(request, {"invite": code, "invite_days": int(raw_days)})


async def user_page(request: Request, extra: Mapping[str, Any] | None = None, status: int = 200) -> Response:
    await require_admin(request)
    services = services_of(request)
    user = await _named_user(request)
    if user is None:
        return await _missing(request, f"No user named {request.path_params['name']!r}.")
    views, more = await services.accounts.list_tokens(TokenFilter(user_id=user.id, limit=20))
    return await render(
        request,
        "admin/user.html",
        {
            "u": user,
            "groups": list(services.catalog.groups),
            "tokens": views,
            "more_tokens": more,
            "ledger": await services.reports.ledger_entries(user.id),
            "now": time.time(),
            "utc": reports.utc_text,
            "form": {},
            **(extra or {}),
        },
        status=status,
    )


async def user_action(request: Request) -> Response:
    """``balance`` (top up or adjust with a reason), ``disable``, ``enable``, ``groups``."""
    await require_admin(request)
    services = services_of(request)
    user = await _named_user(request)
    if user is None:
        return await _missing(request, f"No user named {request.path_params['name']!r}.")
    action = request.path_params["action"]
    form = await read_form(request)
    path = f"/console/admin/users/{quote(user.name, safe='')}"  # API-made names may hold spaces, ? or #
    try:
        if action == "balance":
            amount = str(form.get("amount") or "").strip()
            new = await adjust_balance(services, user, amount, form.get("reason"))
            return redirect(request, path, flash=f"Balance of {user.name} is now {reports.usd(new)} USD.")
        if action in ("disable", "enable"):
            await services.accounts.update_user(user.id, {"disabled": action == "disable"})
            if action == "disable":
                await logins_of(request).close_user_sessions(user.id)
            return redirect(request, path, flash=f"User {user.name} {action}d.")
        if action == "groups":
            groups = form.getlist("groups")
            body = {"allowed_groups": None if form.get("default_groups") else list(groups)}
            await services.accounts.update_user(user.id, user_changes(body, groups=list(services.catalog.groups)))
            return redirect(request, path, flash=f"Groups of {user.name} saved.")
    except ApiError as exc:
        return await user_page(request, {**_error(exc), "form": dict(form), "failed": action}, 400)
    return await _missing(request, "Unknown action.")


# -- tokens -----------------------------------------------------------------------------


async def tokens_page(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    params = request.query_params
    error = None
    user_name = (params.get("user") or "").strip()
    group = (params.get("group") or "").strip() or None
    status = params.get("status") or None
    before = params.get("before") or ""
    user_id = None
    if user_name:
        found = await services.accounts.find_user(user_name) if label(user_name) else None
        error = None if found else f"No user named {user_name!r}."
        user_id = found.id if found else -1
    if status is not None and status not in TOKEN_STATUSES:
        error, status = "Status must be active, revoked or expired.", None
    if group is not None and group not in services.catalog.groups:
        error, group = f"No group named {group!r}.", None
    before_id = _row_id(before)
    views, more = await services.accounts.list_tokens(
        TokenFilter(user_id=user_id, group=group, status=status, limit=TOKENS_PAGE, before_id=before_id)
    )
    filters = {"user": user_name, "group": group or "", "status": status or ""}
    return await render(
        request,
        "admin/tokens.html",
        {
            "tokens": views,
            "more": more,
            "now": time.time(),
            "utc": reports.utc_text,
            "error": error,
            "filters": filters,
            "groups": list(services.catalog.groups),
            "statuses": TOKEN_STATUSES,
            "next_query": _query({**filters, "before": str(views[-1].id)}) if more and views else None,
        },
        status=400 if error else 200,
    )


async def revoke_token(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    form = await read_form(request)
    raw = request.path_params["token_id"]
    token_id = _row_id(raw)
    view = await services.accounts.view_token(token_id) if token_id is not None else None
    back = str(form.get("back") or "/console/admin/tokens")
    if not back.startswith("/console/admin/"):
        back = "/console/admin/tokens"
    if view is None:
        return redirect(request, back, flash=f"No API key {raw}.")
    await services.accounts.revoke_token(view.id)
    return redirect(request, back, flash=f"API key {view.name} ({view.hint}) of {view.user_name} revoked.")


def _query(values: Mapping[str, str]) -> str:
    return urlencode({k: v for k, v in values.items() if v})


# -- channels ---------------------------------------------------------------------------


def known_pools(services: Services) -> list[str]:
    return sorted({r.spec.pool for r in services.catalog.routes.values()})


def channel_body(form: FormData, *, editing: bool) -> dict[str, Any]:
    """The admin API's channel body from the console's form fields. Numbers are read
    here (a form sends text); everything else is checked by the shared add/update.
    On an edit an empty key field keeps the stored key; ``remove_key`` removes it."""
    body: dict[str, Any] = {}
    if not editing:
        body["name"] = str(form.get("name") or "").strip()
        body["type"] = str(form.get("type") or "")
    body["pools"] = list(form.getlist("pools"))
    for field in ("base_url", "api_version", "ca_bundle"):
        value = str(form.get(field) or "").strip()
        if value or editing:
            body[field] = value or None
    # A proxy URL may carry a password, so the edit form never shows it: empty keeps it.
    proxy = str(form.get("proxy") or "").strip()
    if proxy:
        body["proxy"] = proxy
    elif editing and form.get("clear_proxy"):
        body["proxy"] = None
    for field, kind in (("priority", int), ("weight", int), ("timeout_s", float)):
        raw = str(form.get(field) or "").strip()
        if not raw:
            continue
        try:
            number: float = kind(raw)
        except ValueError:
            raise InvalidRequest(f"{field} must be a number.", param=field) from None
        if kind is float and not (0 < number < 86_400):  # also refuses nan and inf
            raise InvalidRequest(f"{field} must be between 0 and 86400 seconds.", param=field)
        body[field] = number
    body["verify"] = form.get("verify") is not None
    model_map: dict[str, str] = {}
    for line in str(form.get("model_map") or "").splitlines():
        if not line.strip():
            continue
        source, sep, target = line.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise InvalidRequest("Model map: one `model=upstream name` per line.", param="model_map")
        model_map[source.strip()] = target.strip()
    body["model_map"] = model_map
    key = str(form.get("api_key") or "")
    if key.strip():
        body["api_key"] = key.strip()
    elif editing and form.get("remove_key"):
        body["api_key"] = None
    return body


async def channels_page(request: Request, extra: Mapping[str, Any] | None = None, status: int = 200) -> Response:
    await require_admin(request)
    services = services_of(request)
    return await render(
        request,
        "admin/channels.html",
        {
            "channels": [channel_json(services, v) for v in services.directory.views()],
            "types": CHANNEL_TYPES,
            "pools": known_pools(services),
            "form": {},
            **(extra or {}),
        },
        status=status,
    )


async def add_channel(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    form = await read_form(request)
    keep: dict[str, Any] = {k: v for k, v in form.multi_items() if k not in ("api_key", "csrf_token")}
    keep.update(
        pools=form.getlist("pools"), verify=form.get("verify") is not None, model_map_text=form.get("model_map") or ""
    )
    try:
        added = await add_channel_from(services, channel_body(form, editing=False))
    except ApiError as exc:
        return await channels_page(request, {**_error(exc), "form": keep}, 400)
    return redirect(
        request,
        f"/console/admin/channels/{added['name']}",
        flash=f"Channel {added['name']} added. Its key is stored encrypted and is never shown again.",
    )


async def channel_page(request: Request, extra: Mapping[str, Any] | None = None, status: int = 200) -> Response:
    await require_admin(request)
    services = services_of(request)
    name = request.path_params["name"]
    view = next((v for v in services.directory.views() if v.spec.name == name), None)
    if view is None:
        return await _missing(request, f"No channel named {name!r}.")
    serving = [
        f"{r.spec.group} / {r.spec.model}" for r in services.catalog.routes.values() if r.spec.pool in view.spec.pools
    ]
    return await render(
        request,
        "admin/channel.html",
        {
            "ch": channel_json(services, view),
            "spec": view.spec,
            "pools": known_pools(services),
            "serving": serving,
            "model_map_text": "\n".join(f"{k}={v}" for k, v in view.spec.model_map.items()),
            "utc": reports.utc_text,
            **(extra or {}),
        },
        status=status,
    )


async def channel_action(request: Request) -> Response:
    """``edit``, ``test`` (the result is shown on the page), ``enable``, ``disable``."""
    await require_admin(request)
    services = services_of(request)
    name, action = request.path_params["name"], request.path_params["action"]
    form = await read_form(request)
    path = f"/console/admin/channels/{name}"
    try:
        if action == "test":
            return await channel_page(request, {"test": await probe_channel(services, name)})
        if action in ("enable", "disable"):
            await set_channel_enabled(services, name, action == "enable", form.get("reason") or None)
            return redirect(request, path, flash=f"Channel {name} {action}d.")
        if action == "edit":
            await update_channel_from(services, name, channel_body(form, editing=True))
            return redirect(request, path, flash=f"Channel {name} saved.")
    except ApiError as exc:
        if exc.status == 404:
            return await _missing(request, exc.message)
        return await channel_page(request, {**_error(exc), "failed": action}, 400)
    return await _missing(request, "Unknown action.")


# -- catalog ----------------------------------------------------------------------------


def catalog_view(services: Services) -> dict[str, Any]:
    """The catalog as tables: groups, models with prices, routes with price and channels."""
    catalog = services.catalog
    by_pool: dict[str, list[str]] = {}
    for view in services.directory.views():
        for pool in view.spec.pools:
            by_pool.setdefault(pool, []).append(view.spec.name)
    routes = []
    for (group, model), route in sorted(catalog.routes.items()):
        price = capabilities.billing(route)
        profile = route.profile
        routes.append(
            {
                "group": group,
                "model": model,
                "name": route.spec.name,
                "description": route.spec.description,
                "endpoints": ", ".join(route.spec.endpoints),
                "pool": route.spec.pool,
                "channels": by_pool.get(route.spec.pool, []),
                "price": (
                    f"${price['price_per_call_usd']} per call"
                    if price["mode"] == "per_call"
                    else f"usage × {price['multiplier']}"
                ),
                "sizes": capabilities.size_rules(profile)["mode"],
                "quality": ", ".join(profile.quality) if profile.quality else "—",
                "params": route.spec.params,
            }
        )
    models = [
        {
            "name": name,
            "description": spec.description,
            "prices": spec.prices_per_million.model_dump() if spec.prices_per_million else None,
        }
        for name, spec in catalog.file.models.items()
    ]
    groups = [
        {
            "name": name,
            "description": g.description,
            "multiplier": g.multiplier,
            "models": catalog.models_by_group.get(name, ()),
        }
        for name, g in catalog.groups.items()
    ]
    return {"groups": groups, "models": models, "routes": routes, "source": catalog.source}


async def catalog_page(request: Request) -> Response:
    await require_admin(request)
    return await render(request, "admin/catalog.html", catalog_view(services_of(request)))


# -- usage ------------------------------------------------------------------------------


async def _usage_filter(request: Request) -> tuple[UsageQuery, str | None]:
    """The page's filter and the error to show (a filter that cannot be read matches nothing)."""
    params = request.query_params
    user_name = (params.get("user") or "").strip()
    user_id = None
    if user_name:
        found = await services_of(request).accounts.find_user(user_name) if label(user_name) else None
        if found is None:
            return UsageQuery(user_id=-1), f"No user named {user_name!r}."
        user_id = found.id
    try:
        return reports.parse_usage_filter(params, user_id=user_id), None
    except InvalidRequest as exc:
        return UsageQuery(user_id=-1), exc.message


USAGE_FIELDS = ("since", "until", "user", "token", "model", "route", "channel", "status")


async def usage_page(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    f, error = await _usage_filter(request)
    before = request.query_params.get("before") or ""
    before_id = _row_id(before)
    rows, more = await services.reports.named_rows(f, limit=USAGE_PAGE, before_id=before_id)
    filters = {k: request.query_params.get(k) or "" for k in USAGE_FIELDS}
    return await render(
        request,
        "admin/usage.html",
        {
            "rows": rows,
            "more": more,
            "totals": await services.reports.totals(f),
            "error": error,
            "filters": filters,
            "utc": reports.utc_text,
            "usd": reports.usd,
            "csv_query": _query(filters),
            "next_query": _query({**filters, "before": str(rows[-1]["id"])}) if more and rows else None,
            "models": sorted({m for models in services.catalog.models_by_group.values() for m in models}),
            "channels": [v.spec.name for v in services.directory.views()],
            "route_names": sorted({r.spec.name for r in services.catalog.routes.values()}),
        },
        status=400 if error else 200,
    )


async def usage_csv(request: Request) -> Response:
    await require_admin(request)
    f, error = await _usage_filter(request)
    if error:
        return await render(request, "error.html", {"title": "Bad filter", "message": error}, status=400)
    return StreamingResponse(
        reports.usage_csv(services_of(request).reports, f),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="usage.csv"', "cache-control": "no-store"},
    )


routes = [
    Route("/console/admin/", dashboard, methods=["GET"]),
    Route("/console/admin/users", users_page, methods=["GET"]),
    Route("/console/admin/users", create_user, methods=["POST"]),
    Route("/console/admin/invites", create_invite, methods=["POST"]),
    Route("/console/admin/users/{name}", user_page, methods=["GET"]),
    Route("/console/admin/users/{name}/{action}", user_action, methods=["POST"]),
    Route("/console/admin/tokens", tokens_page, methods=["GET"]),
    Route("/console/admin/tokens/{token_id}/revoke", revoke_token, methods=["POST"]),
    Route("/console/admin/channels", channels_page, methods=["GET"]),
    Route("/console/admin/channels", add_channel, methods=["POST"]),
    Route("/console/admin/channels/{name}", channel_page, methods=["GET"]),
    Route("/console/admin/channels/{name}/{action}", channel_action, methods=["POST"]),
    Route("/console/admin/catalog", catalog_page, methods=["GET"]),
    Route("/console/admin/usage", usage_page, methods=["GET"]),
    Route("/console/admin/usage.csv", usage_csv, methods=["GET"]),
]
