"""The replicas of this host by id: start, stop, status views for reports and metrics, log rings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from agent.log_ring import LogRing
from agent.ports import PortAllocator
from agent.probe import Prober
from agent.replica import Replica, SupervisorSettings
from agent.status import ReplicaStatus
from agent.template import ReplicaSpec, validate, with_engine_defaults
from llmpool.clock import Clock, SystemClock
from llmpool.errors import FailedPreconditionError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)


class Supervisor:
    """Owns every replica this agent started; `changed` is set on any state change worth an
    immediate report (not on mere load updates, which go out with the periodic report)."""

    def __init__(
        self,
        settings: SupervisorSettings,
        ports: PortAllocator,
        prober: Prober,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._ports = ports
        self._prober = prober
        self._clock = clock or SystemClock()
        self._replicas: dict[str, Replica] = {}
        # Stopped replicas not yet reported: each goes out in exactly one report.
        self._gone: list[ReplicaStatus] = []
        self._restarts_by_pool: dict[str, int] = {}
        self._closed = False
        self.changed = asyncio.Event()

    def _notify(self) -> None:
        self.changed.set()

    def _count_restart(self, pool: str) -> None:
        self._restarts_by_pool[pool] = self._restarts_by_pool.get(pool, 0) + 1

    async def start(self, spec: ReplicaSpec) -> bool:
        """Spawns the replica; False when it already runs (idempotent). Raises InvalidArgumentError
        for a bad spec, FailedPreconditionError when it cannot be spawned (or its default model is
        not installed) or is being stopped."""
        if self._closed:
            raise UnavailableError(f"replica {spec.replica_id}: this agent is shutting down")
        existing = self._replicas.get(spec.replica_id)
        if existing is not None:
            if existing.stopping:
                raise FailedPreconditionError(
                    f"replica {spec.replica_id} is being stopped; start it again once it is STOPPED"
                )
            return False
        validate(spec)
        spec = with_engine_defaults(spec)
        replica = Replica(
            spec,
            self.settings,
            self._ports,
            self._prober,
            self._clock,
            on_change=self._notify,
            on_restart=self._count_restart,
        )
        self._replicas[spec.replica_id] = replica
        try:
            await replica.start()
        except Exception as exc:
            del self._replicas[spec.replica_id]
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise FailedPreconditionError(
                f"replica {spec.replica_id}: cannot start engine {spec.engine!r}: {detail}"
            ) from exc
        if self._closed:
            # shutdown() ran while this one was spawning: it must not outlive the agent.
            await self.stop(spec.replica_id, 0.0)
            raise UnavailableError(f"replica {spec.replica_id}: this agent is shutting down")
        return True

    async def stop(self, replica_id: str, drain_s: float) -> ReplicaStatus:
        """Drains and stops the replica; its STOPPED status goes out in the next report only."""
        replica = self._replicas.get(replica_id)
        if replica is None:
            raise NotFoundError(f"replica {replica_id} is not running on this agent")
        await replica.stop(drain_s)
        status = replica.status()
        if self._replicas.get(replica_id) is replica:
            del self._replicas[replica_id]
            self._gone.append(status)
            self._notify()
        return status

    async def shutdown(self) -> None:
        """Stops every replica at once, without draining (the agent is going away); later
        starts are refused."""
        self._closed = True
        ids = list(self._replicas)
        results = await asyncio.gather(
            *(self.stop(rid, 0.0) for rid in ids), return_exceptions=True
        )
        for rid, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "replica did not stop cleanly", extra={"replica_id": rid, "error": repr(result)}
                )

    def statuses(self) -> list[ReplicaStatus]:
        """Every replica this agent runs now (for Register and metrics)."""
        return [replica.status() for replica in self._replicas.values()]

    def take_report(self) -> list[ReplicaStatus]:
        """What the next Report carries: running replicas plus those stopped since the last one."""
        gone, self._gone = self._gone, []
        return self.statuses() + gone

    def logs(self, replica_id: str) -> LogRing:
        replica = self._replicas.get(replica_id)
        if replica is None:
            raise NotFoundError(f"replica {replica_id} is not running on this agent")
        return replica.ring

    def replica(self, replica_id: str) -> Replica:
        replica = self._replicas.get(replica_id)
        if replica is None:
            raise NotFoundError(f"replica {replica_id} is not running on this agent")
        return replica

    @property
    def restarts_by_pool(self) -> Mapping[str, int]:
        return dict(self._restarts_by_pool)
