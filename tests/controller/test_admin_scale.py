"""Admin reads with 1,000 agents of 8 attached replicas each: linear, and no lease expires
while they run (they once took 15 s, quadratic in agents, holding the event loop)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from controller.agents import AgentConnection
from controller.model import PoolSpec
from controller.server import ControllerServer
from llmpool.v1 import agent_pb2, types_pb2
from tests.support import no_task_leaks

from .conftest import make_settings

AGENTS = 1000
PER_AGENT = 8


async def test_every_admin_read_with_a_thousand_agents_keeps_every_lease(tmp_path: Path) -> None:
    async with no_task_leaks("controller."):
        settings = dataclasses.replace(make_settings(tmp_path / "data"), lease_s=5.0)
        server = ControllerServer(settings)
        await server.start()
        try:
            parts = server.parts
            await parts.admin.create_pool(PoolSpec(name="p"))
            for i in range(AGENTS):
                replicas = [
                    types_pb2.ReplicaStatus(
                        replica_id=f"a{i}-r{j}",
                        pool="p",
                        state=types_pb2.REPLICA_STATE_READY,
                        healthy=True,
                        attached=True,
                        url=f"http://10.0.{i // 250}.{i % 250}:{8000 + j}",
                    )
                    for j in range(PER_AGENT)
                ]
                parts.registry.register(
                    agent_pb2.Register(agent_id=f"agent-{i}", hostname=f"h{i}", replicas=replicas),
                    AgentConnection(f"agent-{i}"),
                )
            admin = parts.admin
            agents = admin.list_agents()
            assert len(agents) == AGENTS and all(a.replicas == PER_AGENT for a in agents)
            assert len(admin.list_replicas()) == AGENTS * PER_AGENT
            assert len(admin.list_replicas("p")) == AGENTS * PER_AGENT
            status = admin.pool_status("p")
            assert len(status.replicas) == AGENTS * PER_AGENT
            assert [p.name for p in admin.list_pools()] == ["p"]
            assert admin.list_backends() == []
            # Every agent registered before the reads is still within its lease after them.
            assert all(parts.registry.lease_valid(f"agent-{i}") for i in range(AGENTS))
        finally:
            await server.stop()
