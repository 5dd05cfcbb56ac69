"""Applies reconciler decisions (store, then send the command) on every change and every second."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
from collections.abc import Callable

from llmpool.clock import Clock
from llmpool.status import ReplicaState

from .agents import AgentRegistry
from .commands import StartCommand, StopCommand
from .desired import DesiredState
from .metrics import ControllerMetrics
from .model import Assignment
from .reconciler import (
    AdoptReplica,
    AgentView,
    Decision,
    ForgetReplica,
    StartReplica,
    StopReplica,
    Unplaced,
    World,
    decide,
)
from .restart_grace import RestartGrace
from .usage import UsageAggregator

log = logging.getLogger(__name__)


def new_replica_id(pool: str) -> str:
    return f"{pool}-{secrets.token_hex(3)}"


def placement_env(gpu_indices: tuple[int, ...]) -> dict[str, str]:
    """The env a placement adds to the template's: CUDA_VISIBLE_DEVICES for GPU replicas."""
    if not gpu_indices:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpu_indices)}


class ReconcileLoop:
    def __init__(
        self,
        desired: DesiredState,
        registry: AgentRegistry,
        changed: asyncio.Event,
        clock: Clock,
        metrics: ControllerMetrics,
        drain_s: float = 10.0,
        interval_s: float = 1.0,
        usage: UsageAggregator | None = None,
        routing_version: Callable[[], int] | None = None,
        min_gap_s: float = 0.05,
        grace: RestartGrace | None = None,
    ) -> None:
        self._grace = grace
        # Changes within min_gap_s of a pass join the next one: a thousand agents reporting
        # each second make a pass every 50 ms, not a thousand back to back.
        self._min_gap_s = min_gap_s
        self._desired = desired
        self._registry = registry
        self._changed = changed
        self._clock = clock
        self._metrics = metrics
        self._drain_s = drain_s
        self._interval_s = interval_s
        self._usage = usage
        # The routing version published now: a drain ends early only once every gateway routes
        # with a newer one (which marks the replica draining). Drains end early only with both
        # usage and routing_version; otherwise a replica gets its whole drain_s.
        self._routing_version = routing_version
        # replica id -> (agent id, when its draining stop was sent, routing version that must be
        # applied), until the drain ends.
        self._draining: dict[str, tuple[str, float, int]] = {}
        # replica id -> when a stop was last sent; repeats within a lease are dropped.
        self._stops_sent: dict[str, float] = {}
        # pool -> why it is short of replicas, from the last pass.
        self.unplaced: dict[str, str] = {}

    def world(self) -> World:
        agents = {
            r.agent_id: AgentView(
                agent_id=r.agent_id,
                connected=r.connected,
                silent_s=self._registry.silent_s(r),
                capacity=r.capacity,
                engines=r.engines,
                registered_at=r.registered_at,
                replicas=r.replicas,
                zone=r.labels.get("zone", ""),
            )
            for r in self._registry.all()
        }
        return World(
            pools=dict(self._desired.pools),
            assignments=dict(self._desired.assignments),
            agents=agents,
            now=self._clock.wall(),
            lease_s=self._registry.lease_s,
            lost_after_s=self._registry.lost_after_s,
            drain_s=self._drain_s,
            returning=frozenset(self._grace.waiting_for()) if self._grace else frozenset(),
        )

    async def run_once(self) -> list[Decision]:
        async with self._desired.lock:
            decisions = decide(self.world(), new_replica_id)
            self._note_unplaced([d for d in decisions if isinstance(d, Unplaced)])
            applied: list[Decision] = [d for d in decisions if await self.apply(d)]
        self._end_quiet_drains()
        self._update_gauges()
        return applied

    async def run(self) -> None:
        last = -math.inf
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval_s)
            gap = last + self._min_gap_s - self._clock.monotonic()
            if gap > 0:
                await self._clock.sleep(gap)
            self._changed.clear()
            last = self._clock.monotonic()
            try:
                await self.run_once()
            except Exception:
                log.exception("reconcile pass failed; retrying on the next change")

    def _note_unplaced(self, found: list[Unplaced]) -> None:
        """Keeps why each pool is short; logs once when that changes, not every pass."""
        now = {u.pool: f"{u.missing} replica(s) not placed: {u.reason}" for u in found}
        for pool, message in now.items():
            if self.unplaced.get(pool) != message:
                log.warning("pool short of replicas", extra={"pool": pool, "why": message})
        self.unplaced = now

    async def apply(self, d: Decision) -> bool:
        """Applies one decision; False when it was a repeat that was dropped, or nothing to do."""
        if isinstance(d, Unplaced):
            return False
        if isinstance(d, StartReplica):
            await self._desired.put_assignment(
                Assignment(
                    d.replica_id, d.pool, d.agent_id, True, self._clock.wall(), d.gpu_indices
                )
            )
            self._registry.send(
                d.agent_id,
                StartCommand(d.replica_id, d.pool, d.template, placement_env(d.gpu_indices)),
            )
            log.info(
                "starting replica",
                extra={
                    "replica_id": d.replica_id,
                    "pool": d.pool,
                    "agent_id": d.agent_id,
                    "gpus": list(d.gpu_indices),
                },
            )
            action = "start"
        elif isinstance(d, StopReplica):
            if not await self.stop(d.replica_id, d.agent_id, d.drain_s, d.reason):
                return False
            action = "stop"
        elif isinstance(d, AdoptReplica):
            await self._desired.put_assignment(
                Assignment(d.replica_id, d.pool, d.agent_id, True, self._clock.wall())
            )
            log.info(
                "adopted replica",
                extra={"replica_id": d.replica_id, "pool": d.pool, "agent_id": d.agent_id},
            )
            action = "adopt"
        else:
            assert isinstance(d, ForgetReplica)
            await self._desired.delete_assignment(d.replica_id)
            self._stops_sent.pop(d.replica_id, None)
            self._draining.pop(d.replica_id, None)
            log.info("forgot replica", extra={"replica_id": d.replica_id, "reason": d.reason})
            action = "forget"
        self._metrics.reconcile_decisions.labels(action).inc()
        return True

    async def stop(self, replica_id: str, agent_id: str, drain_s: float, reason: str) -> bool:
        """Marks the assignment not desired and asks the agent to stop it after drain_s.
        Callers hold desired.lock. False when the same stop was sent less than a lease ago."""
        current = self._desired.assignments.get(replica_id)
        if current is not None and current.desired:
            await self._desired.put_assignment(dataclasses.replace(current, desired=False))
        now = self._clock.monotonic()
        last = self._stops_sent.get(replica_id)
        if last is not None and now - last < self._registry.lease_s:
            return current is not None and current.desired
        sent = self._registry.send(agent_id, StopCommand(replica_id, drain_s))
        if sent:
            self._stops_sent[replica_id] = now
            version_now = self._routing_version
            if drain_s > 0 and replica_id not in self._draining and version_now is not None:
                # Read after put_assignment: any snapshot built from now on shows it draining.
                self._draining[replica_id] = (agent_id, now, version_now() + 1)
        log.info(
            "stopping replica",
            extra={
                "replica_id": replica_id,
                "agent_id": agent_id,
                "drain_s": drain_s,
                "reason": reason,
                "sent": sent,
            },
        )
        return True

    def _end_quiet_drains(self) -> None:
        """Ends the drain of replicas that no gateway has requests in flight on any more. Engines
        without load metrics (llama_cpp.server, plain OpenAI servers) cannot tell their agent
        that, which would then wait out the whole drain_s; a second stop with drain_s 0 does."""
        if self._usage is None:
            return
        now = self._clock.monotonic()
        for replica_id, (agent_id, since, version) in list(self._draining.items()):
            found = self._registry.find_replica(replica_id)
            if found is None or found[1].state is ReplicaState.STOPPED:
                del self._draining[replica_id]
                continue
            if found[1].state is not ReplicaState.DRAINING:
                continue  # the agent has not taken the stop yet
            if not self._usage.quiet_since(replica_id, since, version):
                continue
            del self._draining[replica_id]
            sent = self._registry.send(agent_id, StopCommand(replica_id, 0.0))
            log.info(
                "drain done: nothing in flight",
                extra={"replica_id": replica_id, "drained_s": round(now - since, 2), "sent": sent},
            )

    def _update_gauges(self) -> None:
        agents = self._registry.all()
        connected = sum(1 for r in agents if r.connected)
        self._metrics.agents.labels("connected").set(connected)
        self._metrics.agents.labels("disconnected").set(len(agents) - connected)
        counts: dict[tuple[str, str], int] = {}
        by_id = {r.agent_id: r for r in agents}
        for a in self._desired.assignments.values():
            # The assignment's own agent, not a search of every agent per replica.
            record = by_id.get(a.agent_id)
            status = record.replicas.get(a.replica_id) if record is not None else None
            state = "unknown" if status is None else status.state.value
            counts[(a.pool, state)] = counts.get((a.pool, state), 0) + 1
        self._metrics.replicas.clear()
        for (pool, state), n in counts.items():
            self._metrics.replicas.labels(pool, state).set(n)
        self._metrics.pool_desired_replicas.clear()
        for name, spec in self._desired.pools.items():
            self._metrics.pool_desired_replicas.labels(name).set(spec.replicas)
