"""Channel pools: choose a channel, fail over, cool down failing channels.

A call tries the highest-priority tier first, weighted-random within it. A
retryable failure (connection error, timeout, 429, 5xx, undecodable answer) moves
on to another channel, within ``max_attempts`` and an overall deadline; a client
error (moderation, invalid value) is returned at once. A channel that fails
``breaker_threshold`` times in a row is cooled down, then half-open: one probe call
is let through, and its outcome closes or re-opens the breaker. With ``shared`` set
(Redis), a cooldown started here also keeps the other gateway processes off the
channel. A channel whose key is rejected (401/403) is disabled with the reason
recorded until an operator re-enables it. The caller never learns which channel failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.b64 import InvalidImagePayload, normalize_b64
from imagerelay.domain.types import ImageRequest
from imagerelay.errors import ApiError, UpstreamError
from imagerelay.upstreams.base import CallTarget, Connector, StreamEvent, UpstreamFailure, UpstreamResult

log = logging.getLogger("imagerelay.upstreams")


@dataclass(slots=True)
class ChannelHealth:
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    half_open_probe: bool = False
    disabled_reason: str | None = None
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    @property
    def success_rate(self) -> float | None:
        total = self.successes + self.failures
        return None if total == 0 else self.successes / total


@dataclass(slots=True)
class CallOutcome:
    result: UpstreamResult
    channel: str
    attempts: int
    upstream_latency_ms: int


@dataclass(slots=True)
class StreamOutcome:
    first: StreamEvent
    rest: AsyncIterator[StreamEvent]
    channel: str
    attempts: int


def _attempted(err: ApiError, attempts: int, channel: str | None) -> ApiError:
    err.attempts, err.channel = attempts, channel
    return err


def clean_items(result: UpstreamResult) -> None:
    """Normalise every image in place (prefix, padding); an undecodable one fails the
    attempt so the pool can try another channel. Shared by every connector."""
    if not result.items:
        raise UpstreamFailure("bad_response", "no images in the answer")
    for i, item in enumerate(result.items):
        try:
            clean, _fmt = normalize_b64(item.get("b64_json"))
        except InvalidImagePayload as exc:
            raise UpstreamFailure("bad_response", f"image {i}: {exc}") from None
        if clean is not item["b64_json"]:
            result.items[i] = {**item, "b64_json": clean}


def clean_event(event: StreamEvent) -> StreamEvent:
    """Normalise a streamed event's image; an error event or a bad image is a failure."""
    payload = event.payload
    if "error" in payload:
        raise UpstreamFailure("server", "error event in stream")
    if "b64_json" in payload:
        try:
            clean, _fmt = normalize_b64(payload["b64_json"])
        except InvalidImagePayload as exc:
            raise UpstreamFailure("bad_response", f"streamed image: {exc}") from None
        if clean is not payload["b64_json"]:
            return StreamEvent({**payload, "b64_json": clean})
    return event


class NoChannel(UpstreamError):
    status = 503
    code = "no_available_channel"


class SharedCooldowns(Protocol):
    """Cooldowns seen by every gateway process (``imagerelay.shared.cooldowns``)."""

    def remaining(self, name: str, now: float) -> float: ...

    def trip(self, name: str, seconds: float) -> None: ...

    def clear(self, name: str) -> None: ...


@dataclass
class PoolPolicy:
    max_attempts: int = 3
    deadline_s: float = 300.0
    breaker_threshold: int = 3
    cooldown_s: float = 30.0
    max_retry_after_s: float = 10.0


@dataclass
class ChannelPool:
    connectors: dict[str, Connector]
    policy: PoolPolicy = field(default_factory=PoolPolicy)
    key_resolver: Callable[[ChannelSpec], str | None] = lambda ch: (
        os.environ.get(ch.api_key_env) if ch.api_key_env else None
    )
    # Called when a channel's key is rejected, to persist the disable (admin sees why).
    on_disable: Callable[[str, str], Awaitable[None]] | None = None
    # Lets a breaker tripped in one process cool the channel down in the others too.
    shared: SharedCooldowns | None = None
    rng: random.Random = field(default_factory=random.Random)
    health: dict[str, ChannelHealth] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _background: set[asyncio.Future[None]] = field(default_factory=set)

    def health_of(self, name: str) -> ChannelHealth:
        h = self.health.get(name)
        if h is None:
            h = self.health[name] = ChannelHealth()
        return h

    def _usable(self, ch: ChannelSpec, now: float) -> bool:
        if not ch.enabled:
            return False
        h = self.health_of(ch.name)
        if h.disabled_reason:
            return False
        if h.cooldown_until > now:
            return False
        if self.shared is not None and self.shared.remaining(ch.name, now) > 0:
            return False
        return True

    def cooldown_remaining(self, name: str) -> float:
        now = self.clock()
        local = self.health_of(name).cooldown_until - now
        shared = self.shared.remaining(name, now) if self.shared is not None else 0.0
        return max(0.0, local, shared)

    def order(self, channels: Sequence[ChannelSpec]) -> list[ChannelSpec]:
        """Usable channels: priority tiers high to low, weighted-random inside a tier."""
        now = self.clock()
        usable = [c for c in channels if self._usable(c, now)]
        tiers: dict[int, list[ChannelSpec]] = {}
        for c in usable:
            tiers.setdefault(c.priority, []).append(c)
        ordered: list[ChannelSpec] = []
        for prio in sorted(tiers, reverse=True):
            tier = tiers[prio]
            # Weighted shuffle without replacement (Efraimidis-Spirakis keys).
            keyed = sorted(tier, key=lambda c: self.rng.random() ** (1.0 / c.weight), reverse=True)
            ordered.extend(keyed)
        return ordered

    def _target(self, ch: ChannelSpec, upstream_model: str, default_size: str) -> CallTarget:
        return CallTarget(
            channel=ch,
            api_key=self.key_resolver(ch),
            upstream_model=ch.model_map.get(upstream_model, upstream_model),
            default_size=default_size,
        )

    def _succeeded(self, name: str) -> None:
        h = self.health_of(name)
        h.successes += 1
        h.consecutive_failures = 0
        h.cooldown_until = 0.0
        h.half_open_probe = False

    def _failed(self, name: str, failure: UpstreamFailure) -> None:
        # Kind, status and channel name only: details never carry keys or addresses.
        log.warning("channel %s: %s%s", name, failure.kind, f" (HTTP {failure.status})" if failure.status else "")
        h = self.health_of(name)
        h.failures += 1
        h.last_error = f"{failure.kind}: {failure.detail}"[:500]
        h.last_error_at = time.time()
        if failure.kind == "auth":
            h.disabled_reason = f"upstream rejected the key (HTTP {failure.status})"
            if self.on_disable is not None:
                task = asyncio.ensure_future(self.on_disable(name, h.disabled_reason))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        if failure.kind == "client":
            return  # the caller's fault, not the channel's
        h.consecutive_failures += 1
        if h.consecutive_failures >= self.policy.breaker_threshold or h.half_open_probe:
            h.cooldown_until = self.clock() + self.policy.cooldown_s
            # After the cooldown exactly one call probes; one more failure re-opens.
            h.half_open_probe = True
            if self.shared is not None:
                self.shared.trip(name, self.policy.cooldown_s)

    def enable(self, name: str) -> None:
        self.health[name] = ChannelHealth()
        if self.shared is not None:
            self.shared.clear(name)

    async def call(
        self, channels: Sequence[ChannelSpec], upstream_model: str, default_size: str, request: ImageRequest
    ) -> CallOutcome:
        start = self.clock()
        deadline = start + self.policy.deadline_s
        attempts = 0
        last: UpstreamFailure | None = None
        for ch in self._attempt_order(channels):
            if attempts >= self.policy.max_attempts or self.clock() >= deadline:
                break
            attempts += 1
            self._begin_attempt(ch)
            connector = self.connectors[ch.type]
            t0 = self.clock()
            try:
                remaining = max(0.001, deadline - t0)
                result = await asyncio.wait_for(
                    connector.images(self._target(ch, upstream_model, default_size), request),
                    timeout=min(remaining, ch.timeout_s),
                )
            except UpstreamFailure as failure:
                self._failed(ch.name, failure)
                last = failure
                if not failure.retryable:
                    raise _attempted(self._client_error(failure), attempts, ch.name) from None
                await self._backoff(failure, deadline)
                continue
            except TimeoutError:
                last = UpstreamFailure("timeout", f"no answer within {ch.timeout_s:g}s")
                self._failed(ch.name, last)
                continue
            try:
                clean_items(result)
            except UpstreamFailure as failure:
                self._failed(ch.name, failure)
                last = failure
                continue
            self._succeeded(ch.name)
            return CallOutcome(result, ch.name, attempts, int((self.clock() - t0) * 1000))
        raise _attempted(self._exhausted(last, attempts), attempts, None)

    async def open_stream(
        self, channels: Sequence[ChannelSpec], upstream_model: str, default_size: str, request: ImageRequest
    ) -> StreamOutcome:
        """Fail over until a channel yields its first event; after that, no more failover."""
        deadline = self.clock() + self.policy.deadline_s
        attempts = 0
        last: UpstreamFailure | None = None
        for ch in self._attempt_order(channels):
            if attempts >= self.policy.max_attempts or self.clock() >= deadline:
                break
            attempts += 1
            self._begin_attempt(ch)
            connector = self.connectors[ch.type]
            iterator = connector.stream(self._target(ch, upstream_model, default_size), request).__aiter__()
            try:
                first = await asyncio.wait_for(
                    iterator.__anext__(), timeout=min(max(0.001, deadline - self.clock()), ch.timeout_s)
                )
            except UpstreamFailure as failure:
                self._failed(ch.name, failure)
                last = failure
                if not failure.retryable:
                    raise _attempted(self._client_error(failure), attempts, ch.name) from None
                await self._backoff(failure, deadline)
                continue
            except (TimeoutError, StopAsyncIteration) as exc:
                last = UpstreamFailure(
                    "timeout" if isinstance(exc, TimeoutError) else "bad_response", "stream produced no event"
                )
                self._failed(ch.name, last)
                continue
            try:
                first = clean_event(first)
            except UpstreamFailure as failure:
                self._failed(ch.name, failure)
                last = failure
                continue
            self._succeeded(ch.name)
            return StreamOutcome(first, iterator, ch.name, attempts)
        raise _attempted(self._exhausted(last, attempts), attempts, None)

    def _attempt_order(self, channels: Sequence[ChannelSpec]) -> list[ChannelSpec]:
        return self.order(channels)

    def _begin_attempt(self, ch: ChannelSpec) -> None:
        h = self.health_of(ch.name)
        if h.half_open_probe:
            # Half-open: this attempt is the probe; park the channel for everyone else
            # until it reports back (success clears it, failure re-opens the breaker).
            h.cooldown_until = self.clock() + self.policy.cooldown_s

    async def _backoff(self, failure: UpstreamFailure, deadline: float) -> None:
        if failure.retry_after:
            wait = min(failure.retry_after, self.policy.max_retry_after_s, max(0.0, deadline - self.clock()))
            if wait > 0:
                await asyncio.sleep(wait)

    @staticmethod
    def _client_error(failure: UpstreamFailure) -> ApiError:
        if failure.client_error is not None:
            return failure.client_error
        return ApiError("The upstream rejected the request.", status=400, code="upstream_rejected")

    @staticmethod
    def _exhausted(last: UpstreamFailure | None, attempts: int) -> ApiError:
        if attempts == 0:
            return NoChannel(
                "No upstream channel is available for this route right now; retry shortly.",
                headers={"retry-after": "5"},
            )
        if last is not None and last.kind == "timeout":
            return UpstreamError("The upstream did not answer in time; retry the request.", status=504, code="upstream_timeout")
        if last is not None and last.kind == "rate_limited":
            return UpstreamError(
                "The upstream is rate limited right now; retry shortly.",
                status=503,
                code="upstream_overloaded",
                headers={"retry-after": str(int(last.retry_after or 5))},
            )
        return UpstreamError("The upstream failed to produce an image; retry the request.", status=502)
