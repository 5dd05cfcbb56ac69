"""What the reconciler and placement see: desired pools and assignments, and the live agents."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from llmpool.capacity import Capacity
from llmpool.status import ReplicaStatus

from .model import Assignment, PoolSpec


@dataclass(frozen=True)
class AgentView:
    """What the reconciler needs of one agent, read from the registry. Capacity's GPU numbers
    are the host's (empty from agents that do not say: then 0..gpus-1)."""

    agent_id: str
    connected: bool
    silent_s: float
    capacity: Capacity = field(default_factory=Capacity)
    engines: tuple[str, ...] = ()
    registered_at: float = 0.0
    replicas: Mapping[str, ReplicaStatus] = field(default_factory=dict)
    # The agent's "zone" label: placement spreads each pool's replicas over zones.
    zone: str = ""

    def live(self, lease_s: float) -> bool:
        """Connected and heard from within the lease: it can take new replicas."""
        return self.connected and self.silent_s < lease_s


@dataclass(frozen=True)
class World:
    pools: Mapping[str, PoolSpec]
    assignments: Mapping[str, Assignment]
    agents: Mapping[str, AgentView]
    now: float
    lease_s: float
    lost_after_s: float
    drain_s: float = 10.0
    # Agents a restarted controller still waits for (controller/restart_grace.py): their
    # replicas are neither forgotten nor replaced yet.
    returning: frozenset[str] = frozenset()
