"""Channel pools: choose a channel, fail over, retry, cool down failing channels.

A call tries the highest-priority tier first, weighted-random within it. A
retryable failure (connection error, timeout, 429, 5xx, undecodable answer) moves
on to another channel; once every channel was tried, the round starts again after
an exponential backoff with jitter (honouring ``retry-after``), within
``max_attempts`` and an overall deadline. A client error (moderation, invalid value)
is returned at once. Plain calls and streams share that one loop (:meth:`ChannelPool._attempts`).

A channel whose failures over the breaker window reach both a count and a rate is
cooled down, then half-open: one probe call is let through, and its outcome closes or
re-opens the breaker. When every channel of a pool is cooling, the least recently
failed one is still tried: breakers degrade a pool, they never black it out. With
``shared`` set (Redis), a cooldown started here also keeps the other gateway
processes off the channel. A channel whose key is rejected (401/403) is disabled with
the reason recorded until an operator re-enables it. Anything else a connector raises
is a failure of that channel (kind ``connector``), never of the call. The caller never
learns which channel failed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.b64 import InvalidImagePayload, normalize_b64
from imagerelay.domain.types import ImageRequest
from imagerelay.errors import ApiError, UpstreamError
from imagerelay.upstreams.base import CallTarget, Connector, StreamEvent, UpstreamFailure, UpstreamResult
from imagerelay.upstreams.redact import channel_secrets

log = logging.getLogger("imagerelay.upstreams")
T = TypeVar("T")


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
    last_failed: float = 0.0  # clock() of the last failure: the least recent is tried first when all cool
    window: collections.deque[tuple[float, bool]] = field(default_factory=collections.deque)
    window_failures: int = 0  # failures in ``window``, kept as outcomes come and go (no scan per call)

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
    with contextlib.suppress(Exception):  # the outcome is already decided
        await aclose()


class NoChannel(UpstreamError):
    status = 503
    code = "no_available_channel"


class SharedCooldowns(Protocol):
    """Cooldowns seen by every gateway process (``imagerelay.upstreams.cooldowns``)."""

    def remaining(self, name: str, now: float) -> float: ...

    def trip(self, name: str, seconds: float) -> None: ...

    def clear(self, name: str) -> None: ...


@dataclass
class PoolPolicy:
    max_attempts: int = 8
    deadline_s: float = 300.0
    # The breaker trips when, over the last ``breaker_window_s``, a channel failed at
    # least ``breaker_threshold`` times AND at least ``breaker_failure_rate`` of its calls:
    # sporadic errors under load (many calls, few failures) never trip it.
    breaker_threshold: int = 3
    breaker_failure_rate: float = 0.5
    breaker_window_s: float = 60.0
    cooldown_s: float = 30.0
    max_retry_after_s: float = 10.0
    # Between rounds (every channel tried once): base * 2**(round-1), capped, half of it jittered.
    backoff_base_s: float = 0.25
    backoff_max_s: float = 4.0


_WINDOW_CAP = 1024  # outcomes kept per channel: bounds memory whatever the call rate


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
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _background: set[asyncio.Future[None]] = field(default_factory=set)

    def health_of(self, name: str) -> ChannelHealth:
        h = self.health.get(name)
        if h is None:
            h = self.health[name] = ChannelHealth()
        return h

    @staticmethod
    def _enabled(ch: ChannelSpec, h: ChannelHealth) -> bool:
        return ch.enabled and not h.disabled_reason

    def _usable(self, ch: ChannelSpec, now: float) -> bool:
        h = self.health_of(ch.name)
        if not self._enabled(ch, h):
            return False
        if h.cooldown_until > now:
            return False
        return self.shared is None or self.shared.remaining(ch.name, now) <= 0

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

    def _note(self, h: ChannelHealth, ok: bool) -> tuple[int, int]:
        """Record one outcome in the channel's window; (failures, calls) within it."""
        now = self.clock()
        h.window.append((now, ok))
        h.window_failures += not ok
        horizon = now - self.policy.breaker_window_s
        while h.window and (h.window[0][0] < horizon or len(h.window) > _WINDOW_CAP):
            h.window_failures -= not h.window.popleft()[1]
        return h.window_failures, len(h.window)

    def _succeeded(self, name: str) -> None:
        if self.observe is not None:
            self.observe(name, None)
        h = self.health_of(name)
        h.successes += 1
        h.consecutive_failures = 0
        h.cooldown_until = 0.0
        h.half_open_probe = False
        self._note(h, True)

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
        h.last_failed = self.clock()
        failures, calls = self._note(h, False)
        tripped = failures >= self.policy.breaker_threshold and failures >= self.policy.breaker_failure_rate * calls
        if tripped or h.half_open_probe:
            h.cooldown_until = self.clock() + self.policy.cooldown_s
            # After the cooldown exactly one call probes; one more failure re-opens.
            h.half_open_probe = True
            h.window.clear()  # the probe starts the channel's record afresh
            h.window_failures = 0
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
        self,
        channels: Sequence[ChannelSpec],
        upstream_model: str,
        default_size: str,
        request: ImageRequest,
        *,
        max_attempts: int | None = None,
    ) -> CallOutcome:
        """One image answer, failing over and retrying (see :meth:`_attempts`)."""

        async def attempt(ch: ChannelSpec, target: CallTarget, budget: float, attempts: int) -> CallOutcome:
            return await self._answer(ch, target, request, budget, attempts)

        return await self._attempts(channels, upstream_model, default_size, attempt, max_attempts)

    async def probe(
        self, ch: ChannelSpec, upstream_model: str, default_size: str, request: ImageRequest
    ) -> CallOutcome | UpstreamFailure:
        """One attempt on exactly ``ch`` (the admin's channel test): the same target, key,
        model map, timeout, connector and answer cleaning as an attempt of :meth:`call`,
        but whatever the channel's state (a disabled or cooling channel can be tested)
        and without counting in its health. A failure is returned, scrubbed of the
        channel's secrets."""
        target = self._target(ch, upstream_model, default_size)
        try:
            return await self._answer(ch, target, request, ch.timeout_s, 1)
        except UpstreamFailure as failure:
            return failure.redacted(_secrets(target))

    async def _answer(
        self, ch: ChannelSpec, target: CallTarget, request: ImageRequest, budget: float, attempts: int
    ) -> CallOutcome:
        """One attempt's image answer from ``ch``'s connector, cleaned; any failure is an
        :class:`UpstreamFailure` (not yet scrubbed or counted: the caller does that)."""
        t0 = self.clock()
        try:
            # asyncio.timeout, not wait_for: no second task whose exception could go
            # unretrieved (or swallow a cancellation) when the client leaves.
            async with asyncio.timeout(budget):
                result = await self.connectors[ch.type].images(target, request)
            clean_items(result)
        except TimeoutError:
            raise UpstreamFailure("timeout", f"no answer within {budget:g}s") from None
        except UpstreamFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a connector raises fails the channel, not the call
            raise UpstreamFailure.unexpected(exc) from None
        return CallOutcome(result, ch.name, attempts, int((self.clock() - t0) * 1000))

    async def open_stream(
        self,
        channels: Sequence[ChannelSpec],
        upstream_model: str,
        default_size: str,
        request: ImageRequest,
        *,
        max_attempts: int | None = None,
    ) -> StreamOutcome:
        """Fail over and retry until a channel yields its first event; after that, no more failover.

        The rest of the stream comes through :meth:`_relayed`, which cleans each event
        and counts a failure mid-stream against the channel like any other.
        """

        async def attempt(ch: ChannelSpec, target: CallTarget, budget: float, attempts: int) -> StreamOutcome:
            events = self.connectors[ch.type].stream(target, request)
            try:
                async with asyncio.timeout(budget):
                    first = clean_event(await anext(events))
            except BaseException as exc:
                await _close_quietly(events)
                if isinstance(exc, TimeoutError):
                    raise UpstreamFailure("timeout", "stream produced no event in time") from None
                if isinstance(exc, StopAsyncIteration):
                    raise UpstreamFailure("bad_response", "stream produced no event") from None
                if isinstance(exc, UpstreamFailure | asyncio.CancelledError) or not isinstance(exc, Exception):
                    raise
                raise UpstreamFailure.unexpected(exc) from None
            return StreamOutcome(first, self._relayed(ch.name, target, events), ch.name, attempts)

        return await self._attempts(channels, upstream_model, default_size, attempt, max_attempts)

    async def _attempts(
        self,
        channels: Sequence[ChannelSpec],
        upstream_model: str,
        default_size: str,
        attempt: Callable[[ChannelSpec, CallTarget, float, int], Awaitable[T]],
        max_attempts: int | None,
    ) -> T:
        """The one failover loop, for plain calls and streams alike.

        A round tries every usable channel once (priority, then weight); a retryable
        failure moves on to the next. When a round is spent, the channels are tried
        again after an exponential backoff with jitter (at least the upstream's
        ``retry-after``, capped), up to ``max_attempts`` attempts in all and within the
        deadline. Since a call holds one hold and is settled once by the relay, retries
        never charge twice. A client error ends the loop at once.
        """
        limit = max_attempts or self.policy.max_attempts
        deadline = self.clock() + self.policy.deadline_s
        attempts, rounds = 0, 0
        last: UpstreamFailure | None = None
        while True:
            wait_hint = 0.0
            before = attempts
            for ch in self._attempt_order(channels):
                if attempts >= limit or self.clock() >= deadline:
                    break
                attempts += 1
                self._begin_attempt(ch)
                target = self._target(ch, upstream_model, default_size)
                budget = min(max(0.001, deadline - self.clock()), ch.timeout_s)
                try:
                    outcome = await attempt(ch, target, budget, attempts)
                except UpstreamFailure as failure:
                    last = self._failed(ch.name, failure.redacted(_secrets(target)))
                    if not failure.retryable:
                        raise _attempted(self._client_error(failure), attempts, ch.name) from None
                    wait_hint = max(wait_hint, min(failure.retry_after or 0.0, self.policy.max_retry_after_s))
                    continue
                self._succeeded(ch.name)
                return outcome
            if attempts == before or attempts >= limit:
                break  # nothing left to try (every channel disabled), or no attempts left
            rounds += 1
            step = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2 ** min(rounds - 1, 30))
            wait = max(wait_hint, step / 2 + self.rng.uniform(0, step / 2))
            if self.clock() + wait >= deadline:
                break
            await self.sleep(wait)
        raise _attempted(self._exhausted(last, attempts, self._retry_hint(channels)), attempts, None)

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
        """The usable channels; when every enabled one is cooling down, the least recently
        failed of them (half-open): a pool degrades, it never blacks out on its own breakers."""
        ordered = self.order(channels)
        if ordered:
            return ordered
        cooling = [c for c in channels if self._enabled(c, self.health_of(c.name))]
        if not cooling:
            return []
        return [min(cooling, key=lambda c: self.health_of(c.name).last_failed)]

    def _retry_hint(self, channels: Sequence[ChannelSpec]) -> int:
        """Seconds a caller should wait: the soonest a channel leaves its cooldown (1-30)."""
        waits = [self.cooldown_remaining(c.name) for c in channels if c.enabled]
        soonest = min(waits) if waits else 5.0
        return max(1, min(30, int(soonest + 0.999)))

    def _begin_attempt(self, ch: ChannelSpec) -> None:
        h = self.health_of(ch.name)
        if h.half_open_probe:
            # Half-open: this attempt is the probe; park the channel for everyone else
            # until it reports back (success clears it, failure re-opens the breaker).
            h.cooldown_until = self.clock() + self.policy.cooldown_s

    @staticmethod
    def _client_error(failure: UpstreamFailure) -> ApiError:
        if failure.client_error is not None:
            return failure.client_error
        return ApiError("The upstream rejected the request.", status=400, code="upstream_rejected")

    @staticmethod
    def _exhausted(last: UpstreamFailure | None, attempts: int, retry_after: int) -> ApiError:
        if attempts == 0:
            return NoChannel(
                "No upstream channel is available for this route right now; retry shortly.",
                headers={"retry-after": str(retry_after)},
            )
        if last is not None and last.kind == "timeout":
            return UpstreamError(
                "The upstream did not answer in time; retry the request.", status=504, code="upstream_timeout"
            )
        if last is not None and last.kind == "rate_limited":
            return UpstreamError(
                "The upstream is rate limited right now; retry shortly.",
                status=503,
                code="upstream_overloaded",
                headers={"retry-after": str(max(retry_after, int(last.retry_after or 0)))},
            )
        return UpstreamError(
            "The upstream is failing right now; retry shortly.",
            status=503,
            code="upstream_unavailable",
            headers={"retry-after": str(retry_after)},
        )
