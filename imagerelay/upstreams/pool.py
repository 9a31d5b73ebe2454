"""Channel pools: choose a channel, fail over, cool down failing channels.

A call tries the highest-priority tier first, weighted-random within it. A
retryable failure (connection error, timeout, 429, 5xx, undecodable answer) moves
on to another channel, within ``max_attempts`` and an overall deadline; a client
error (moderation, invalid value) is returned at once. A channel that fails
``breaker_threshold`` times in a row is cooled down, then half-open: one probe call
is let through, and its outcome closes or re-opens the breaker. With ``shared`` set
(Redis), a cooldown started here also keeps the other gateway processes off the
channel. A channel whose key is rejected (401/403) is disabled with the reason
recorded until an operator re-enables it. Anything else a connector raises is a failure
of that channel (kind ``connector``), never of the call. The caller never learns which
channel failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.b64 import InvalidImagePayload, normalize_b64
from imagerelay.domain.types import ImageRequest
from imagerelay.errors import ApiError, UpstreamError
from imagerelay.upstreams.base import CallTarget, Connector, StreamEvent, UpstreamFailure, UpstreamResult
from imagerelay.upstreams.redact import channel_secrets

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
    rest: AsyncGenerator[StreamEvent, None]
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


def _secrets(target: CallTarget) -> tuple[str, ...]:
    return channel_secrets(target.api_key, target.channel.base_url)


async def _close_quietly(events: AsyncIterator[StreamEvent]) -> None:
    """Close a connector's stream; its own failure while closing changes nothing here."""
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # noqa: BLE001, S110 - the outcome is already decided
        pass


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
    # Told every result counted against a channel: (name, failure kind or None for ok).
    observe: Callable[[str, str | None], None] | None = None
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
        if self.observe is not None:
            self.observe(name, None)
        h = self.health_of(name)
        h.successes += 1
        h.consecutive_failures = 0
        h.cooldown_until = 0.0
        h.half_open_probe = False

    def _failed(self, name: str, failure: UpstreamFailure) -> UpstreamFailure:
        """Count ``failure`` (already scrubbed: see :meth:`UpstreamFailure.redacted`)
        against channel ``name``; returns it."""
        log.warning("channel %s: %s (%s)", name, failure.kind, failure.detail)
        if self.observe is not None:
            self.observe(name, failure.kind)
        h = self.health_of(name)
        h.failures += 1
        h.last_error = f"{failure.kind}: {failure.detail}"[:500]
        h.last_error_at = time.time()
        if failure.kind == "auth":
            h.disabled_reason = f"upstream rejected the key (HTTP {failure.status})"
            if self.on_disable is not None:
                task = asyncio.ensure_future(self.on_disable(name, h.disabled_reason))
                self._background.add(task)
                task.add_done_callback(self._disable_done)
            return failure
        if failure.kind == "client":
            return failure  # the caller's fault, not the channel's
        h.consecutive_failures += 1
        if h.consecutive_failures >= self.policy.breaker_threshold or h.half_open_probe:
            h.cooldown_until = self.clock() + self.policy.cooldown_s
            # After the cooldown exactly one call probes; one more failure re-opens.
            h.half_open_probe = True
            if self.shared is not None:
                self.shared.trip(name, self.policy.cooldown_s)
        return failure

    def _disable_done(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not persist a channel disable: %s", type(task.exception()).__name__)

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
            target = self._target(ch, upstream_model, default_size)
            t0 = self.clock()
            try:
                # asyncio.timeout, not wait_for: no second task whose exception could go
                # unretrieved (or swallow a cancellation) when the client leaves.
                async with asyncio.timeout(min(max(0.001, deadline - t0), ch.timeout_s)):
                    result = await self.connectors[ch.type].images(target, request)
                clean_items(result)
            except TimeoutError:
                failure = UpstreamFailure("timeout", f"no answer within {ch.timeout_s:g}s")
            except UpstreamFailure as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - whatever a connector raises fails the channel, not the call
                failure = UpstreamFailure.unexpected(exc)
            else:
                self._succeeded(ch.name)
                return CallOutcome(result, ch.name, attempts, int((self.clock() - t0) * 1000))
            last = self._failed(ch.name, failure.redacted(_secrets(target)))
            if not failure.retryable:
                raise _attempted(self._client_error(failure), attempts, ch.name) from None
            await self._backoff(failure, deadline)
        raise _attempted(self._exhausted(last, attempts), attempts, None)

    async def open_stream(
        self, channels: Sequence[ChannelSpec], upstream_model: str, default_size: str, request: ImageRequest
    ) -> StreamOutcome:
        """Fail over until a channel yields its first event; after that, no more failover.

        The rest of the stream comes through :meth:`_relayed`, which cleans each event
        and counts a failure mid-stream against the channel like any other.
        """
        deadline = self.clock() + self.policy.deadline_s
        attempts = 0
        last: UpstreamFailure | None = None
        for ch in self._attempt_order(channels):
            if attempts >= self.policy.max_attempts or self.clock() >= deadline:
                break
            attempts += 1
            self._begin_attempt(ch)
            target = self._target(ch, upstream_model, default_size)
            events = self.connectors[ch.type].stream(target, request)
            try:
                async with asyncio.timeout(min(max(0.001, deadline - self.clock()), ch.timeout_s)):
                    first = clean_event(await anext(events))
            except TimeoutError:
                failure = UpstreamFailure("timeout", "stream produced no event in time")
            except StopAsyncIteration:
                failure = UpstreamFailure("bad_response", "stream produced no event")
            except UpstreamFailure as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - whatever a connector raises fails the channel, not the call
                failure = UpstreamFailure.unexpected(exc)
            except BaseException:
                await _close_quietly(events)
                raise
            else:
                self._succeeded(ch.name)
                return StreamOutcome(first, self._relayed(ch.name, target, events), ch.name, attempts)
            await _close_quietly(events)
            last = self._failed(ch.name, failure.redacted(_secrets(target)))
            if not failure.retryable:
                raise _attempted(self._client_error(failure), attempts, ch.name) from None
            await self._backoff(failure, deadline)
        raise _attempted(self._exhausted(last, attempts), attempts, None)

    async def _relayed(
        self, name: str, target: CallTarget, events: AsyncIterator[StreamEvent]
    ) -> AsyncGenerator[StreamEvent, None]:
        """The events after the first, cleaned; any failure is scrubbed, counted against
        the channel and raised as an :class:`UpstreamFailure`."""
        try:
            async for event in events:
                yield clean_event(event)
        except UpstreamFailure as failure:
            raise self._failed(name, failure.redacted(_secrets(target))) from None
        except Exception as exc:  # noqa: BLE001 - a connector bug mid-stream is still the channel's failure
            raise self._failed(name, UpstreamFailure.unexpected(exc)) from None
        finally:
            await _close_quietly(events)

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
