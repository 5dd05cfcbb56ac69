"""Desired state in memory, written through to the store: pools, backends, assignments."""

from __future__ import annotations

import asyncio
import logging

from .changes import Changes
from .model import Assignment, BackendSpec, PoolSpec
from .store import Store

log = logging.getLogger(__name__)


class DesiredState:
    """Reads come from memory (snapshots read often); writes go to SQLite first."""

    def __init__(self, store: Store, changes: Changes) -> None:
        self._store = store
        self._changes = changes
        self.pools: dict[str, PoolSpec] = {}
        self.backends: dict[str, BackendSpec] = {}
        self.assignments: dict[str, Assignment] = {}
        # Admin calls are concurrent coroutines; a read-check-write must not interleave.
        self.lock = asyncio.Lock()

    async def load(self, seed: tuple[list[PoolSpec], list[BackendSpec]] | None) -> bool:
        """Loads the store, seeding it first when it is empty. Returns True when it seeded."""
        seeded = False
        if seed is not None and await self._store.is_empty():
            await self._store.seed(*seed)
            seeded = True
        self.pools = {p.name: p for p in await self._store.load_pools()}
        self.backends = {b.id: b for b in await self._store.load_backends()}
        self.assignments = {a.replica_id: a for a in await self._store.load_assignments()}
        log.info(
            "desired state loaded",
            extra={
                "pools": len(self.pools),
                "backends": len(self.backends),
                "replicas": len(self.assignments),
                "seeded": seeded,
            },
        )
        return seeded

    def pool_backends(self, pool: str) -> list[BackendSpec]:
        return sorted((b for b in self.backends.values() if b.pool == pool), key=lambda b: b.id)

    def pool_assignments(self, pool: str) -> list[Assignment]:
        return sorted(
            (a for a in self.assignments.values() if a.pool == pool), key=lambda a: a.replica_id
        )

    async def put_pool(self, pool: PoolSpec) -> None:
        await self._store.put_pool(pool)
        self.pools[pool.name] = pool
        self._changes.notify()

    async def delete_pool(self, name: str) -> None:
        await self._store.delete_pool(name)
        self.pools.pop(name, None)
        for backend_id in [b.id for b in self.backends.values() if b.pool == name]:
            del self.backends[backend_id]
        self._changes.notify()

    async def put_backend(self, backend: BackendSpec) -> None:
        await self._store.put_backend(backend)
        self.backends[backend.id] = backend
        self._changes.notify()

    async def delete_backend(self, backend_id: str) -> None:
        await self._store.delete_backend(backend_id)
        self.backends.pop(backend_id, None)
        self._changes.notify()

    async def put_assignment(self, assignment: Assignment) -> None:
        await self._store.put_assignment(assignment)
        self.assignments[assignment.replica_id] = assignment
        self._changes.notify()

    async def delete_assignment(self, replica_id: str) -> None:
        await self._store.delete_assignment(replica_id)
        self.assignments.pop(replica_id, None)
        self._changes.notify()
