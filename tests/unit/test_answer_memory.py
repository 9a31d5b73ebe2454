"""The per-process budget for large upstream answers held in memory (transport.AnswerMemory)."""

from __future__ import annotations

import asyncio
import gc

from imagerelay.upstreams.transport import AnswerMemory, answer_buffer

MB = 1 << 20


async def _pending(task: asyncio.Task[None]) -> bool:
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


def test_reservations_within_the_budget_do_not_wait() -> None:
    async def main() -> None:
        memory = AnswerMemory(100 * MB)
        await memory.reserve(40 * MB)
        await memory.reserve(60 * MB)
        assert memory.held == 100 * MB

    asyncio.run(main())


def test_past_the_budget_a_call_waits_until_an_answer_buffer_is_freed() -> None:
    async def main() -> None:
        memory = AnswerMemory(64 * MB, max_wait_s=60)
        await memory.reserve(40 * MB)
        first = answer_buffer(40 * MB)
        memory.track(first, 40 * MB)
        second = asyncio.ensure_future(memory.reserve(40 * MB))
        assert await _pending(second)
        del first  # the answer was sent: its buffer goes, and its reservation with it
        gc.collect()
        await asyncio.wait_for(second, 10)
        assert memory.held == 40 * MB

    asyncio.run(main())


def test_an_answer_larger_than_the_budget_is_read_when_nothing_else_is_held() -> None:
    async def main() -> None:
        memory = AnswerMemory(16 * MB, max_wait_s=60)
        await memory.reserve(100 * MB)  # nothing held: proceeds
        assert memory.held == 100 * MB
        waiting = asyncio.ensure_future(memory.reserve(100 * MB))
        assert await _pending(waiting)
        memory.release(100 * MB)
        await asyncio.wait_for(waiting, 10)

    asyncio.run(main())


def test_waiters_are_served_in_order_and_a_cancelled_one_passes_its_turn_on() -> None:
    async def main() -> None:
        memory = AnswerMemory(10 * MB, max_wait_s=60)
        await memory.reserve(10 * MB)
        order: list[str] = []

        async def take(name: str) -> None:
            await memory.reserve(10 * MB)
            order.append(name)

        a, b, c = (asyncio.ensure_future(take(n)) for n in "abc")
        assert await _pending(c)
        memory.release(10 * MB)  # a's turn
        await asyncio.wait_for(a, 10)
        b.cancel()
        memory.release(10 * MB)  # b's turn, but b is gone: c gets it
        await asyncio.wait_for(c, 10)
        assert order == ["a", "c"]
        assert memory.held == 10 * MB

    asyncio.run(main())


def test_a_call_never_waits_for_memory_longer_than_the_bound() -> None:
    async def main() -> None:
        memory = AnswerMemory(10 * MB, max_wait_s=0.05)
        await memory.reserve(10 * MB)  # never released (say, held by a slow client)
        await asyncio.wait_for(memory.reserve(10 * MB), 30)  # generous liveness bound
        assert memory.held == 20 * MB

    asyncio.run(main())
