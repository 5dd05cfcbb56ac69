"""The cost ledger: what gateways report (requests, tokens, dollars by their members' prices)
and what replicas cost by the hour, kept per minute, pool and backend in the store; GetUsage
sums a window of it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llmpool.clock import Clock

from .metrics import ControllerMetrics
from .store import Store

log = logging.getLogger(__name__)

# The backend under which a pool's replicas' running time is kept.
REPLICAS = "(replicas)"
# Minutes kept: 90 days.
KEEP_MINUTES = 90 * 24 * 60
# At most this many (minute, pool, backend) rows wait for a flush; beyond it, a flush runs now.
_MAX_PENDING = 10_000


@dataclass(frozen=True)
class UsageRow:
    """One pool and backend's sums over a window (mirrors llmpool.v1.UsageRow)."""

    pool: str
    backend: str
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


# (pool, replica id, US dollars an hour) for each replica running now.
RunningReplicas = Callable[[], Iterable[tuple[str, str, float]]]


class Ledger:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: ControllerMetrics,
        running: RunningReplicas | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._running = running
        self._interval_s = interval_s
        # (minute, pool, backend) -> [requests, prompt, cached, completion, cost], not yet stored.
        self._pending: dict[tuple[int, str, str], list[float]] = {}
        self._last_tick: float | None = None
        self._lock = asyncio.Lock()

    def add(
        self,
        pool: str,
        backend: str,
        requests: int,
        prompt: int,
        cached: int,
        completion: int,
        cost_usd: float,
    ) -> None:
        """One gateway's usage of one member since its last report."""
        key = (int(self._clock.wall() // 60), pool, backend)
        row = self._pending.get(key)
        if row is None:
            if len(self._pending) >= _MAX_PENDING:
                return  # a flood of distinct labels: dropped rather than held without bound
            row = self._pending[key] = [0, 0, 0, 0, 0.0]
        row[0] += requests
        row[1] += prompt
        row[2] += cached
        row[3] += completion
        row[4] += cost_usd

    def tick(self) -> None:
        """Charges running replicas their hourly cost for the time since the last tick."""
        now = self._clock.monotonic()
        last, self._last_tick = self._last_tick, now
        if last is None or self._running is None:
            return
        hours = (now - last) / 3600.0
        for pool, _replica, hourly in self._running():
            if hourly > 0:
                cost = hourly * hours
                self.add(pool, REPLICAS, 0, 0, 0, 0, cost)
                self._metrics.replica_cost.labels(pool).inc(cost)

    async def flush(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            rows = [
                (m, pool, backend, int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4]))
                for (m, pool, backend), r in pending.items()
            ]
            await self._store.add_usage(rows)
            await self._store.forget_usage_before(int(self._clock.wall() // 60) - KEEP_MINUTES)

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            try:
                self.tick()
                await self.flush()
            except Exception:
                log.exception("ledger flush failed; keeping its rows for the next one")

    async def usage(self, since: float, until: float, pool: str = "") -> list[UsageRow]:
        """Sums by pool and backend over [since, until] (unix seconds; 0: unbounded)."""
        self.tick()
        await self.flush()
        first = int(since // 60) if since > 0 else 0
        last = int(until // 60) if until > 0 else int(self._clock.wall() // 60) + 1
        rows = await self._store.usage(first, last, pool)
        return [UsageRow(*row) for row in rows]
