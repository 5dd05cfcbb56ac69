"""Routing snapshot publisher: rebuilds on change (coalesced), diffs, pushes to gateways."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmpool.clock import Clock

from .metrics import ControllerMetrics
from .snapshot import ModelRoute, Routes, diff_routes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoutingUpdate:
    """One message of a WatchRouting stream (mirrors llmpool.v1.RoutingSnapshot): every route
    when full, else the routes that changed and the models that went away."""

    version: int
    full: bool
    routes: tuple[ModelRoute, ...]
    removed_models: tuple[str, ...] = ()
    created_unix_ms: int = 0
    # A restarted controller still waiting for agents (controller/restart_grace.py): members
    # may be missing, so gateways merge this into what they hold.
    provisional: bool = False


class Subscriber:
    """One WatchRouting stream. Never blocks the publisher: when too much piles up, what is
    pending collapses into one full snapshot of the latest table."""

    def __init__(self, gateway_id: str, max_pending: int) -> None:
        self.gateway_id = gateway_id
        self._max_pending = max_pending
        self._pending: deque[RoutingUpdate] = deque()
        self._event = asyncio.Event()
        self.closed = False
        self.overflows = 0

    def offer(self, snap: RoutingUpdate, full: Callable[[], RoutingUpdate]) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.clear()
            self._pending.append(full())
            self.overflows += 1
        else:
            self._pending.append(snap)
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def next_batch(self) -> list[RoutingUpdate] | None:
        """What is pending, waiting for something; None once closed."""
        while not self._pending:
            if self.closed:
                return None
            await self._event.wait()
            self._event.clear()
        batch = list(self._pending)
        self._pending.clear()
        return batch


class SnapshotPublisher:
    def __init__(
        self,
        build: Callable[[], Routes],
        changed: asyncio.Event,
        clock: Clock,
        metrics: ControllerMetrics,
        coalesce_s: float = 0.015,
        refresh_s: float = 1.0,
        max_pending: int = 64,
        provisional: Callable[[], bool] = lambda: False,
    ) -> None:
        self._provisional = provisional
        self._was_provisional = provisional()
        self._build = build
        self._changed = changed
        self._clock = clock
        self._metrics = metrics
        self._coalesce_s = coalesce_s
        self._refresh_s = refresh_s
        self._max_pending = max_pending
        self._subscribers: set[Subscriber] = set()
        self.routes: Routes = {}
        # Seeded from the wall clock so versions keep rising across controller restarts.
        self.version = int(clock.wall() * 1000)

    def full_snapshot(self) -> RoutingUpdate:
        return RoutingUpdate(
            version=self.version,
            full=True,
            routes=tuple(self.routes[m] for m in sorted(self.routes)),
            created_unix_ms=int(self._clock.wall() * 1000),
            provisional=self._was_provisional,
        )

    def subscribe(self, gateway_id: str) -> Subscriber:
        sub = Subscriber(gateway_id, self._max_pending)
        sub.offer(self.full_snapshot(), self.full_snapshot)
        self._subscribers.add(sub)
        self._metrics.gateways_connected.set(len(self._subscribers))
        log.info("gateway watching routes", extra={"gateway_id": gateway_id})
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        self._metrics.gateways_connected.set(len(self._subscribers))
        log.info("gateway stopped watching routes", extra={"gateway_id": sub.gateway_id})

    def publish(self) -> bool:
        """Rebuilds the table; when it changed, bumps the version and queues a delta. When a
        restart's grace ends, every gateway gets the whole table, no longer provisional: from
        then on a member missing is a decision."""
        new = self._build()
        changed, removed = diff_routes(self.routes, new)
        settled_now = self._was_provisional and not self._provisional()
        if not changed and not removed and not settled_now:
            return False
        self.routes = new
        self.version += 1
        self._metrics.snapshot_version.set(self.version)
        if settled_now:
            self._was_provisional = False
            log.info(
                "restart grace over: routing tables are final", extra={"version": self.version}
            )
            for sub in self._subscribers:
                sub.offer(self.full_snapshot(), self.full_snapshot)
            return True
        delta = RoutingUpdate(
            version=self.version,
            full=False,
            routes=tuple(changed),
            removed_models=tuple(removed),
            created_unix_ms=int(self._clock.wall() * 1000),
            provisional=self._was_provisional,
        )
        for sub in self._subscribers:
            sub.offer(delta, self.full_snapshot)
        return True

    async def run(self) -> None:
        """Rebuilds on change events (bursts coalesced) and every refresh_s (lease expiry)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._refresh_s)
            started = self._clock.monotonic()
            if self._changed.is_set():
                await asyncio.sleep(self._coalesce_s)
                self._changed.clear()
            try:
                pushed = self.publish()
            except Exception:
                log.exception("building the routing snapshot failed")
                continue
            if pushed:
                self._metrics.snapshot_push_seconds.observe(self._clock.monotonic() - started)

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()
