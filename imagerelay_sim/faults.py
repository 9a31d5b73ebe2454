"""Simulator errors (OpenAI and Azure shapes) and fault-injection rules."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# =========================================================================== errors


class SimError(Exception):
    """An HTTP error answer in the exact shape the simulated service uses."""

    def __init__(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> SimError:
    """The official error shape: all four keys present, ``param``/``code`` may be null."""
    return SimError(status, {"error": {"message": message, "type": type, "param": param, "code": code}}, headers)


def azure_error(
    status: int,
    code: str,
    message: str,
    *,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> SimError:
    """Azure's own (gateway-level) shape: ``{"error": {"code", "message", ...}}``."""
    return SimError(status, {"error": {"code": code, "message": message, **(extra or {})}}, headers)


def _invalid_value(param: str, value: object, allowed: Sequence[str]) -> SimError:
    quoted = [f"'{a}'" for a in allowed]
    listed = (
        quoted[0]
        if len(quoted) == 1
        else ", ".join(quoted[:-1]) + (", and " if len(quoted) > 2 else " and ") + quoted[-1]
    )
    return openai_error(
        400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param, code="invalid_value"
    )


# =========================================================================== faults


#: Fault types accepted by ``POST /_sim/faults`` (aliases in :data:`_FAULT_ALIASES`).
FAULT_TYPES: tuple[str, ...] = (
    "latency",  # added delay: latency_s + uniform(0, latency_jitter_s); combines with the others
    "server_error",  # 500 server_error
    "overloaded",  # 503 server_is_overloaded (Azure: ServiceUnavailable)
    "rate_limit",  # 429 rate_limit_exceeded + retry-after (retry_after, default 1 s; retry_after_ms optional)
    "unauthorized",  # 401 invalid_api_key (Azure: code "401")
    "status",  # any status: "status" (default 502) and optional "body" / "headers"
    "moderation",  # 400 image_generation_user_error / moderation_blocked
    "content_filter",  # 400 Azure contentFilter with inner_error ResponsibleAIPolicyViolation
    "reset",  # the connection is reset (RST) without any response byte
    "drop",  # the connection is closed (FIN) without any response byte: an idle keep-alive timing out
    "truncate",  # content-length announces the full body, half is sent, connection closed
    "invalid_json",  # 200 application/json whose body is not valid JSON
    "data_url_prefix",  # b64_json starts with "data:image/png;base64,"
    "no_padding",  # b64_json without its trailing "=" padding (the image is made to need some)
    "bad_base64",  # b64_json that is not decodable base64
    "stream_cut",  # stream: first event, then the connection drops (non-stream: like truncate)
    "stream_error",  # stream: first event, then an error event (non-stream: like server_error)
    "echo_key",  # 400 whose message (and code) echo the key and URL the request came with: a hostile upstream
    "no_usage",  # 200 without "usage" (plain answer and completed events)
    "empty_usage",  # 200 with "usage": {}
    "zero_usage",  # 200 with every usage count 0
    "garbage_usage",  # 200 with usage counts that are not token counts (strings, negatives, floats)
)
#: The faults that only change the ``usage`` of a successful answer.
USAGE_FAULTS = frozenset({"no_usage", "empty_usage", "zero_usage", "garbage_usage"})
_FAULT_ALIASES = {
    "500": "server_error",
    "503": "overloaded",
    "429": "rate_limit",
    "401": "unauthorized",
    "connection_reset": "reset",
    "truncated": "truncate",
    "truncated_body": "truncate",
    "data_url": "data_url_prefix",
    "missing_padding": "no_padding",
    "undecodable_base64": "bad_base64",
    "moderation_blocked": "moderation",
    "contentFilter": "content_filter",
}
_FAULT_KEYS = frozenset(
    {
        "type",
        "count",
        "rate",
        "seed",
        "endpoint",
        "latency_s",
        "latency_jitter_s",
        "retry_after",
        "retry_after_ms",
        "status",
        "body",
        "headers",
        "message",
    }
)
_RESPONSE_FAULTS = frozenset(
    {
        "truncate",
        "invalid_json",
        "data_url_prefix",
        "no_padding",
        "bad_base64",
        "stream_cut",
        "stream_error",
        *USAGE_FAULTS,
    }
)


@dataclass
class FaultRule:
    """One active fault. See :func:`parse_fault` for the JSON it is made from."""

    type: str
    count: int | None = None  # remaining matching requests it applies to; None = until cleared
    rate: float = 1.0
    seed: int = 0
    endpoint: str | None = None
    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    retry_after: float = 1.0
    retry_after_ms: int | None = None
    status: int = 502
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    seen: int = 0
    fired: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": self.type,
            "count": self.count,
            "rate": self.rate,
            "seed": self.seed,
            "endpoint": self.endpoint,
            "seen": self.seen,
            "fired": self.fired,
        }
        if self.type == "latency":
            out.update(latency_s=self.latency_s, latency_jitter_s=self.latency_jitter_s)
        if self.type == "rate_limit":
            out.update(retry_after=self.retry_after, retry_after_ms=self.retry_after_ms)
        if self.type == "status":
            out.update(status=self.status)
        return out


def parse_fault(raw: object) -> FaultRule:
    """Validate one fault object from ``POST /_sim/faults``.

    Schema (all keys but ``type`` optional)::

        {"type": one of FAULT_TYPES (or an alias such as "500", "429", "reset"),
         "count": K,            # applies to the next K matching requests, then expires
         "rate": 0..1,          # each matching request is hit with this probability (default 1)
         "seed": int,           # seeds that rule's RNG (default 0) so runs are repeatable
         "endpoint": "generations" | "edits",   # only match this endpoint
         "latency_s": s, "latency_jitter_s": s,  # "latency"
         "retry_after": s, "retry_after_ms": ms,  # "rate_limit" (retry-after header, seconds)
         "status": int, "body": any JSON, "headers": {..},  # "status" (headers: any error fault)
         "message": str}        # overrides the error message of error faults

    ``count`` is consumed by every matching request that reaches the rule, whether the
    rate lets it fire or not: ``{"type": "503", "count": 10, "rate": 0.3}`` means "about
    three of the next ten requests". Raises :class:`ValueError` with a readable reason.
    """
    if not isinstance(raw, dict):
        raise ValueError("a fault must be a JSON object")  # noqa: TRY004 - the control API's contract
    unknown = set(raw) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault keys {sorted(unknown)}; allowed: {sorted(_FAULT_KEYS)}")
    kind = str(raw.get("type", ""))
    kind = _FAULT_ALIASES.get(kind, kind)
    if kind not in FAULT_TYPES:
        raise ValueError(
            f"unknown fault type {raw.get('type')!r}; known: {list(FAULT_TYPES)} and aliases {sorted(_FAULT_ALIASES)}"
        )

    def num(key: str, default: float, lo: float, hi: float) -> float:
        value = raw.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(f"{key} must be a number between {lo} and {hi}; got {value!r}")
        return float(value)

    count = raw.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer; got {count!r}")
    endpoint = raw.get("endpoint")
    if endpoint not in (None, "generations", "edits"):
        raise ValueError(f"endpoint must be 'generations' or 'edits'; got {endpoint!r}")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("headers must be an object of strings")
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError("message must be a string")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}")  # noqa: TRY004
    retry_ms = raw.get("retry_after_ms")
    if retry_ms is not None and (isinstance(retry_ms, bool) or not isinstance(retry_ms, int) or retry_ms < 0):
        raise ValueError(f"retry_after_ms must be a non-negative integer; got {retry_ms!r}")
    return FaultRule(
        type=kind,
        count=count,
        rate=num("rate", 1.0, 0.0, 1.0),
        seed=seed,
        endpoint=endpoint,
        latency_s=num("latency_s", 0.0, 0.0, 3600.0),
        latency_jitter_s=num("latency_jitter_s", 0.0, 0.0, 3600.0),
        retry_after=num("retry_after", 1.0, 0.0, 86400.0),
        retry_after_ms=retry_ms,
        status=int(num("status", 502, 100, 599)),
        body=raw.get("body"),
        headers=dict(headers),
        message=message,
        rng=random.Random(seed),
    )


@dataclass(slots=True)
class Verdict:
    """What the fault rules decided for one request."""

    delay_s: float = 0.0
    outcome: FaultRule | None = None


def faulty_usage(fault: FaultRule | None, usage: dict[str, Any]) -> dict[str, Any] | None:
    """The ``usage`` to answer with under ``fault`` (None: leave the key out)."""
    kind = fault.type if fault is not None else None
    if kind == "no_usage":
        return None
    if kind == "empty_usage":
        return {}
    if kind == "zero_usage":
        return {
            "total_tokens": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
            "output_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        }
    if kind == "garbage_usage":
        return {
            "total_tokens": "many",
            "input_tokens": -5,
            "output_tokens": 1.5,
            "input_tokens_details": {"text_tokens": "x"},
            "output_tokens_details": None,
        }
    return usage


def echo_key_error(given_key: str, url: str) -> SimError:
    """What a careless upstream (or a proxy in front of one) answers: the caller's key
    and its own address in the message, and the key in the code too."""
    return openai_error(
        400,
        f"Invalid request from key {given_key} to {url}: the key {given_key} is not allowed here.",
        code=f"key_rejected:{given_key}",
        param=given_key,
    )
