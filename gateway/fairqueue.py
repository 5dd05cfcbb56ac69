"""A pool's admission gate: at most `limit` requests in flight, the rest wait in a bounded
queue served highest priority first and, within a priority, to the tenant with the fewest
requests in flight (ties in turn), so one tenant's burst cannot starve another's trickle. A
tenant with nothing in flight does not wait at all: it is admitted from a reserve of a quarter
of the limit (at least one) above it, unless higher-priority requests wait. Set the limit a
quarter under what the members can run at once, and the reserve runs at once too."""

from __future__ import annotations

import asyncio
import bisect
from collections import deque

# Retry-After of a shed request: a short fixed hint. The queue's drain time depends on
# response lengths nobody knows yet; a jittered client retry does better than a falsely
# precise estimate, and a constant costs the hot path nothing.
RETRY_AFTER_S = 1.0


class Shed(Exception):
    """A request the gate turned away: `reason` says why, `retry_after_s` when to try again."""

    def __init__(self, reason: str, retry_after_s: float = RETRY_AFTER_S) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _Waiter:
    __slots__ = ("fut", "priority", "tenant")

    def __init__(self, tenant: str, priority: int, fut: asyncio.Future[None]) -> None:
        self.tenant = tenant
        self.priority = priority
        self.fut = fut


class FairGate:
    """Admits up to `limit` requests at once (`limit <= 0`: all of them, never queueing).

    Every acquire() that returned must be matched by one release(). A release hands its slot
    straight to the next waiter, so a newcomer never barges past the queue."""

    def __init__(
        self,
        limit: int,
        max_waiting: int = 1000,
        max_wait_s: float = 30.0,
        reserve: int | None = None,
    ) -> None:
        self._limit = limit
        # Above the limit, for tenants with nothing in flight; None: a quarter of the limit.
        self._reserve = reserve
        self._max_waiting = max_waiting
        self._max_wait_s = max_wait_s
        self._admitted = 0
        self._waiting = 0
        # Requests in flight per tenant (those that named it on release): who goes first.
        self._held: dict[str, int] = {}
        # priority -> tenant -> that tenant's waiters, oldest first. A dict keeps insertion
        # order, so the first tenant of a level is the one whose turn it is; a served tenant
        # with more waiters is re-inserted, which moves it to the back (round-robin).
        self._levels: dict[int, dict[str, deque[_Waiter]]] = {}
        # The priorities with waiters, ascending: the next to serve is the last, the one to
        # displace from is the first. There are few distinct priorities, so insort is cheap.
        self._priorities: list[int] = []

    @property
    def admitted(self) -> int:
        """Requests admitted and not yet released."""
        return self._admitted

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return self._waiting

    @property
    def limit(self) -> int:
        return self._limit

    def waiting_by_tenant(self) -> dict[str, int]:
        """Requests in the queue, per tenant (for metrics; walks the queue)."""
        counts: dict[str, int] = {}
        for level in self._levels.values():
            for tenant, queue in level.items():
                counts[tenant] = counts.get(tenant, 0) + len(queue)
        return counts

    async def acquire(self, tenant: str, priority: int) -> bool:
        """Returns once the request holds a slot (True if it waited in the queue for it);
        raises Shed when the queue is full, when a higher-priority request displaces it, or
        after waiting max_wait_s."""
        # The hot path: a free slot and nobody ahead. No allocation, no suspension.
        if not self._waiting and (self._limit <= 0 or self._admitted < self._limit):
            self._admitted += 1
            self._held[tenant] = self._held.get(tenant, 0) + 1
            return False
        reserve = self._reserve if self._reserve is not None else max(1, self._limit // 4)
        if (
            0 < self._limit
            and self._admitted < self._limit + reserve
            and tenant not in self._held
            and (not self._priorities or priority >= self._priorities[-1])
        ):
            # A tenant with nothing in flight is admitted at once from a reserve of a quarter
            # of the limit: it never waits for a flood of another tenant's to drain.
            self._admitted += 1
            self._held[tenant] = 1
            return False
        if self._waiting >= self._max_waiting:
            if not self._priorities or priority <= self._priorities[0]:
                raise Shed("queue full")
            self._displace()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tenant, priority, loop.create_future())
        self._push(waiter)
        # The timeout is a queue operation run by the loop, like a hand-off: whichever of the
        # two runs first settles the future, so a waiter cannot both time out and get a slot.
        timer = loop.call_later(self._max_wait_s, self._expire, waiter)
        try:
            await waiter.fut
        except asyncio.CancelledError:
            fut = waiter.fut
            if not fut.done() or fut.cancelled():
                self._discard(waiter)  # still queued, unless a release already skipped it
            elif fut.exception() is None:
                # Handed a slot just as the client left: pass it on, or it leaks.
                self.release(tenant)
            raise
        finally:
            timer.cancel()
        return True

    def release(self, tenant: str = "") -> None:
        """Frees one slot of tenant's: the next waiter gets it, if the limit allows."""
        if self._admitted <= 0:
            raise RuntimeError("FairGate.release() without a matching acquire()")
        self._admitted -= 1
        held = self._held.get(tenant)
        if held is not None:
            if held > 1:
                self._held[tenant] = held - 1
            else:
                del self._held[tenant]
        if self._waiting:
            self._admit_waiters()

    def set_limit(self, limit: int) -> None:
        """A new limit, at once: a higher one admits waiters now; a lower one lets those
        admitted finish and admits no one until they are below it."""
        self._limit = limit
        if self._waiting:
            self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._waiting and (self._limit <= 0 or self._admitted < self._limit):
            waiter = self._pop_next()
            if waiter.fut.done():
                continue  # cancelled, its task not yet run: it leaves on its own
            waiter.fut.set_result(None)
            self._admitted += 1
            self._held[waiter.tenant] = self._held.get(waiter.tenant, 0) + 1

    def _push(self, waiter: _Waiter) -> None:
        level = self._levels.get(waiter.priority)
        if level is None:
            level = self._levels[waiter.priority] = {}
            bisect.insort(self._priorities, waiter.priority)
        queue = level.get(waiter.tenant)
        if queue is None:
            queue = level[waiter.tenant] = deque()
        queue.append(waiter)
        self._waiting += 1

    def _pop_next(self) -> _Waiter:
        """At the highest priority, the oldest waiter of the tenant with the fewest requests in
        flight; of tenants with as few, the one whose turn it is."""
        priority = self._priorities[-1]
        level = self._levels[priority]
        held = self._held
        tenant = min(level, key=lambda t: held.get(t, 0))
        queue = level.pop(tenant)
        waiter = queue.popleft()
        if queue:
            level[tenant] = queue  # to the back of the rotation
        elif not level:
            del self._levels[priority]
            self._priorities.pop()
        self._waiting -= 1
        return waiter

    def _displace(self) -> None:
        """Sheds the newest waiter of the lowest priority, taken from the tenant with the
        most waiters there (the one that can best spare it)."""
        priority = self._priorities[0]
        level = self._levels[priority]
        tenant = max(level, key=lambda t: len(level[t]))
        waiter = level[tenant][-1]
        self._discard(waiter)
        if not waiter.fut.done():
            waiter.fut.set_exception(Shed("displaced by a higher-priority request"))

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.fut.done():
            return  # admitted, shed or cancelled meanwhile
        self._discard(waiter)
        waiter.fut.set_exception(Shed("waited too long"))

    def _discard(self, waiter: _Waiter) -> None:
        """Takes `waiter` out of the queue if it is there (linear in its tenant's waiters:
        only cancellations, timeouts and displacements come here)."""
        level = self._levels.get(waiter.priority)
        queue = level.get(waiter.tenant) if level is not None else None
        if level is None or queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        self._waiting -= 1
        if not queue:
            del level[waiter.tenant]
            if not level:
                del self._levels[waiter.priority]
                self._priorities.remove(waiter.priority)
