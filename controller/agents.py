"""Live state of agents: registration, reported replicas, command outboxes and leases.

The registry is the agent stream's edge: it takes Register and Report messages and keeps their
content in domain types, and turns the controller's commands into messages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from llmpool.capacity import Capacity
from llmpool.clock import Clock
from llmpool.status import ReplicaState, ReplicaStatus
from llmpool.v1 import agent_pb2, types_pb2

from .changes import Changes
from .commands import AgentCommand
from .convert import capacity_from_proto, command_to_proto, status_from_proto

log = logging.getLogger(__name__)


class AgentConnection:
    """The outbound half of one agent stream: commands queue here and the servicer yields them."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        # Commands are few and small; unbounded so that senders never wait on a slow agent.
        self.outbox: asyncio.Queue[agent_pb2.ControllerMessage | None] = asyncio.Queue()

    def send(self, msg: agent_pb2.ControllerMessage) -> None:
        self.outbox.put_nowait(msg)

    def close(self) -> None:
        self.outbox.put_nowait(None)


@dataclass
class AgentRecord:
    agent_id: str
    hostname: str
    labels: dict[str, str]
    capacity: Capacity
    engines: tuple[str, ...]
    last_seen: float
    # Wall-clock time of the latest Register: it lists everything the agent runs at that moment.
    registered_at: float = 0.0
    connected: bool = True
    replicas: dict[str, ReplicaStatus] = field(default_factory=dict)
    connection: AgentConnection | None = None


class AgentRegistry:
    """Agents known since this controller started. A lease lasts lease_s after the last message;
    an agent silent for lost_after_s counts as lost (its replicas get replaced)."""

    def __init__(self, clock: Clock, lease_s: float, lost_after_s: float, changes: Changes) -> None:
        self._clock = clock
        self.lease_s = lease_s
        self.lost_after_s = lost_after_s
        self._changes = changes
        self._agents: dict[str, AgentRecord] = {}
        # Pool -> why an agent refused or failed its last start there (GetPoolStatus shows it
        # until a replica of the pool is ready).
        self.start_failures: dict[str, str] = {}

    def register(self, msg: agent_pb2.Register, conn: AgentConnection) -> AgentRecord:
        old = self._agents.get(msg.agent_id)
        if old is not None and old.connection is not None and old.connection is not conn:
            # The agent reconnected before the old stream noticed; the newest stream wins.
            old.connection.close()
        record = AgentRecord(
            agent_id=msg.agent_id,
            hostname=msg.hostname,
            labels=dict(msg.labels),
            capacity=capacity_from_proto(msg.capacity),
            engines=tuple(msg.engines),
            last_seen=self._clock.monotonic(),
            registered_at=self._clock.wall(),
            replicas=_statuses(msg.replicas),
            connection=conn,
        )
        self._agents[msg.agent_id] = record
        self._changes.notify()
        return record

    def report(
        self,
        agent_id: str,
        replicas: list[types_pb2.ReplicaStatus],
        capacity: types_pb2.Capacity | None = None,
    ) -> None:
        """A report lists every replica the agent runs; it replaces the previous set. A capacity,
        when sent, carries fresh GPU use; placement reads it on its next pass."""
        record = self._agents.get(agent_id)
        if record is None:
            return
        record.last_seen = self._clock.monotonic()
        if capacity is not None:
            record.capacity = capacity_from_proto(capacity)
        new = _statuses(replicas)
        if self.start_failures:
            for status in new.values():
                if status.state is ReplicaState.READY:
                    self.start_failures.pop(status.pool, None)
        if new != record.replicas:
            record.replicas = new
            self._changes.notify()

    def start_failed(self, agent_id: str, replica_id: str, pool: str, error: str) -> None:
        if pool in self.start_failures or len(self.start_failures) < _MAX_FAILURES:
            self.start_failures[pool] = (
                f"agent {agent_id} did not start replica {replica_id}: {error[:_MAX_ERROR]}"
            )

    def touch(self, agent_id: str) -> None:
        record = self._agents.get(agent_id)
        if record is not None:
            record.last_seen = self._clock.monotonic()

    def disconnect(self, agent_id: str, conn: AgentConnection) -> None:
        """Marks the agent disconnected unless a newer stream already replaced conn."""
        record = self._agents.get(agent_id)
        if record is None or record.connection is not conn:
            return
        record.connected = False
        record.connection = None
        self._changes.notify()

    def get(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    def all(self) -> list[AgentRecord]:
        return sorted(self._agents.values(), key=lambda r: r.agent_id)

    def silent_s(self, record: AgentRecord) -> float:
        return max(0.0, self._clock.monotonic() - record.last_seen)

    def lease_valid(self, agent_id: str) -> bool:
        record = self._agents.get(agent_id)
        return record is not None and self.silent_s(record) < self.lease_s

    def routable(self, agent_id: str) -> bool:
        """Whether gateways may send to this agent's replicas: its lease holds and its stream
        is open. A closed stream is certain news (the agent or its host went away), unlike
        silence, so it takes the replicas out of routing at once; replacing them still waits
        for the lease (the agent may come straight back)."""
        record = self._agents.get(agent_id)
        return record is not None and record.connected and self.silent_s(record) < self.lease_s

    def send(self, agent_id: str, command: AgentCommand) -> bool:
        """Queues a command for a connected agent; False when it is not connected."""
        record = self._agents.get(agent_id)
        if record is None or record.connection is None:
            return False
        record.connection.send(command_to_proto(command))
        return True

    def find_replica(self, replica_id: str) -> tuple[str, ReplicaStatus] | None:
        for record in self._agents.values():
            status = record.replicas.get(replica_id)
            if status is not None:
                return record.agent_id, status
        return None

    def close_all(self) -> None:
        for record in self._agents.values():
            if record.connection is not None:
                record.connection.close()


# Bounds on what agents' errors can make the controller keep.
_MAX_FAILURES = 1000
_MAX_ERROR = 500


def _statuses(replicas: Iterable[types_pb2.ReplicaStatus]) -> dict[str, ReplicaStatus]:
    return {r.replica_id: status_from_proto(r) for r in replicas}
