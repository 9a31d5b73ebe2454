"""One entry per route the app serves: documenting a new route is one entry here.

Keys are ``(METHOD, path)`` with the path as Starlette writes it in the route
(``{name:path}`` convertors included); ``tests/e2e/test_openapi.py`` names any served
route/method missing from this table, and any entry no route serves.
"""

from __future__ import annotations

from typing import Any

from imagerelay.api.apidoc.schemas import Schema, ref

Operation = dict[str, Any]

_ERRORS = {
    "400": "Invalid request (the message says what to send instead)",
    "401": "Missing, unknown, revoked or expired key",
    "403": "The key may not do this",
    "404": "Not found",
    "409": "Conflict (the message says with what)",
    "413": "The request body is too large",
    "429": "Rate, concurrency or job limit reached, or the balance or spend cap does not cover the call",
}


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def op(  # noqa: PLR0913 - one keyword per OpenAPI operation field; each call names the few it sets
    tag: str,
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    auth: str | None = "apiKey",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = ("400", "401"),
    description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Operation:
    responses: dict[str, Any] = {status: ok, **(extra or {})}
    for code in errors:
        responses[code] = _json(ref("Error"), _ERRORS.get(code, "Error"))
    out: Operation = {"tags": [tag], "summary": summary, "responses": responses}
    if description:
        out["description"] = description
    out["security"] = [{auth: []}] if auth else []
    if body is not None:
        out["requestBody"] = {"required": True, "content": body}
    if params:
        out["parameters"] = params
    return out


def path_param(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def query(name: str, description: str, schema: Schema) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def header(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_CALL_HEADERS = [
    header("Idempotency-Key", "A retry with the same key returns the first answer and is charged once."),
    header("Prefer", "respond-async: run as a job (202 + Location)."),
    header(
        "X-Imagerelay-Keepalive",
        "Seconds between whitespace keep-alive bytes on a long call.",
        {"type": "number", "minimum": 1, "maximum": 60},
    ),
]
_IMAGES_OK = {
    "description": "The images (or, with stream=true, server-sent image events)",
    "content": {
        "application/json": {"schema": ref("ImagesResponse")},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}
_JOB_ACCEPTED = _json(ref("Job"), "Accepted as a job (Prefer: respond-async); Location names it")
_CALL_ERRORS = ("400", "401", "403", "429")
_UPSTREAM = {
    "502": _json(ref("Error"), "Upstream failed on every channel tried"),
    "503": _json(ref("Error"), "No channel available, or the upstream is overloaded (retry-after)"),
    "504": _json(ref("Error"), "Upstream did not answer in time"),
}
_USAGE_QUERY = [
    query("since", "unix time", {"type": "number"}),
    query("until", "unix time", {"type": "number"}),
    query("model", "only this model", {"type": "string"}),
    query("status", "only this HTTP status", {"type": "integer"}),
    query("limit", "page size", {"type": "integer", "minimum": 1}),
    query("before", "next_before of the previous page", {"type": "integer"}),
    query("request_id", "one call (its x-request-id); for an async job, every attempt", {"type": "string"}),
]
_CHANNEL = path_param("name", "channel name")
_TOKEN_ID = path_param("token_id", "API key id (the id field; another user's key is a 404 too)", {"type": "integer"})
_TOKEN_QUERY = [
    query("group", "only keys of this group", {"type": "string"}),
    query("status", "only keys in this state", {"enum": ["active", "revoked", "expired"]}),
    query("limit", "page size (default 100)", {"type": "integer", "minimum": 1, "maximum": 500}),
    query("before", "next_before of the previous page", {"type": "integer", "minimum": 0}),
]
_KEY = _json(ref("ApiKey"), "The key (key_hint, never the secret)")
_KEY_CREATED = _json(ref("ApiKeyCreated"), "The key, with its secret in token: shown this once")
_SELF_SERVICE = "A restricted key (one with a spend cap or allowed_models) cannot manage keys: 403 restricted_api_key."

OPERATIONS: dict[tuple[str, str], Operation] = {
    # -- public: images ----------------------------------------------------------------
    ("POST", "/v1/images/generations"): op(
        "images",
        "Create images",
        _IMAGES_OK,
        body={"application/json": {"schema": ref("GenerationRequest")}},
        params=_CALL_HEADERS,
        errors=_CALL_ERRORS,
        extra={"202": _JOB_ACCEPTED, **_UPSTREAM},
    ),
    ("POST", "/v1/images/edits"): op(
        "images",
        "Edit images",
        _IMAGES_OK,
        body={
            "multipart/form-data": {
                "schema": ref("EditRequestMultipart"),
                "encoding": {
                    "image": {"contentType": "image/png, image/jpeg, image/webp"},
                    "image[]": {"contentType": "image/png, image/jpeg, image/webp"},
                    "mask": {"contentType": "image/png"},
                },
            },
            "application/json": {"schema": ref("EditRequestJson")},
        },
        params=_CALL_HEADERS,
        errors=(*_CALL_ERRORS, "413"),
        extra={"202": _JOB_ACCEPTED, **_UPSTREAM},
    ),
    ("POST", "/v1/images/jobs"): op(
        "jobs",
        "Submit an async image job",
        _JOB_ACCEPTED,
        status="202",
        body={
            "application/json": {"schema": ref("JobRequest")},
            "multipart/form-data": {"schema": ref("EditRequestMultipart")},
        },
        params=_CALL_HEADERS[:1],
        errors=_CALL_ERRORS,
    ),
    ("GET", "/v1/images/jobs"): op(
        "jobs",
        "The key's user's jobs, newest first (expired jobs are gone)",
        _json(ref("JobList"), "A page (results carry URLs, never b64_json)"),
        params=[
            query(
                "status", "only jobs in this state", {"enum": ["queued", "running", "succeeded", "failed", "canceled"]}
            ),
            query("limit", "page size (default 20)", {"type": "integer", "minimum": 1, "maximum": 100}),
            query(
                "before",
                "next_before of the previous page (a job id of this user, else 400)",
                {"type": "string", "maxLength": 64},
            ),
        ],
    ),
    ("GET", "/v1/images/jobs/{job_id}"): op(
        "jobs",
        "Get a job",
        _json(ref("Job"), "The job"),
        errors=("401", "404"),
        params=[
            path_param("job_id", "job id"),
            query("include", "b64_json: inline the images", {"enum": ["b64_json"]}),
        ],
    ),
    ("DELETE", "/v1/images/jobs/{job_id}"): op(
        "jobs",
        "Cancel a job",
        _json(ref("Job"), "The job, canceled"),
        errors=("401", "404"),
        params=[path_param("job_id", "job id")],
        extra={"409": _json(ref("Error"), "The job already finished (code job_finished)")},
    ),
    ("GET", "/v1/files/images/{name}"): op(
        "images",
        "An image behind a signed URL",
        {
            "description": "The image",
            "content": {
                "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
                "image/jpeg": {"schema": {"type": "string", "contentMediaType": "image/jpeg"}},
                "image/webp": {"schema": {"type": "string", "contentMediaType": "image/webp"}},
            },
        },
        auth=None,
        errors=("404",),
        params=[
            path_param("name", "file name"),
            query("expires", "unix time", {"type": "string"}),
            query("sig", "signature", {"type": "string"}),
        ],
    ),
    # -- public: models and account -------------------------------------------------------
    ("GET", "/v1/models"): op(
        "models",
        "The key's group's models, with their capabilities",
        _json(ref("ModelList"), "Models"),
        errors=("401",),
    ),
    ("GET", "/v1/models/{model:path}"): op(
        "models",
        "One model and what its route accepts for the key's group",
        _json(ref("Model"), "The model"),
        errors=("401", "404"),
        params=[path_param("model", "model id, e.g. gpt-image-2")],
    ),
    ("GET", "/v1/pricing"): op(
        "account", "Prices of the key's group", _json(ref("Pricing"), "Prices"), errors=("401",)
    ),
    ("GET", "/v1/account/balance"): op("account", "Balance", _json(ref("Balance"), "Balance"), errors=("401",)),
    ("GET", "/v1/account/usage"): op(
        "account", "Usage records of the key's user", _json(ref("UsagePage"), "A page"), params=_USAGE_QUERY
    ),
    ("GET", "/v1/account/tokens"): op(
        "account",
        "The user's API keys",
        _json(ref("ApiKeyList"), "A page, newest first"),
        params=_TOKEN_QUERY,
        description="Any key of the user may list (restricted ones too).",
    ),
    ("POST", "/v1/account/tokens"): op(
        "account",
        "Create an API key for yourself",
        _KEY_CREATED,
        status="201",
        body={"application/json": {"schema": ref("AccountTokenCreate")}},
        errors=("400", "401", "403", "413"),
        description=_SELF_SERVICE + " A group outside the user's allowed_groups (default: the groups of "
        "their keys) is 403 group_not_allowed.",
    ),
    ("PATCH", "/v1/account/tokens/{token_id}"): op(
        "account",
        "Rename one of your keys or change its limits",
        _KEY,
        body={"application/json": {"schema": ref("TokenUpdate")}},
        errors=("400", "401", "403", "404", "413"),
        params=[_TOKEN_ID],
        description=_SELF_SERVICE,
    ),
    ("DELETE", "/v1/account/tokens/{token_id}"): op(
        "account",
        "Revoke one of your keys",
        _json(ref("ApiKey"), "The key, revoked (again: the same answer)"),
        errors=("401", "403", "404"),
        params=[_TOKEN_ID],
        description=_SELF_SERVICE,
    ),
    ("GET", "/v1/account/webhook-secret"): op(
        "jobs", "The secret that signs your job webhooks", _json(ref("WebhookSecret"), "Secret"), errors=("401",)
    ),
    # -- admin ----------------------------------------------------------------------------
    ("GET", "/admin/users"): op("admin", "Users", _json(ref("UserList"), "Users"), auth="admin", errors=("401", "403")),
    ("PATCH", "/admin/users/{name}"): op(
        "admin",
        "Disable or enable a user, set the admin flag and the groups they may create keys in",
        _json(ref("User"), "The user"),
        auth="admin",
        body={"application/json": {"schema": ref("UserUpdate")}},
        errors=("400", "401", "403", "404", "413"),
        params=[path_param("name", "user name")],
    ),
    ("POST", "/admin/users/{name}/balance"): op(
        "admin",
        "Top up or adjust a balance",
        _json(ref("BalanceAdjusted"), "New balance"),
        auth="admin",
        body={"application/json": {"schema": ref("BalanceAdjustment")}},
        errors=("400", "401", "403", "404"),
        params=[path_param("name", "user name")],
    ),
    ("GET", "/admin/usage"): op(
        "admin",
        "Usage records of everyone (or one user)",
        _json(ref("UsagePage"), "A page"),
        auth="admin",
        errors=("400", "401", "403", "404"),
        params=[query("user", "user name", {"type": "string"}), *_USAGE_QUERY],
    ),
    ("GET", "/admin/tokens"): op(
        "admin",
        "API keys of everyone (or one user)",
        _json(ref("ApiKeyList"), "A page, newest first"),
        auth="admin",
        errors=("400", "401", "403", "404"),
        params=[query("user", "only this user's keys (unknown: 404)", {"type": "string"}), *_TOKEN_QUERY],
    ),
    ("POST", "/admin/tokens"): op(
        "admin",
        "Create an API key (and its user if missing)",
        _KEY_CREATED,
        status="201",
        auth="admin",
        body={"application/json": {"schema": ref("TokenCreate")}},
        errors=("400", "401", "403", "413"),
    ),
    ("GET", "/admin/tokens/{token_id}"): op(
        "admin", "One API key", _KEY, auth="admin", errors=("401", "403", "404"), params=[_TOKEN_ID]
    ),
    ("PATCH", "/admin/tokens/{token_id}"): op(
        "admin",
        "Rename an API key or change its limits",
        _KEY,
        auth="admin",
        body={"application/json": {"schema": ref("TokenUpdate")}},
        errors=("400", "401", "403", "404", "413"),
        params=[_TOKEN_ID],
    ),
    ("DELETE", "/admin/tokens/{token_id}"): op(
        "admin",
        "Revoke an API key",
        _json(ref("ApiKey"), "The key, revoked (again: the same answer)"),
        auth="admin",
        errors=("401", "403", "404"),
        params=[_TOKEN_ID],
    ),
    ("GET", "/admin/channels"): op(
        "admin", "Channels and their health", _json(ref("ChannelList"), "Channels"), auth="admin", errors=("401", "403")
    ),
    ("POST", "/admin/channels"): op(
        "admin",
        "Add a channel",
        _json(ref("Channel"), "The channel"),
        status="201",
        auth="admin",
        body={"application/json": {"schema": ref("ChannelCreate")}},
        errors=("400", "401", "403", "413"),
        extra={"409": _json(ref("Error"), "A channel with this name exists")},
    ),
    ("PATCH", "/admin/channels/{name}"): op(
        "admin",
        "Change a channel added at run time",
        _json(ref("Channel"), "The channel"),
        auth="admin",
        body={"application/json": {"schema": ref("ChannelUpdate")}},
        errors=("400", "401", "403", "404", "413"),
        params=[_CHANNEL],
        description="Calls follow at once in this process, within the channel reload interval in the others.",
        extra={"409": _json(ref("Error"), "The channel comes from the catalog file: change it there")},
    ),
    ("DELETE", "/admin/channels/{name}"): op(
        "admin",
        "Remove a channel added at run time",
        _json(ref("ChannelDeleted"), "Removed"),
        auth="admin",
        errors=("401", "403", "404"),
        params=[_CHANNEL],
        extra={
            "409": _json(ref("Error"), "The channel comes from the catalog file: remove it there (or disable it here)")
        },
    ),
    ("POST", "/admin/channels/{name}/test"): op(
        "admin",
        "One small real generation through this channel",
        _json(ref("ChannelTest"), "Result"),
        auth="admin",
        errors=("401", "403", "404"),
        params=[_CHANNEL],
    ),
    ("POST", "/admin/channels/{name}/{action:str}"): op(
        "admin",
        "Enable or disable a channel",
        _json(ref("Channel"), "The channel"),
        auth="admin",
        errors=("401", "403", "404"),
        params=[_CHANNEL, path_param("action", "enable or disable", {"enum": ["enable", "disable"]})],
    ),
    # -- operating ------------------------------------------------------------------------
    ("GET", "/healthz"): op("operations", "Liveness", _json(ref("Health"), "Alive"), auth=None, errors=()),
    ("GET", "/readyz"): op(
        "operations",
        "Readiness: database, Redis (if configured), catalog",
        _json(ref("Ready"), "Ready"),
        auth=None,
        errors=(),
        extra={"503": _json(ref("Ready"), "Not ready; checks says what failed")},
    ),
    ("GET", "/metrics"): op(
        "operations",
        "Prometheus metrics (docs/monitoring.md)",
        {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}},
        auth="metrics",
        errors=("401", "403"),
        description="IMAGERELAY_METRICS_TOKEN if set, else the admin credential; open with IMAGERELAY_METRICS_OPEN.",
    ),
    ("GET", "/openapi.json"): op(
        "operations", "This document", _json({"type": "object"}, "OpenAPI 3.1"), auth=None, errors=()
    ),
    ("GET", "/docs"): op(
        "operations",
        "API reference (Swagger UI)",
        {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
        auth=None,
        errors=(),
    ),
    ("GET", "/docs/assets/{name}"): op(
        "operations",
        "The docs page's vendored files",
        {
            "description": "A file",
            "content": {
                "application/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        auth=None,
        errors=("404",),
        params=[path_param("name", "file name")],
    ),
}
