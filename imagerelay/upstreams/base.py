"""The one connector interface every upstream channel type implements.

A connector turns a validated :class:`ImageRequest` into one upstream call and the
upstream's answer into an :class:`UpstreamResult` (or a stream of
:class:`StreamEvent`). It knows its wire dialect and nothing else: no billing, no
failover, no response shaping for the client. Failures are raised as
:class:`UpstreamFailure` with a ``kind`` the pool uses to decide on failover; the
``detail`` is for operators (logs, channel health); everything upstream-made in a
failure is scrubbed by :meth:`UpstreamFailure.redacted` before it goes anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.types import ImageRequest, Usage
from imagerelay.errors import ApiError
from imagerelay.upstreams.redact import redact

FailureKind = Literal[
    "connect",  # could not connect / connection reset: retry elsewhere
    "timeout",  # no answer in time: retry elsewhere
    "rate_limited",  # 429: retry elsewhere, honour retry_after
    "server",  # 5xx: retry elsewhere
    "auth",  # 401/403: key rejected, disable the channel
    "bad_response",  # undecodable answer: retry elsewhere
    "client",  # 4xx the caller caused (moderation, invalid value): return, never retry
    "connector",  # the connector itself raised something unexpected: the channel failed, retry elsewhere
]

# "auth" fails over too: the channel's key is bad, not the caller's request.
RETRYABLE: frozenset[str] = frozenset(
    {"connect", "timeout", "rate_limited", "server", "bad_response", "auth", "connector"}
)


class UpstreamFailure(Exception):
    def __init__(
        self,
        kind: FailureKind,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        client_error: ApiError | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        # For kind == "client": the official-shape error to hand to the caller.
        self.client_error = client_error

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def redacted(self, secrets: Iterable[str]) -> UpstreamFailure:
        """Scrub everything upstream-made this failure carries (in place; returns self)."""
        secrets = tuple(secrets)
        self.detail = redact(self.detail, secrets)
        self.args = (self.detail,)
        err = self.client_error
        if err is not None:
            err.message = redact(err.message, secrets)
            err.args = (err.message,)
            if err.param is not None and redact(err.param, secrets) != err.param:
                err.param = None
        return self

    @classmethod
    def unexpected(cls, exc: BaseException) -> UpstreamFailure:
        """A connector raised something it should not have (a malformed channel, a bug):
        a failure of that channel, named by type only (its text may hold a URL or key)."""
        return cls("connector", f"unexpected {type(exc).__name__} in the connector")


@dataclass(slots=True)
class UpstreamResult:
    """An upstream's successful answer, before the relay normalises it.

    ``items`` are the ``data[]`` entries as received (``b64_json`` possibly with a
    ``data:`` prefix or missing padding; the relay cleans them). ``meta`` carries the
    response-level fields (size, quality, background, output_format).
    """

    items: list[dict[str, Any]]
    usage: Usage | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created: int | None = None


@dataclass(slots=True)
class StreamEvent:
    """One server-sent event: its JSON payload (with ``type``) as the upstream sent it."""

    payload: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.payload.get("type", ""))


@dataclass(frozen=True, slots=True)
class CallTarget:
    """What a connector needs to reach one channel for one call."""

    channel: ChannelSpec
    api_key: str | None
    upstream_model: str  # already mapped through the channel's model_map
    # The size the route's upstream renders when the caller gives none (the built-in
    # simulator needs it; real upstreams decide for themselves).
    default_size: str = "auto"


class Connector(Protocol):
    """Implemented once per channel type; registered in ``upstreams.registry``.

    A connector need not time a plain call: the pool bounds every attempt by the
    channel's timeout and the call's deadline (``ChannelPool._answer``). A stream's
    silence between events is the connector's to bound (the pool sees only the first)."""

    type: ClassVar[str]

    async def images(self, target: CallTarget, request: ImageRequest) -> UpstreamResult: ...

    def stream(self, target: CallTarget, request: ImageRequest) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...
