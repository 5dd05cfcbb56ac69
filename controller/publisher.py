"""Routing snapshot publisher: rebuilds on change (coalesced), diffs, pushes to gateways."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from llmpool.clock import Clock
from llmpool.v1 import gateway_pb2

from .metrics import ControllerMetrics
from .snapshot import ModelRoute, Routes, diff_routes

log = logging.getLogger(__name__)


class KeyTableSource(Protocol):
    """The API keys and tenants as gateways get them; version moves with every change."""

    @property
    def version(self) -> int: ...

    def table(self) -> gateway_pb2.KeyTable: ...


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
        # The latest key table and this gateway's quotas not yet sent (each replaces the last).
        self.keys: gateway_pb2.KeyTable | None = None
        self.quotas: gateway_pb2.Quotas | None = None
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

    def offer_keys(self, table: gateway_pb2.KeyTable) -> None:
        self.keys = table
        self._event.set()

    def offer_quotas(self, quotas: gateway_pb2.Quotas) -> None:
        self.quotas = quotas
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def next_batch(self) -> list[RoutingUpdate] | None:
        """What is pending, waiting for something; None once closed. The key table and quotas
        waiting are taken by the caller (take_extras) with it."""
        while not self._pending and self.keys is None and self.quotas is None:
            if self.closed:
                return None
            await self._event.wait()
            self._event.clear()
        batch = list(self._pending)
        self._pending.clear()
        return batch

    def take_extras(self) -> tuple[gateway_pb2.KeyTable | None, gateway_pb2.Quotas | None]:
        keys, quotas = self.keys, self.quotas
        self.keys = self.quotas = None
        return keys, quotas


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
        key_table: KeyTableSource | None = None,
    ) -> None:
        # The API key table gateways check requests against: sent whole when it changes.
        self._key_table = key_table
        self._keys_version = key_table.version if key_table is not None else 0
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
        if self._key_table is not None:
            # With the first snapshot: a gateway never routes without knowing the keys.
            sub.offer_keys(self._key_table.table())
        self._subscribers.add(sub)
        self._metrics.gateways_connected.set(len(self._subscribers))
        log.info("gateway watching routes", extra={"gateway_id": gateway_id})
        self.nudge()  # Routes tell how many gateways watch them.
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        self._metrics.gateways_connected.set(len(self._subscribers))
        log.info("gateway stopped watching routes", extra={"gateway_id": sub.gateway_id})
        self.nudge()

    def publish(self) -> bool:
        """Rebuilds the table; when it changed, bumps the version and queues a delta. When a
        restart's grace ends, every gateway gets the whole table, no longer provisional: from
        then on a member missing is a decision."""
        self._publish_keys()
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

    def _publish_keys(self) -> None:
        source = self._key_table
        if source is None or source.version == self._keys_version:
            return
        self._keys_version = source.version
        table = source.table()
        for sub in self._subscribers:
            sub.offer_keys(table)

    def gateway_ids(self) -> list[str]:
        return [sub.gateway_id for sub in self._subscribers]

    def gateways(self) -> int:
        """Gateways watching routes (one that reconnects counts once)."""
        return len({sub.gateway_id for sub in self._subscribers})

    def offer_quotas(self, gateway_id: str, quotas: gateway_pb2.Quotas) -> None:
        for sub in self._subscribers:
            if sub.gateway_id == gateway_id:
                sub.offer_quotas(quotas)

    def nudge(self) -> None:
        """Something the snapshot carries changed outside the controller's state (a gateway's
        usage: in flight, prefixes sent and found missing, caches learned): rebuilt and pushed
        after the usual coalescing, not at the next refresh."""
        self._changed.set()

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
