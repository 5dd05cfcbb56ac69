"""The replicas of this host by id (started or attached): start, stop, status views, log rings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from agent.attach_spec import AttachSpec
from agent.attached import AttachedEngine
from agent.engines import adapter_for
from agent.log_ring import LogRing
from agent.ports import PortAllocator
from agent.probe import Prober
from agent.replica import Replica
from agent.settings import SupervisorSettings
from agent.template import ReplicaSpec, validate
from llmpool.clock import Clock, SystemClock
from llmpool.errors import FailedPreconditionError, NotFoundError, UnavailableError
from llmpool.status import ReplicaStatus

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
        # Engines watched but not started (--attach); reported like replicas, never stopped.
        self._attached: dict[str, AttachedEngine] = {}
        # Stopped replicas not yet reported: each goes out in exactly one report.
        self._gone: list[ReplicaStatus] = []
        self._restarts_by_pool: dict[str, int] = {}
        self._closed = False
        self.changed = asyncio.Event()

    def _notify(self) -> None:
        self.changed.set()

    def _count_restart(self, pool: str) -> None:
        self._restarts_by_pool[pool] = self._restarts_by_pool.get(pool, 0) + 1

    def attach(self, spec: AttachSpec) -> AttachedEngine:
        """Starts watching an engine this agent did not start (needs a running event loop)."""
        if self._closed:
            raise UnavailableError(f"replica {spec.replica_id}: this agent is shutting down")
        if spec.replica_id in self._replicas or spec.replica_id in self._attached:
            raise FailedPreconditionError(
                f"replica {spec.replica_id} exists already on this agent;"
                " give the --attach spec its own id="
            )
        engine = AttachedEngine(spec, self.settings, self._prober, self._clock, self._notify)
        self._attached[spec.replica_id] = engine
        engine.start()
        self._notify()
        return engine

    def _refuse_attached(self, replica_id: str, what: str) -> None:
        if replica_id in self._attached:
            raise FailedPreconditionError(f"replica {replica_id} is attached: {what}")

    async def start(self, spec: ReplicaSpec) -> bool:
        """Spawns the replica; False when it already runs (idempotent). Raises InvalidArgumentError
        for a bad spec, FailedPreconditionError when it cannot be spawned (or its default model is
        not installed) or is being stopped."""
        if self._closed:
            raise UnavailableError(f"replica {spec.replica_id}: this agent is shutting down")
        validate(spec)
        # Filling in the default command reads model files: off the loop, and before the checks
        # below so that nothing can slip in between them and the insert.
        spec = await asyncio.to_thread(adapter_for(spec.engine).fill, spec)
        refused = self.settings.allow.problem(spec.command, spec.env)
        if refused is not None:
            raise FailedPreconditionError(
                f"replica {spec.replica_id} refused by this agent: {refused}"
            )
        if self._closed:
            raise UnavailableError(f"replica {spec.replica_id}: this agent is shutting down")
        existing = self._replicas.get(spec.replica_id)
        if existing is not None:
            if existing.stopping:
                raise FailedPreconditionError(
                    f"replica {spec.replica_id} is being stopped; start it again once it is STOPPED"
                )
            return False
        self._refuse_attached(
            spec.replica_id, "the agent watches an engine of that id; start it under another id"
        )
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
        self._refuse_attached(
            replica_id,
            "the agent watches it but did not start it; remove the --attach flag to stop "
            "watching it",
        )
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
        """Stops every replica at once, without draining (the agent is going away), and stops
        watching attached engines (they drop out of reports); later starts are refused."""
        self._closed = True
        attached, self._attached = list(self._attached.values()), {}
        await asyncio.gather(*(engine.stop() for engine in attached))
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
        """Every replica this agent runs or watches now (for Register and metrics)."""
        return [replica.status() for replica in self._replicas.values()] + [
            engine.status() for engine in self._attached.values()
        ]

    def take_report(self) -> list[ReplicaStatus]:
        """What the next Report carries: running replicas plus those stopped since the last one."""
        gone, self._gone = self._gone, []
        return self.statuses() + gone

    def logs(self, replica_id: str) -> LogRing:
        self._refuse_attached(
            replica_id,
            "there are no logs for an engine the agent did not start; read them where it runs",
        )
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
