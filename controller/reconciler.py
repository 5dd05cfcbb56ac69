"""The pure reconcile step: desired pools + live agents + assignments -> typed decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmpool.status import ReplicaState

from .model import Assignment, Template
from .placement import Usage, place, why_unplaced
from .world import AgentView, World

__all__ = [
    "AdoptReplica",
    "AgentView",
    "Decision",
    "ForgetReplica",
    "StartReplica",
    "StopReplica",
    "Unplaced",
    "World",
    "decide",
]

_GOING_AWAY = (ReplicaState.DRAINING, ReplicaState.STOPPED)


@dataclass(frozen=True)
class StartReplica:
    replica_id: str
    pool: str
    agent_id: str
    template: Template
    # The agent's GPUs it gets, by host number; () when the template asks for none.
    gpu_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class StopReplica:
    """Stop (after drain_s) and mark the assignment not desired, when there is one."""

    replica_id: str
    agent_id: str
    drain_s: float
    reason: str


@dataclass(frozen=True)
class AdoptReplica:
    replica_id: str
    pool: str
    agent_id: str


@dataclass(frozen=True)
class ForgetReplica:
    replica_id: str
    reason: str


@dataclass(frozen=True)
class Unplaced:
    """Replicas the pool asks for that no live agent can take now; reason is for people."""

    pool: str
    missing: int
    reason: str


Decision = StartReplica | StopReplica | AdoptReplica | ForgetReplica | Unplaced


def _template_of(world: World, pool: str) -> Template | None:
    spec = world.pools.get(pool)
    return spec.template if spec is not None else None


def _zone(world: World, agent_id: str) -> str:
    agent = world.agents.get(agent_id)
    return agent.zone if agent is not None else ""


def decide(world: World, new_id: Callable[[str], str]) -> list[Decision]:
    decisions: list[Decision] = []
    usage = Usage()
    active: dict[str, list[Assignment]] = {name: [] for name in world.pools}

    def lost(agent_id: str) -> bool:
        agent = world.agents.get(agent_id)
        if agent is None:
            # After a restart, agents get the restart grace to come back before their replicas
            # are replaced.
            return agent_id not in world.returning
        # A closed stream is certain news: its replicas go after a lease. A silent agent whose
        # stream is open may be stalled (paused, swapping): it gets lost_after_s.
        return agent.silent_s >= (world.lease_s if not agent.connected else world.lost_after_s)

    for a in sorted(world.assignments.values(), key=lambda a: (a.created_at, a.replica_id)):
        agent = world.agents.get(a.agent_id)
        if lost(a.agent_id):
            decisions.append(ForgetReplica(a.replica_id, "agent lost"))
            continue
        status = agent.replicas.get(a.replica_id) if agent is not None else None
        if status is not None and status.attached:
            # Adopted before the agent said it only watches it: not ours to count or stop.
            decisions.append(ForgetReplica(a.replica_id, "attached"))
            continue
        if status is not None and status.state is ReplicaState.STOPPED:
            decisions.append(ForgetReplica(a.replica_id, "stopped"))
            continue
        reporting = agent is not None and agent.live(world.lease_s)
        if agent is not None and reporting and status is None:
            if not a.desired:
                decisions.append(ForgetReplica(a.replica_id, "gone after drain"))
                continue
            # Register lists all the agent runs; one placed before it and missing is not running.
            # Otherwise a StartReplica may still be on its way: give it lost_after_s.
            if a.created_at < agent.registered_at or world.now - a.created_at > world.lost_after_s:
                decisions.append(ForgetReplica(a.replica_id, "agent does not run it"))
                continue
        template = _template_of(world, a.pool)
        usage.charge(
            a.agent_id, template, a.gpu_indices, pool=a.pool, zone=_zone(world, a.agent_id)
        )
        if not a.desired:
            # A stop that never reached the agent (it was away): say it again.
            if reporting and status is not None and status.state not in _GOING_AWAY:
                decisions.append(StopReplica(a.replica_id, a.agent_id, world.drain_s, "draining"))
            continue
        if a.pool not in world.pools:
            decisions.append(StopReplica(a.replica_id, a.agent_id, 0.0, "pool deleted"))
            continue
        active[a.pool].append(a)

    for agent in sorted(world.agents.values(), key=lambda v: v.agent_id):
        if lost(agent.agent_id) or agent.silent_s >= world.lease_s:
            continue
        for rid, status in sorted(agent.replicas.items()):
            # Attached engines are routed but never adopted, stopped or counted: not ours.
            if rid in world.assignments or status.attached or status.state in _GOING_AWAY:
                continue
            pool = world.pools.get(status.pool)
            if pool is not None and len(active[pool.name]) < pool.replicas:
                decisions.append(AdoptReplica(rid, pool.name, agent.agent_id))
                active[pool.name].append(
                    Assignment(rid, pool.name, agent.agent_id, True, world.now)
                )
                usage.charge(agent.agent_id, pool.template, pool=pool.name, zone=agent.zone)
            else:
                decisions.append(StopReplica(rid, agent.agent_id, 0.0, "unknown replica"))

    for name in sorted(world.pools):
        pool = world.pools[name]
        have = active[name]
        if len(have) > pool.replicas:
            newest_first = sorted(have, key=lambda a: (a.created_at, a.replica_id), reverse=True)
            for a in newest_first[: len(have) - pool.replicas]:
                decisions.append(StopReplica(a.replica_id, a.agent_id, world.drain_s, "scale down"))
        elif pool.template is not None:
            missing = pool.replicas - len(have)
            while missing > 0:
                placement = place(world, pool.template, usage, name)
                if placement is None:
                    decisions.append(Unplaced(name, missing, why_unplaced(world, pool.template)))
                    break
                decisions.append(
                    StartReplica(
                        new_id(name),
                        name,
                        placement.agent_id,
                        pool.template,
                        placement.gpu_indices,
                    )
                )
                usage.charge(
                    placement.agent_id,
                    pool.template,
                    placement.gpu_indices,
                    pool=name,
                    zone=_zone(world, placement.agent_id),
                )
                missing -= 1
    return decisions
