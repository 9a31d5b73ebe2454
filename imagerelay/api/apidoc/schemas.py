"""JSON Schemas (OpenAPI 3.1 dialect) of the bodies the API takes and returns.

Written by hand to match the handlers (the app is Starlette, with no models to derive
them from); the route coverage test keeps the list of operations complete, and the
end-to-end tests of each endpoint keep the shapes honest.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        out["required"] = list(required)
    return out


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def list_of(item: Schema, **extra: Schema) -> Schema:
    return obj({"object": {"const": "list"}, "data": {"type": "array", "items": item}, **extra}, ("object", "data"))


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
USD: Schema = {
    "type": "string",
    "description": 'US dollars as a decimal string, e.g. "0.030000"',
    "examples": ["0.030000"],
}
MICROS: Schema = {"type": "integer", "description": "micro-dollars (1 USD = 1,000,000)"}

_LABEL: Schema = {"type": "string", "minLength": 1, "maxLength": 128, "description": "printable, not blank"}
_NAMES: Schema = {"type": "array", "minItems": 1, "maxItems": 64, "items": _LABEL}
_TOKEN_LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
# imagerelay.domain.accountrules.token_changes: one reading for admin, self-service and CLI.
_TOKEN_SETTINGS: dict[str, Schema] = {
    "name": {**_LABEL, "description": 'default: "default"'},
    "expires_at": nullable(
        {"type": "number", "minimum": 0, "maximum": 253_402_300_799, "description": "unix time; null: never"}
    ),
    "spend_cap_usd": nullable(
        {
            "type": "string",
            "pattern": "^[0-9]{1,10}(\\.[0-9]{1,6})?$",
            "description": "plain decimal USD, at most 1000000000; null: no cap",
            "examples": ["25.00"],
        }
    ),
    "allowed_models": nullable({**_NAMES, "description": "models of the key's group; null: all of them"}),
    "rpm": nullable({**_TOKEN_LIMIT, "description": "requests per minute; null: no limit"}),
    "concurrency": nullable({**_TOKEN_LIMIT, "description": "calls at once; null: no limit"}),
}
_API_KEY: dict[str, Schema] = {
    "id": INT,
    "object": {"const": "api_key"},
    "name": STR,
    "user": STR,
    "group": STR,
    "key_hint": {"type": "string", "examples": ["sk-abcd…wxyz"]},
    "status": {"enum": ["active", "revoked", "expired"]},
    "created_at": INT,
    "expires_at": nullable(NUM),
    "limits": obj(
        {
            "rpm": nullable(INT),
            "concurrency": nullable(INT),
            "spend_cap_usd": nullable(USD),
            "allowed_models": nullable({"type": "array", "items": STR}),
        },
        ("rpm", "concurrency", "spend_cap_usd", "allowed_models"),
    ),
    "spent_usd": USD,
    "held_usd": USD,
}
_API_KEY_REQUIRED = (
    "id",
    "object",
    "name",
    "user",
    "group",
    "key_hint",
    "status",
    "created_at",
    "expires_at",
    "limits",
    "spent_usd",
    "held_usd",
)
_CHANNEL_FIELDS: dict[str, Schema] = {
    "name": STR,
    "type": {"enum": ["simulator", "openai", "azure", "openai-compatible"]},
    "pools": {"type": "array", "items": STR},
    "base_url": nullable(STR),
    "api_key_env": nullable({"type": "string", "description": "environment variable holding the key"}),
    "api_version": nullable(STR),
    "azure_form": {"enum": ["deployment", "v1"]},
    "max_connections": {"type": "integer", "minimum": 1},
    "model_map": {"type": "object", "additionalProperties": STR},
    "priority": INT,
    "weight": {"type": "integer", "minimum": 1},
    "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    "enabled": BOOL,
    "proxy": nullable(
        {
            "type": "string",
            "description": "http://, https:// or socks5:// proxy for this channel "
            "(null: HTTPS_PROXY/NO_PROXY from the environment)",
        }
    ),
    "ca_bundle": nullable({"type": "string", "description": "PEM file of CAs to trust for this upstream"}),
    "verify": {"type": "boolean", "description": "verify the upstream's certificate (default true)"},
}

_GENERATION_FIELDS: dict[str, Schema] = {
    "model": {"type": "string", "examples": ["gpt-image-2"]},
    "prompt": STR,
    "n": {"type": "integer", "minimum": 1, "maximum": 10},
    "size": {
        "type": "string",
        "description": "auto or WIDTHxHEIGHT; which sizes a route takes: GET /v1/models/{model}",
        "examples": ["1024x1024"],
    },
    "quality": {"enum": ["low", "medium", "high", "auto"]},
    "background": {"enum": ["transparent", "opaque", "auto"]},
    "output_format": {"enum": ["png", "jpeg", "webp"]},
    "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
    "moderation": {"enum": ["low", "auto"]},
    "response_format": {"enum": ["b64_json", "url"]},
    "stream": BOOL,
    "partial_images": {"type": "integer", "minimum": 0, "maximum": 3},
    "user": STR,
}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "message": STR,
                    "type": STR,
                    "param": nullable(STR),
                    "code": nullable(STR),
                },
                ("message", "type", "param", "code"),
            )
        },
        ("error",),
    ),
    "GenerationRequest": obj(
        _GENERATION_FIELDS,
        ("model", "prompt"),
        description="Which fields a route accepts: the imagerelay field of GET /v1/models/{model}.",
    ),
    "EditRequestMultipart": obj(
        {
            **_GENERATION_FIELDS,
            "image": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "one image file",
            },
            "image[]": {
                "type": "array",
                "maxItems": 16,
                "items": {"type": "string", "contentMediaType": "application/octet-stream"},
            },
            "mask": {"type": "string", "contentMediaType": "application/octet-stream"},
            "input_fidelity": {"enum": ["high", "low"]},
        },
        ("model", "prompt"),
    ),
    "EditRequestJson": obj(
        {
            **_GENERATION_FIELDS,
            "images": {
                "type": "array",
                "minItems": 1,
                "maxItems": 16,
                "items": obj({"image_url": {"type": "string", "description": "a data: URL (base64)"}}, ("image_url",)),
            },
            "mask": obj({"image_url": STR}),
            "input_fidelity": {"enum": ["high", "low"]},
        },
        ("model", "prompt", "images"),
    ),
    "JobRequest": {
        "description": "A generation or edit body plus endpoint (generations | edits) and an optional webhook_url.",
        "allOf": [
            ref("GenerationRequest"),
            obj(
                {"endpoint": {"enum": ["generations", "edits"]}, "webhook_url": {"type": "string", "format": "uri"}},
                ("endpoint",),
            ),
        ],
    },
    "Image": obj({"b64_json": STR, "url": {"type": "string", "format": "uri"}, "revised_prompt": STR}),
    "ImagesResponse": obj(
        {
            "created": INT,
            "data": {"type": "array", "items": ref("Image")},
            "background": STR,
            "output_format": STR,
            "size": STR,
            "quality": STR,
            "usage": obj(
                {
                    "input_tokens": INT,
                    "output_tokens": INT,
                    "total_tokens": INT,
                    "input_tokens_details": obj({"text_tokens": INT, "image_tokens": INT}),
                }
            ),
        },
        ("created", "data"),
    ),
    "Job": obj(
        {
            "id": STR,
            "object": {"const": "image.job"},
            "status": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
            "endpoint": {"enum": ["generations", "edits"]},
            "model": STR,
            "created_at": INT,
            "started_at": nullable(INT),
            "finished_at": nullable(INT),
            "expires_at": INT,
            "webhook": obj({"state": nullable(STR), "attempts": INT}),
            "error": obj({"message": STR, "type": STR, "param": nullable(STR), "code": nullable(STR)}),
            "result": ref("ImagesResponse"),
        },
        ("id", "object", "status", "endpoint", "model", "created_at", "expires_at"),
    ),
    "JobList": list_of(ref("Job"), has_more=BOOL, next_before=nullable(STR)),
    "Capabilities": obj(
        {
            "group": STR,
            "route": STR,
            "description": STR,
            "endpoints": {"type": "array", "items": {"enum": ["generations", "edits"]}},
            "size": obj(
                {
                    "mode": {"enum": ["fixed", "table", "rules"]},
                    "default": STR,
                    "table": {
                        "type": "object",
                        "additionalProperties": {"type": "object", "additionalProperties": STR},
                    },
                    "values": {"type": "array", "items": STR},
                    "auto": BOOL,
                    "multiple_of": INT,
                    "max_edge": INT,
                    "max_aspect_ratio": NUM,
                    "min_pixels": INT,
                    "max_pixels": INT,
                    "examples": {"type": "array", "items": STR},
                },
                ("mode", "default"),
            ),
            "quality": nullable({"type": "array", "items": STR}),
            "background": nullable({"type": "array", "items": STR}),
            "output_format": nullable({"type": "array", "items": STR}),
            "output_compression": BOOL,
            "moderation": nullable({"type": "array", "items": STR}),
            "n": obj({"min": INT, "max": INT}, ("min", "max")),
            "streaming": obj({"supported": BOOL, "partial_images_max": INT}, ("supported", "partial_images_max")),
            "input_fidelity": BOOL,
            "prompt_max_chars": INT,
            "edits": obj({"max_images": INT, "max_image_bytes": INT}),
            "billing": ref("Billing"),
        },
        ("group", "route", "endpoints", "size", "n", "streaming", "billing"),
        description="What the caller's group may send on this model's route (null: the parameter is refused).",
    ),
    "Billing": obj(
        {
            "mode": {"enum": ["per_call", "usage"]},
            "price_per_call_usd": STR,
            "multiplier": STR,
            "usd_per_million_tokens": {"type": "object", "additionalProperties": STR},
        },
        ("mode",),
    ),
    "Model": obj(
        {"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR, "imagerelay": ref("Capabilities")},
        ("id", "object", "created", "owned_by"),
    ),
    "ModelList": list_of(ref("Model")),
    "Pricing": obj(
        {
            "object": {"const": "list"},
            "group": STR,
            "data": {
                "type": "array",
                "items": obj(
                    {
                        "model": STR,
                        "group": STR,
                        "route": STR,
                        "description": STR,
                        "endpoints": {"type": "array", "items": STR},
                        "billing_mode": {"enum": ["per_call", "usage"]},
                        "price_per_call_usd": STR,
                        "multiplier": STR,
                        "usd_per_million_tokens": {"type": "object", "additionalProperties": STR},
                    }
                ),
            },
        },
        ("object", "group", "data"),
    ),
    "Balance": obj(
        {
            "user": STR,
            "balance_micros": MICROS,
            "held_micros": MICROS,
            "available_micros": MICROS,
            "balance_usd": USD,
            "available_usd": USD,
        }
    ),
    "UsageRecord": obj(
        {
            "id": INT,
            "request_id": STR,
            "created_at": NUM,
            "user_id": INT,
            "token_id": nullable(INT),
            "group": STR,
            "model": STR,
            "route": STR,
            "channel": nullable(STR),
            "endpoint": STR,
            "status": INT,
            "error_code": nullable(STR),
            "latency_ms": INT,
            "upstream_latency_ms": nullable(INT),
            "attempts": INT,
            "usage": obj(
                {
                    "input_text_tokens": nullable(INT),
                    "input_image_tokens": nullable(INT),
                    "cached_tokens": nullable(INT),
                    "output_tokens": nullable(INT),
                }
            ),
            "billing_mode": STR,
            "cost_micros": MICROS,
            "cost_usd": USD,
            "price_basis": {},
        }
    ),
    "UsagePage": list_of(ref("UsageRecord"), has_more=BOOL, next_before=nullable(INT)),
    "WebhookSecret": obj({"secret": STR, "header": STR, "scheme": STR}, ("secret", "header", "scheme")),
    "User": obj(
        {
            "id": INT,
            "name": STR,
            "is_admin": BOOL,
            "disabled": BOOL,
            "allowed_groups": nullable(
                {"type": "array", "items": STR, "description": "null: the groups of the user's keys"}
            ),
            "balance_micros": MICROS,
            "held_micros": MICROS,
            "balance_usd": USD,
        },
        ("id", "name", "is_admin", "disabled", "allowed_groups", "balance_micros", "held_micros", "balance_usd"),
    ),
    "UserUpdate": obj(
        {
            "disabled": {
                "type": "boolean",
                "description": "true: every key of the user is refused (401 account_disabled)",
            },
            "is_admin": BOOL,
            "allowed_groups": nullable(
                {**_NAMES, "description": "catalog groups the user may create keys in; null: the groups of their keys"}
            ),
        },
        additionalProperties=False,
    ),
    "UserList": list_of(ref("User")),
    "BalanceAdjustment": obj(
        {
            "amount_usd": {"type": "string", "examples": ["10.00", "-2.50"]},
            "reason": {"type": "string", "maxLength": 1000},
        },
        ("amount_usd", "reason"),
    ),
    "BalanceAdjusted": obj({"user": STR, "balance_micros": MICROS, "balance_usd": USD}),
    "TokenCreate": obj(
        {"user": {**_LABEL, "description": "created if missing"}, "group": STR, **_TOKEN_SETTINGS},
        ("user", "group"),
        additionalProperties=False,
    ),
    "AccountTokenCreate": obj(
        {
            "group": {
                "type": "string",
                "description": "default: the calling key's group; one of the user's allowed_groups",
            },
            **_TOKEN_SETTINGS,
        },
        additionalProperties=False,
    ),
    "TokenUpdate": obj(
        _TOKEN_SETTINGS,
        additionalProperties=False,
        description="Absent fields keep their value; null clears a limit (or the expiry).",
    ),
    "ApiKey": obj(
        _API_KEY,
        _API_KEY_REQUIRED,
        **{"not": {"required": ["token"]}},
        description="An API key as lists show it: key_hint, never the secret.",
    ),
    "ApiKeyCreated": obj(
        {**_API_KEY, "token": {"type": "string", "description": "the secret, shown once"}},
        (*_API_KEY_REQUIRED, "token"),
    ),
    "ApiKeyList": list_of(ref("ApiKey"), has_more=BOOL, next_before=nullable(INT)),
    "ChannelCreate": obj(
        {**_CHANNEL_FIELDS, "api_key": STR},
        ("name", "type", "pools"),
        additionalProperties=False,
        description="base_url is required for azure and openai-compatible.",
    ),
    "ChannelUpdate": obj(
        {
            **_CHANNEL_FIELDS,
            "name": {"type": "string", "description": "if sent, the path's name"},
            "api_key": nullable({"type": "string", "description": "replaces the key; null removes it"}),
        },
        additionalProperties=False,
        description="Absent fields keep their value; every field is "
        "checked again as on create. Channels of the catalog file are changed there (409).",
    ),
    "ChannelDeleted": obj(
        {"name": STR, "object": {"const": "channel"}, "deleted": {"const": True}}, ("name", "object", "deleted")
    ),
    "Channel": obj(
        {
            "name": STR,
            "type": STR,
            "pools": {"type": "array", "items": STR},
            "base_url": nullable(STR),
            "api_version": nullable(STR),
            "model_map": {"type": "object", "additionalProperties": STR},
            "priority": INT,
            "weight": INT,
            "timeout_s": NUM,
            "enabled": BOOL,
            "proxy": nullable({"type": "string", "description": "without credentials"}),
            "ca_bundle": nullable(STR),
            "verify": BOOL,
            "source": {"enum": ["catalog", "database"]},
            "has_key": BOOL,
            "health": obj(
                {
                    "disabled_reason": nullable(STR),
                    "cooldown_remaining_s": NUM,
                    "consecutive_failures": INT,
                    "successes": INT,
                    "failures": INT,
                    "success_rate": nullable(NUM),
                    "last_error": nullable(STR),
                    "last_error_at": nullable(NUM),
                }
            ),
        }
    ),
    "ChannelList": list_of(ref("Channel")),
    "ChannelDisable": obj({"reason": STR}),
    "ChannelTest": obj({"name": STR, "ok": BOOL, "latency_ms": INT, "error": nullable(STR)}),
    "Health": obj({"status": {"const": "ok"}}, ("status",)),
    "Ready": obj(
        {
            "status": {"enum": ["ready", "not ready"]},
            "checks": {
                "type": "object",
                "additionalProperties": STR,
                "description": "database, catalog and (when configured) redis: ok or what failed",
            },
        },
        ("status", "checks"),
    ),
}
