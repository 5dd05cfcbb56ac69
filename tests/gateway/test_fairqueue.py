"""FairGate: admission under a limit, a priority-ordered, tenant-fair, bounded wait queue,
shedding (full, displaced, too long) and cancellation without leaking slots."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from gateway.fairqueue import FairGate, Shed


async def settle() -> None:
    """Lets every runnable task run until the loop has nothing left to do at once."""
    for _ in range(10):
        await asyncio.sleep(0)


class Crowd:
    """Requests as tasks; `served` lists their labels in the order they were admitted."""

    def __init__(self, gate: FairGate) -> None:
        self.gate = gate
        self.served: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def _enter(self, label: str, tenant: str, priority: int) -> None:
        await self.gate.acquire(tenant, priority)
        self.served.append(label)

    def spawn(self, label: str, tenant: str = "t", priority: int = 0) -> asyncio.Task[None]:
        task = asyncio.create_task(self._enter(label, tenant, priority))
        self.tasks[label] = task
        return task

    async def add(self, label: str, tenant: str = "t", priority: int = 0) -> asyncio.Task[None]:
        """Starts a request and lets it reach the gate (and its place in the queue)."""
        task = self.spawn(label, tenant, priority)
        await settle()
        return task

    async def release(self, times: int = 1) -> list[str]:
        """Releases `times` slots, one at a time; returns whom they admitted."""
        before = len(self.served)
        for _ in range(times):
            self.gate.release()
            await settle()
        return self.served[before:]

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


@pytest.fixture
async def crowd() -> AsyncIterator[Any]:
    made: list[Crowd] = []

    def make(gate: FairGate) -> Crowd:
        made.append(Crowd(gate))
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def full_gate(limit: int = 1, **kwargs: Any) -> FairGate:
    # No reserve: these tests are about the queue (the reserve has its own).
    gate = FairGate(limit, **{"reserve": 0, **kwargs})
    for _ in range(limit):
        await gate.acquire("holder", 0)
    return gate


def done_at_once(coro: Coroutine[Any, Any, None]) -> None:
    """Runs `coro` to its end without the loop: proves it never suspended."""
    with pytest.raises(StopIteration):
        coro.send(None)


async def test_admits_at_once_under_the_limit() -> None:
    gate = FairGate(3)
    for tenant in ("a", "b", "c"):
        done_at_once(gate.acquire(tenant, 0))
    assert (gate.admitted, gate.waiting) == (3, 0)
    gate.release()
    assert gate.admitted == 2


async def test_past_the_limit_requests_wait_and_a_release_hands_over(crowd: Any) -> None:
    gate = await full_gate(2)
    c = crowd(gate)
    task = await c.add("x", "a")
    assert not task.done()
    assert (gate.admitted, gate.waiting, gate.waiting_by_tenant()) == (2, 1, {"a": 1})
    assert await c.release() == ["x"]
    assert (gate.admitted, gate.waiting, gate.waiting_by_tenant()) == (2, 0, {})


async def test_a_newcomer_cannot_barge_past_a_waiter_handed_a_slot(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    await c.add("waiter")
    gate.release()  # handed to "waiter", which has not run yet
    late = c.spawn("late")
    await settle()
    assert c.served == ["waiter"]
    assert not late.done()
    assert (gate.admitted, gate.waiting) == (1, 1)


async def test_highest_priority_first(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    for label, priority in (("low", 0), ("high", 5), ("mid", 1), ("high2", 5)):
        await c.add(label, label, priority)
    assert await c.release(4) == ["high", "high2", "mid", "low"]


async def test_fifo_within_a_tenant(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    for i in range(5):
        await c.add(f"a{i}", "a")
    assert await c.release(5) == [f"a{i}" for i in range(5)]


async def test_round_robin_across_tenants(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    for i in range(10):
        await c.add(f"A{i}", "A")
    await c.add("B0", "B")
    assert gate.waiting_by_tenant() == {"A": 10, "B": 1}
    served = await c.release(11)
    assert served[:3] == ["A0", "B0", "A1"]
    assert served[2:] == [f"A{i}" for i in range(1, 10)]


async def test_a_full_queue_sheds_newcomers_of_no_higher_priority() -> None:
    gate = await full_gate(1, max_waiting=2)
    tasks = [asyncio.create_task(gate.acquire(t, 1)) for t in ("a", "b")]
    await settle()
    for priority in (0, 1):
        with pytest.raises(Shed) as shed:
            await gate.acquire("c", priority)
        assert shed.value.reason == "queue full"
        assert shed.value.retry_after_s > 0
    assert (gate.admitted, gate.waiting) == (1, 2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.waiting == 0


async def test_a_higher_priority_newcomer_displaces_the_lowest(crowd: Any) -> None:
    gate = await full_gate(1, max_waiting=4)
    c = crowd(gate)
    await c.add("a1", "a", 0)
    await c.add("b1", "b", 0)
    await c.add("a2", "a", 0)
    await c.add("x1", "x", 3)
    # Full: a priority-2 newcomer displaces the newest priority-0 waiter of "a" (two there).
    await c.add("urgent", "u", 2)
    assert c.tasks["a2"].done()
    with pytest.raises(Shed) as shed:
        await c.tasks["a2"]
    assert shed.value.reason == "displaced by a higher-priority request"
    assert shed.value.retry_after_s > 0
    assert gate.waiting_by_tenant() == {"a": 1, "b": 1, "x": 1, "u": 1}
    assert await c.release(4) == ["x1", "urgent", "a1", "b1"]
    assert (gate.admitted, gate.waiting) == (1, 0)


async def test_waiting_too_long_sheds() -> None:
    gate = await full_gate(1, max_wait_s=0.05)
    task = asyncio.create_task(gate.acquire("a", 0))
    with pytest.raises(Shed) as shed:
        await asyncio.wait_for(task, 5)
    assert shed.value.reason == "waited too long"
    assert (gate.admitted, gate.waiting, gate.waiting_by_tenant()) == (1, 0, {})
    gate.release()
    assert gate.admitted == 0


async def test_a_cancelled_waiter_leaves_and_takes_no_slot(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    await c.add("a1", "a")
    await c.add("b1", "b")
    await c.add("a2", "a")
    c.tasks["b1"].cancel()
    await settle()
    assert c.tasks["b1"].cancelled()
    assert (gate.admitted, gate.waiting, gate.waiting_by_tenant()) == (1, 2, {"a": 2})
    assert await c.release(2) == ["a1", "a2"]
    assert (gate.admitted, gate.waiting) == (1, 0)


async def test_a_release_skips_a_waiter_cancelled_but_not_yet_run(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    await c.add("gone")
    await c.add("next")
    c.tasks["gone"].cancel()
    gate.release()  # before the cancelled task has run
    await settle()
    assert c.served == ["next"]
    assert c.tasks["gone"].cancelled()
    assert (gate.admitted, gate.waiting) == (1, 0)


async def test_cancelled_while_handed_a_slot_gives_it_back() -> None:
    gate = await full_gate(1)
    task = asyncio.create_task(gate.acquire("a", 0))
    await settle()
    gate.release()  # the slot is handed to the waiter...
    task.cancel()  # ...which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (gate.admitted, gate.waiting) == (0, 0)
    done_at_once(gate.acquire("b", 0))


async def test_cancelled_while_handed_a_slot_passes_it_to_the_next(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    await c.add("first")
    await c.add("second")
    gate.release()
    c.tasks["first"].cancel()
    await settle()
    assert c.tasks["first"].cancelled()
    assert c.served == ["second"]
    assert (gate.admitted, gate.waiting) == (1, 0)


async def test_raising_the_limit_admits_waiters_at_once(crowd: Any) -> None:
    gate = await full_gate(1)
    c = crowd(gate)
    for i in range(4):
        await c.add(f"w{i}")
    gate.set_limit(3)
    await settle()
    assert c.served == ["w0", "w1"]
    assert (gate.admitted, gate.waiting, gate.limit) == (3, 2, 3)


async def test_lowering_the_limit_lets_the_admitted_finish(crowd: Any) -> None:
    gate = await full_gate(3)
    c = crowd(gate)
    await c.add("w")
    gate.set_limit(1)
    await settle()
    assert (gate.admitted, gate.waiting) == (3, 1)
    assert await c.release(2) == []
    assert (gate.admitted, gate.waiting) == (1, 1)
    assert await c.release() == ["w"]
    assert (gate.admitted, gate.waiting) == (1, 0)


async def test_an_unlimited_gate_never_queues(crowd: Any) -> None:
    gate = FairGate(0)
    for _ in range(100):
        done_at_once(gate.acquire("a", 0))
    assert (gate.admitted, gate.waiting) == (100, 0)
    limited = await full_gate(1)
    c = crowd(limited)
    for i in range(3):
        await c.add(f"w{i}")
    limited.set_limit(-1)
    await settle()
    assert c.served == ["w0", "w1", "w2"]
    assert (limited.admitted, limited.waiting) == (4, 0)
    done_at_once(limited.acquire("b", 0))


async def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        FairGate(1).release()


async def test_a_small_tenant_is_served_within_two_releases_of_a_big_ones_flood() -> None:
    """Limit 2; "big" keeps 20 waiters queued, "small" sends one request at a time. Requests
    finish in the order they were admitted; each release admits whoever is next."""
    gate = FairGate(2, reserve=0)
    admitted: deque[str] = deque()
    tasks: list[asyncio.Task[None]] = []

    async def request(tenant: str) -> None:
        await gate.acquire(tenant, 0)
        admitted.append(tenant)

    async def send(tenant: str) -> None:
        tasks.append(asyncio.create_task(request(tenant)))
        await settle()

    for _ in range(2):
        await send("big")
    small_waits: list[int] = []
    small_sent_at: int | None = None
    for releases in range(300):
        while gate.waiting_by_tenant().get("big", 0) < 20:
            await send("big")
        if small_sent_at is None and "small" not in admitted:
            await send("small")
            small_sent_at = releases
        admitted.popleft()  # the oldest admitted request finishes
        gate.release()
        await settle()
        if small_sent_at is not None and "small" in admitted:
            small_waits.append(releases + 1 - small_sent_at)
            small_sent_at = None
    assert len(small_waits) > 50
    assert max(small_waits) <= 2
    assert gate.admitted == 2
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.waiting == 0


async def test_a_tenant_with_nothing_in_flight_is_admitted_from_the_reserve(crowd: Any) -> None:
    gate = FairGate(4)  # reserve: 1
    for _ in range(4):
        await gate.acquire("big", 0)
    c = crowd(gate)
    await c.add("big-5", "big")
    # Small has nothing in flight: admitted at once, over the limit, past big's waiter.
    done_at_once(gate.acquire("small", 0))
    assert gate.admitted == 5
    # The reserve is spent: another tenant with nothing in flight waits like everyone.
    await c.add("other", "other")
    assert c.served == [] and gate.waiting == 2
    # Releases hand slots on only below the limit: the first only brings it back to 4.
    assert await c.release() == []
    # Then the tenant with the fewest in flight first: "other" (0) before "big" (4).
    assert await c.release() == ["other"]


async def test_the_reserve_does_not_pass_higher_priority_waiters(crowd: Any) -> None:
    gate = FairGate(4, reserve=2)
    for _ in range(4):
        await gate.acquire("big", 0)
    c = crowd(gate)
    await c.add("vip", "vip-tenant", priority=5)
    await c.add("vip-2", "vip-tenant", priority=5)
    assert c.served == ["vip"] and gate.waiting == 1
    # The reserve has room, but a higher-priority request waits: low waits behind it.
    await c.add("low", "low-tenant", priority=0)
    assert c.served == ["vip"] and gate.waiting == 2
