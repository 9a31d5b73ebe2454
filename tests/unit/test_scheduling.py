from __future__ import annotations

from imagerelay.domain.scheduling import QueuedGroup, fair_order


def test_owner_with_nothing_running_goes_first_whatever_the_backlog() -> None:
    backlog = QueuedGroup(user_id=1, token_id=10, oldest=100.0)  # hundreds queued since t=100
    newcomer = QueuedGroup(user_id=2, token_id=20, oldest=500.0)
    order = fair_order([backlog, newcomer], running={1: 4})
    assert order[0] == newcomer


def test_equal_shares_take_turns_by_oldest_job() -> None:
    a, b, c = QueuedGroup(1, 10, 1.0), QueuedGroup(2, 20, 2.0), QueuedGroup(3, 30, 3.0)
    assert fair_order([c, b, a], running={}) == [a, b, c]
    # after a's job starts, b and c come before a's next one: round-robin
    assert fair_order([c, b, a], running={1: 1}) == [b, c, a]
    assert fair_order([c, b, a], running={1: 1, 2: 1}) == [c, a, b]


def test_many_tokens_do_not_buy_a_bigger_share() -> None:
    spread = [QueuedGroup(1, t, float(t)) for t in range(10, 20)]
    other = QueuedGroup(2, 99, 50.0)
    order = fair_order([*spread, other], running={1: 1})
    assert order[0] == other
    assert [g.token_id for g in order[1:]] == list(range(10, 20))  # the owner's own tokens oldest first
