"""The one exception tree of imagerelay.

Every error a client can see is an ``ApiError``; the HTTP edge turns it into the
official OpenAI shape ``{"error": {"message", "type", "param", "code"}}``. Internal
code raises the most specific subclass and never formats responses itself.

    ApiError                      (any status; carries message/type/param/code)
    ├── InvalidRequest            400 invalid_request_error
    │   └── UnknownParameter      400 invalid_request_error / unknown_parameter
    ├── AuthenticationFailed      401 invalid_api_key
    ├── PermissionDenied          403
    ├── ModelNotFound             404 model_not_found
    ├── RequestTimeout            408 request_timeout (the body did not arrive in time)
    ├── PayloadTooLarge           413
    ├── RateLimited               429 rate_limit_exceeded (+ retry-after)
    ├── InsufficientQuota         429 insufficient_quota (x-should-retry: false)
    ├── ServerBusy                503 server_busy (+ retry-after; e.g. too many large bodies in flight)
    └── UpstreamError             502/503/504 (never carries upstream detail)
"""

from __future__ import annotations


class ApiError(Exception):
    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers: dict[str, str] = dict(headers or {})
        # Which upstream attempts led here: for the usage record, never for the client.
        self.attempts = 0
        self.channel: str | None = None

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{type(self).__name__}({self.status}, {self.code!r}, param={self.param!r}, {self.message!r})"


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class UnknownParameter(InvalidRequest):
    code = "unknown_parameter"


class AuthenticationFailed(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeout(ApiError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimited(ApiError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class InsufficientQuota(ApiError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        # The official SDK retries 429s unless told not to; a retry cannot fix a balance.
        self.headers.setdefault("x-should-retry", "false")


class ServerBusy(ApiError):
    status = 503
    type = "server_error"
    code = "server_busy"


class UpstreamError(ApiError):
    """Upstream trouble. The message is written by us, never copied from upstream."""

    status = 502
    type = "server_error"
    code = "upstream_error"
