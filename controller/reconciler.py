"""The pure reconcile step: desired pools + live agents + assignments -> typed decisions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llmpool.v1 import types_pb2

from .model import Assignment, PoolSpec, Template

ReplicaState = types_pb2.ReplicaState
_GOING_AWAY = (types_pb2.REPLICA_STATE_DRAINING, types_pb2.REPLICA_STATE_STOPPED)


@dataclass(frozen=True)
class AgentView:
    """What the reconciler needs of one agent, read from the registry."""

    agent_id: str
    connected: bool
    silent_s: float
    cpu_slots: int = 0
    gpus: int = 0
    # The agent's host numbers of its GPUs (empty from agents that do not say: then 0..gpus-1)
    # and, where known, each one's memory in bytes and memory in use by anything.
    gpu_indices: tuple[int, ...] = ()
    gpu_memory_bytes: tuple[int, ...] = ()
    gpu_memory_used_bytes: tuple[int, ...] = ()
    engines: tuple[str, ...] = ()
    registered_at: float = 0.0
    replicas: Mapping[str, types_pb2.ReplicaStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class World:
    pools: Mapping[str, PoolSpec]
    assignments: Mapping[str, Assignment]
    agents: Mapping[str, AgentView]
    now: float
    since_start_s: float
    lease_s: float
    lost_after_s: float
    drain_s: float = 10.0


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


class _Usage:
    """Slots and GPUs taken on each agent by the replicas the controller keeps, and which GPU
    numbers they hold (a replica adopted or stored without numbers counts, but holds none)."""

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.gpus: dict[str, int] = {}
        self.held: dict[str, set[int]] = {}

    def charge(
        self, agent_id: str, template: Template | None, gpu_indices: tuple[int, ...] = ()
    ) -> None:
        if template is None:
            return
        self.slots[agent_id] = self.slots.get(agent_id, 0) + template.cpu_slots
        self.gpus[agent_id] = self.gpus.get(agent_id, 0) + max(template.gpus, len(gpu_indices))
        self.held.setdefault(agent_id, set()).update(gpu_indices)

    def free_gpus(self, agent: AgentView) -> list[int]:
        """GPU numbers of the agent that no kept replica holds and that something else has not
        mostly filled, the most free memory first (then the lowest number)."""
        held = self.held.get(agent.agent_id, set())
        indices = agent.gpu_indices or tuple(range(agent.gpus))
        free: list[tuple[int, int]] = []
        for pos, index in enumerate(indices):
            if index in held:
                continue
            total = _at(agent.gpu_memory_bytes, pos)
            used = _at(agent.gpu_memory_used_bytes, pos)
            if total and used > total * _GPU_TAKEN_SHARE:
                continue
            free.append((-(total - used), index))
        return [index for _, index in sorted(free)]


# A GPU whose memory is this full though no replica of ours holds it is someone else's.
_GPU_TAKEN_SHARE = 0.5


def _at(values: tuple[int, ...], pos: int) -> int:
    return values[pos] if pos < len(values) else 0


@dataclass(frozen=True)
class Placement:
    agent_id: str
    gpu_indices: tuple[int, ...] = ()


def place(world: World, template: Template, usage: _Usage) -> Placement | None:
    """The live agent with the most free cpu slots that runs the engine and has the GPUs the
    template asks for (the lowest free numbers); None if none fits."""
    best: tuple[int, str] | None = None
    chosen: tuple[int, ...] = ()
    for agent in world.agents.values():
        if not agent.connected or agent.silent_s >= world.lease_s:
            continue
        if agent.engines and template.engine not in agent.engines:
            continue
        free_slots = agent.cpu_slots - usage.slots.get(agent.agent_id, 0)
        free_gpus = agent.gpus - usage.gpus.get(agent.agent_id, 0)
        free_indices = usage.free_gpus(agent) if template.gpus else []
        if (
            free_slots < template.cpu_slots
            or free_gpus < template.gpus
            or len(free_indices) < template.gpus
        ):
            continue
        # Most free slots wins; ties go to the smallest id so the choice is deterministic.
        key = (-free_slots, agent.agent_id)
        if best is None or key < best:
            best = key
            chosen = tuple(free_indices[: template.gpus])
    return None if best is None else Placement(best[1], chosen)


def decide(world: World, new_id: Callable[[str], str]) -> list[Decision]:
    decisions: list[Decision] = []
    in_grace = world.since_start_s < world.lease_s
    usage = _Usage()
    active: dict[str, list[Assignment]] = {name: [] for name in world.pools}

    def lost(agent_id: str) -> bool:
        agent = world.agents.get(agent_id)
        if agent is None:
            # After a restart, agents get lease_s to come back before their replicas are replaced.
            return not in_grace
        return agent.silent_s >= world.lost_after_s

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
        if status is not None and status.state == types_pb2.REPLICA_STATE_STOPPED:
            decisions.append(ForgetReplica(a.replica_id, "stopped"))
            continue
        reporting = agent is not None and agent.connected and agent.silent_s < world.lease_s
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
        usage.charge(a.agent_id, template, a.gpu_indices)
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
                usage.charge(agent.agent_id, pool.template)
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
                placement = place(world, pool.template, usage)
                if placement is None:
                    decisions.append(Unplaced(name, missing, _why_unplaced(world, pool.template)))
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
                usage.charge(placement.agent_id, pool.template, placement.gpu_indices)
                missing -= 1
    return decisions


def _why_unplaced(world: World, template: Template) -> str:
    live = any(a.connected and a.silent_s < world.lease_s for a in world.agents.values())
    return _no_room(template) if live else "no agent is connected"


def _no_room(template: Template) -> str:
    return (
        f"no connected agent has room for a {template.engine!r} replica needing "
        f"{template.cpu_slots} cpu slot(s) and {template.gpus} GPU(s); add an agent or lower "
        "the pool's replicas"
    )
