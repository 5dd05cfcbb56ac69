"""Admin reads with 1,000 agents of 8 attached replicas each: linear, and no lease expires
while they run (they once took 15 s, quadratic in agents, holding the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from controller.agents import AgentConnection
from controller.metrics import ControllerMetrics
from controller.model import PoolSpec
from controller.parts import build_parts
from controller.server import ControllerServer
from controller.store import Store
from llmpool.clock import FakeClock
from llmpool.v1 import agent_pb2, types_pb2
from tests.support import eventually, no_task_leaks

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


async def test_a_burst_of_changes_is_one_reconcile_pass_per_gap(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await Store.open(tmp_path / "data")
    try:
        parts = await build_parts(
            store=store,
            seed=None,
            clock=clock,
            metrics=ControllerMetrics(),
            lease_s=5.0,
            report_interval_s=1.0,
            drain_s=1.0,
            extra_policies=(),
        )
        loop = parts.reconciler
        passes: list[float] = []

        async def counted() -> list[Any]:
            passes.append(clock.monotonic())
            return []

        loop.run_once = counted  # type: ignore[method-assign]
        task = asyncio.create_task(loop.run())
        try:
            for _ in range(100):
                parts.changes.notify()
                await asyncio.sleep(0)
            await eventually(lambda: len(passes) == 1, what="the first pass")
            for _ in range(100):
                parts.changes.notify()
                await asyncio.sleep(0)
            # The rest of the burst waits for the gap on the (fake) clock, then is one pass.
            await eventually(lambda: clock.sleepers == 1, what="waiting out the gap")
            assert len(passes) == 1
            clock.advance(0.05)
            await eventually(lambda: len(passes) == 2, what="one pass for the burst")
            await asyncio.sleep(0)
            assert len(passes) == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await store.close()
