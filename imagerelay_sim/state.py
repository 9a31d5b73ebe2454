"""The upstream simulator's mutable state: fault rules, the request log, config and render cache.

Its own module so :mod:`imagerelay_sim.inbound` and :mod:`imagerelay_sim.server` both
import it without importing each other.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from imagerelay_sim.faults import FaultRule, Verdict

Protocol = Literal["openai", "azure"]
Endpoint = Literal["generations", "edits"]


class SimState:
    """Mutable simulator state shared by the handlers and the control plane.

    Guarded by a lock so tests may also poke it directly from another thread
    (``sim_state(app).add_faults(...)``) while uvicorn serves on its own loop.
    """

    def __init__(  # noqa: PLR0913 - the options of create_upstream_app, keyword-only
        self,
        protocol: Protocol,
        *,
        api_keys: Sequence[str],
        latency_s: float,
        deployments: Mapping[str, str],
        models: Sequence[str],
        default_model: str,
        cache: bool,
        incompressible: bool,
        max_recorded: int,
        cache_entries: int,
    ) -> None:
        self.protocol: Protocol = protocol
        self.api_keys = frozenset(api_keys)
        self.latency_s = latency_s
        self.deployments = dict(deployments)
        self.models = tuple(models)
        self.default_model = default_model
        self.cache = cache
        self.incompressible = incompressible
        self.faults: list[FaultRule] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._cache: OrderedDict[tuple[Any, ...], str] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()

    # ---- faults
    def add_faults(self, rules: Iterable[FaultRule]) -> None:
        with self._lock:
            self.faults.extend(rules)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def faults_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self.faults]

    def judge(self, endpoint: Endpoint) -> Verdict:
        """Apply the rules to one request: total added latency and the first firing fault.

        Latency rules all apply. Other rules are tried in the order they were added
        and the first one that fires wins; rules after it are not consulted (their
        ``count`` is not consumed), so ``[500 x1, 429 x1]`` gives a 500 then a 429.
        """
        verdict = Verdict()
        with self._lock:
            for rule in list(self.faults):
                if rule.endpoint is not None and rule.endpoint != endpoint:
                    continue
                if rule.type != "latency" and verdict.outcome is not None:
                    continue
                rule.seen += 1
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self.faults.remove(rule)
                if rule.rate < 1.0 and rule.rng.random() >= rule.rate:
                    continue
                rule.fired += 1
                if rule.type == "latency":
                    jitter = rule.rng.uniform(0.0, rule.latency_jitter_s) if rule.latency_jitter_s else 0.0
                    verdict.delay_s += rule.latency_s + jitter
                else:
                    verdict.outcome = rule
        return verdict

    # ---- requests log
    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def recorded(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- config and render cache
    def config_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "cache": self.cache,
            "incompressible": self.incompressible,
            "latency_s": self.latency_s,
            "deployments": self.deployments,
            "models": list(self.models),
        }

    def cached(self, key: tuple[Any, ...]) -> str | None:
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
            return value

    def store(self, key: tuple[Any, ...], value: str) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
