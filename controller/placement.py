"""Placement: which live agent takes a new replica, with which of its GPUs (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from .model import Template
from .world import AgentView, World

# A GPU whose memory is this full though no replica of ours holds it is someone else's.
GPU_TAKEN_SHARE = 0.5


class Usage:
    """Slots and GPUs taken on each agent by the replicas the controller keeps, and which GPU
    numbers they hold (a replica adopted or stored without numbers counts, but holds none)."""

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.gpus: dict[str, int] = {}
        self.held: dict[str, set[int]] = {}
        # Replicas kept on each agent, and each pool's per agent and per zone: a pool's
        # replicas spread over zones, then hosts (a zone or host lost takes fewer of them).
        self.replicas: dict[str, int] = {}
        self.pool_agents: dict[tuple[str, str], int] = {}
        self.pool_zones: dict[tuple[str, str], int] = {}

    def charge(
        self,
        agent_id: str,
        template: Template | None,
        gpu_indices: tuple[int, ...] = (),
        *,
        pool: str = "",
        zone: str = "",
    ) -> None:
        if template is None:
            return
        self.replicas[agent_id] = self.replicas.get(agent_id, 0) + 1
        self.pool_agents[pool, agent_id] = self.pool_agents.get((pool, agent_id), 0) + 1
        self.pool_zones[pool, zone] = self.pool_zones.get((pool, zone), 0) + 1
        self.slots[agent_id] = self.slots.get(agent_id, 0) + template.cpu_slots
        self.gpus[agent_id] = self.gpus.get(agent_id, 0) + max(template.gpus, len(gpu_indices))
        self.held.setdefault(agent_id, set()).update(gpu_indices)

    def free_gpus(self, agent: AgentView) -> list[int]:
        """GPU numbers of the agent that no kept replica holds and that something else has not
        mostly filled, the most free memory first (then the lowest number)."""
        held = self.held.get(agent.agent_id, set())
        cap = agent.capacity
        indices = cap.gpu_indices or tuple(range(cap.gpus))
        free: list[tuple[int, int]] = []
        for pos, index in enumerate(indices):
            if index in held:
                continue
            total = _at(cap.gpu_memory_bytes, pos)
            used = _at(cap.gpu_memory_used_bytes, pos)
            if total and used > total * GPU_TAKEN_SHARE:
                continue
            free.append((-(total - used), index))
        return [index for _, index in sorted(free)]


def _at(values: tuple[int, ...], pos: int) -> int:
    return values[pos] if pos < len(values) else 0


@dataclass(frozen=True)
class Placement:
    agent_id: str
    gpu_indices: tuple[int, ...] = ()


def place(world: World, template: Template, usage: Usage, pool: str = "") -> Placement | None:
    """A live agent that runs the engine and has the room and GPUs the template asks for (the
    lowest free numbers): in the zone with fewest of the pool's replicas, then on the agent with
    fewest of them, then with the most free cpu slots; None if none fits."""
    best: tuple[int, int, int, int, str] | None = None
    chosen: tuple[int, ...] = ()
    for agent in world.agents.values():
        if not agent.live(world.lease_s):
            continue
        if agent.engines and template.engine not in agent.engines:
            continue
        free_slots = agent.capacity.cpu_slots - usage.slots.get(agent.agent_id, 0)
        free_gpus = agent.capacity.gpus - usage.gpus.get(agent.agent_id, 0)
        free_indices = usage.free_gpus(agent) if template.gpus else []
        if (
            free_slots < template.cpu_slots
            or free_gpus < template.gpus
            or len(free_indices) < template.gpus
        ):
            continue
        # Spread first (zones, then hosts), then most free slots, then fewest replicas of any
        # pool; the smallest id breaks ties so that the choice is deterministic.
        key = (
            usage.pool_zones.get((pool, agent.zone), 0),
            usage.pool_agents.get((pool, agent.agent_id), 0),
            -free_slots,
            usage.replicas.get(agent.agent_id, 0),
            agent.agent_id,
        )
        if best is None or key < best:
            best = key
            chosen = tuple(free_indices[: template.gpus])
    return None if best is None else Placement(best[-1], chosen)


def why_unplaced(world: World, template: Template) -> str:
    """For people: why place() found no agent."""
    if not any(a.live(world.lease_s) for a in world.agents.values()):
        return "no agent is connected"
    return (
        f"no connected agent has room for a {template.engine!r} replica needing "
        f"{template.cpu_slots} cpu slot(s) and {template.gpus} GPU(s); add an agent or lower "
        "the pool's replicas"
    )
