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
USD: Schema = {"type": "string", "description": "US dollars as a decimal string, e.g. \"0.030000\"", "examples": ["0.030000"]}
MICROS: Schema = {"type": "integer", "description": "micro-dollars (1 USD = 1,000,000)"}

_GENERATION_FIELDS: dict[str, Schema] = {
    "model": {"type": "string", "examples": ["gpt-image-2"]},
    "prompt": STR,
    "n": {"type": "integer", "minimum": 1, "maximum": 10},
    "size": {"type": "string", "description": "auto or WIDTHxHEIGHT; which sizes a route takes: GET /v1/models/{model}",
             "examples": ["1024x1024"]},
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
    "Error": obj({"error": obj({
        "message": STR, "type": STR, "param": nullable(STR), "code": nullable(STR),
    }, ("message", "type", "param", "code"))}, ("error",)),
    "GenerationRequest": obj(_GENERATION_FIELDS, ("model", "prompt"),
                             description="Which fields a route accepts: the imagerelay field of GET /v1/models/{model}."),
    "EditRequestMultipart": obj({
        **_GENERATION_FIELDS,
        "image": {"type": "string", "contentMediaType": "application/octet-stream", "description": "one image file"},
        "image[]": {"type": "array", "maxItems": 16,
                    "items": {"type": "string", "contentMediaType": "application/octet-stream"}},
        "mask": {"type": "string", "contentMediaType": "application/octet-stream"},
        "input_fidelity": {"enum": ["high", "low"]},
    }, ("model", "prompt")),
    "EditRequestJson": obj({
        **_GENERATION_FIELDS,
        "images": {"type": "array", "minItems": 1, "maxItems": 16,
                   "items": obj({"image_url": {"type": "string", "description": "a data: URL (base64)"}},
                                ("image_url",))},
        "mask": obj({"image_url": STR}),
        "input_fidelity": {"enum": ["high", "low"]},
    }, ("model", "prompt", "images")),
    "JobRequest": {
        "description": "A generation or edit body plus endpoint (generations | edits) and an optional webhook_url.",
        "allOf": [ref("GenerationRequest"),
                  obj({"endpoint": {"enum": ["generations", "edits"]}, "webhook_url": {"type": "string", "format": "uri"}},
                      ("endpoint",))],
    },
    "Image": obj({"b64_json": STR, "url": {"type": "string", "format": "uri"}, "revised_prompt": STR}),
    "ImagesResponse": obj({
        "created": INT, "data": {"type": "array", "items": ref("Image")},
        "background": STR, "output_format": STR, "size": STR, "quality": STR,
        "usage": obj({"input_tokens": INT, "output_tokens": INT, "total_tokens": INT,
                      "input_tokens_details": obj({"text_tokens": INT, "image_tokens": INT})}),
    }, ("created", "data")),
    "Job": obj({
        "id": STR, "object": {"const": "image.job"},
        "status": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
        "endpoint": {"enum": ["generations", "edits"]}, "model": STR,
        "created_at": INT, "started_at": nullable(INT), "finished_at": nullable(INT), "expires_at": INT,
        "webhook": obj({"state": nullable(STR), "attempts": INT}),
        "error": obj({"message": STR, "type": STR, "param": nullable(STR), "code": nullable(STR)}),
        "result": ref("ImagesResponse"),
    }, ("id", "object", "status", "endpoint", "model", "created_at", "expires_at")),
    "Capabilities": obj({
        "group": STR, "route": STR, "description": STR,
        "endpoints": {"type": "array", "items": {"enum": ["generations", "edits"]}},
        "size": obj({"mode": {"enum": ["fixed", "table", "rules"]}, "default": STR,
                     "table": {"type": "object", "additionalProperties": {"type": "object",
                                                                          "additionalProperties": STR}},
                     "values": {"type": "array", "items": STR}, "auto": BOOL, "multiple_of": INT, "max_edge": INT,
                     "max_aspect_ratio": NUM, "min_pixels": INT, "max_pixels": INT,
                     "examples": {"type": "array", "items": STR}}, ("mode", "default")),
        "quality": nullable({"type": "array", "items": STR}),
        "background": nullable({"type": "array", "items": STR}),
        "output_format": nullable({"type": "array", "items": STR}),
        "output_compression": BOOL,
        "moderation": nullable({"type": "array", "items": STR}),
        "n": obj({"min": INT, "max": INT}, ("min", "max")),
        "streaming": obj({"supported": BOOL, "partial_images_max": INT}, ("supported", "partial_images_max")),
        "input_fidelity": BOOL, "prompt_max_chars": INT,
        "edits": obj({"max_images": INT, "max_image_bytes": INT}),
        "billing": ref("Billing"),
    }, ("group", "route", "endpoints", "size", "n", "streaming", "billing"),
        description="What the caller's group may send on this model's route (null: the parameter is refused)."),
    "Billing": obj({
        "mode": {"enum": ["per_call", "usage"]}, "price_per_call_usd": STR, "multiplier": STR,
        "usd_per_million_tokens": {"type": "object", "additionalProperties": STR},
    }, ("mode",)),
    "Model": obj({"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR,
                  "imagerelay": ref("Capabilities")}, ("id", "object", "created", "owned_by")),
    "ModelList": list_of(ref("Model")),
    "Pricing": obj({"object": {"const": "list"}, "group": STR, "data": {"type": "array", "items": obj({
        "model": STR, "group": STR, "route": STR, "description": STR,
        "endpoints": {"type": "array", "items": STR}, "billing_mode": {"enum": ["per_call", "usage"]},
        "price_per_call_usd": STR, "multiplier": STR,
        "usd_per_million_tokens": {"type": "object", "additionalProperties": STR},
    })}}, ("object", "group", "data")),
    "Balance": obj({"user": STR, "balance_micros": MICROS, "held_micros": MICROS, "available_micros": MICROS,
                    "balance_usd": USD, "available_usd": USD}),
    "UsageRecord": obj({
        "id": INT, "request_id": STR, "created_at": NUM, "user_id": INT, "token_id": nullable(INT),
        "group": STR, "model": STR, "route": STR, "channel": nullable(STR), "endpoint": STR, "status": INT,
        "error_code": nullable(STR), "latency_ms": INT, "upstream_latency_ms": nullable(INT), "attempts": INT,
        "usage": obj({"input_text_tokens": nullable(INT), "input_image_tokens": nullable(INT),
                      "cached_tokens": nullable(INT), "output_tokens": nullable(INT)}),
        "billing_mode": STR, "cost_micros": MICROS, "cost_usd": USD, "price_basis": {},
    }),
    "UsagePage": list_of(ref("UsageRecord"), has_more=BOOL, next_before=nullable(INT)),
    "WebhookSecret": obj({"secret": STR, "header": STR, "scheme": STR}, ("secret", "header", "scheme")),
    "User": obj({"id": INT, "name": STR, "is_admin": BOOL, "balance_micros": MICROS, "held_micros": MICROS,
                 "balance_usd": USD}),
    "UserList": list_of(ref("User")),
    "BalanceAdjustment": obj({"amount_usd": {"type": "string", "examples": ["10.00", "-2.50"]},
                              "reason": {"type": "string", "maxLength": 1000}}, ("amount_usd", "reason")),
    "BalanceAdjusted": obj({"user": STR, "balance_micros": MICROS, "balance_usd": USD}),
    "TokenCreate": obj({
        "user": {"type": "string", "maxLength": 128}, "group": STR, "name": {"type": "string", "maxLength": 128},
        "spend_cap_usd": STR, "allowed_models": {"type": "array", "items": STR},
        "rpm": {"type": "integer", "minimum": 1}, "concurrency": {"type": "integer", "minimum": 1},
        "expires_at": {"type": "number", "description": "unix time"},
    }, ("user", "group")),
    "TokenCreated": obj({"token": {"type": "string", "description": "shown once"}, "user": STR, "group": STR}),
    "ChannelCreate": obj({
        "name": STR, "type": {"enum": ["simulator", "openai", "azure", "openai-compatible"]},
        "pools": {"type": "array", "items": STR}, "base_url": STR, "api_key": STR, "api_key_env": STR,
        "api_version": STR, "azure_form": {"enum": ["deployment", "v1"]}, "max_connections": INT,
        "model_map": {"type": "object", "additionalProperties": STR}, "priority": INT, "weight": INT,
        "timeout_s": NUM, "enabled": BOOL,
    }, ("name", "type", "pools")),
    "Channel": obj({
        "name": STR, "type": STR, "pools": {"type": "array", "items": STR}, "base_url": nullable(STR),
        "api_version": nullable(STR), "model_map": {"type": "object", "additionalProperties": STR},
        "priority": INT, "weight": INT, "timeout_s": NUM, "enabled": BOOL,
        "source": {"enum": ["catalog", "database"]}, "has_key": BOOL,
        "health": obj({"disabled_reason": nullable(STR), "cooldown_remaining_s": NUM, "consecutive_failures": INT,
                       "successes": INT, "failures": INT, "success_rate": nullable(NUM),
                       "last_error": nullable(STR), "last_error_at": nullable(NUM)}),
    }),
    "ChannelList": list_of(ref("Channel")),
    "ChannelDisable": obj({"reason": STR}),
    "ChannelTest": obj({"name": STR, "ok": BOOL, "latency_ms": INT, "error": nullable(STR)}),
    "Health": obj({"status": {"const": "ok"}}, ("status",)),
    "Ready": obj({"status": {"enum": ["ready", "not ready"]},
                  "checks": {"type": "object", "additionalProperties": STR,
                             "description": "database, catalog and (when configured) redis: ok or what failed"}},
                 ("status", "checks")),
}
