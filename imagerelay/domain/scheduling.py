"""Which queued job runs next: fair between owners, oldest first within one. Pure.

A single queue ordered by submission lets one user's backlog of hundreds delay every
other user's single job by the whole backlog. Instead the owner with the fewest jobs
running goes first (counted across every replica, from the database), ties going to
the owner whose oldest queued job is oldest; with equal shares that is round-robin
by owner, and a newcomer with nothing running starts at the next free slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueuedGroup:
    """The queued jobs of one (owner, token): how many exist is irrelevant, only the oldest."""

    user_id: int
    token_id: int
    oldest: float  # created_at of the oldest queued job


def fair_order(queued: Iterable[QueuedGroup], running: Mapping[int, int]) -> list[QueuedGroup]:
    """Candidates in the order a free worker should try them.

    Several groups of one owner (one per token) stay together in the owner's place,
    so a user cannot gain share by spreading work over many tokens.
    """
    groups = list(queued)
    owner_oldest: dict[int, float] = {}
    for g in groups:
        owner_oldest[g.user_id] = min(g.oldest, owner_oldest.get(g.user_id, g.oldest))
    return sorted(groups, key=lambda g: (running.get(g.user_id, 0), owner_oldest[g.user_id], g.user_id, g.oldest))


__all__ = ["QueuedGroup", "fair_order"]
