"""Attached replicas (engines an agent watches but did not start): the reconciler leaves them
alone, snapshots route to them, and the admin API lists them and refuses to stop them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
import pytest

from agent.convert import status_to_proto
from controller.model import Assignment, BackendSpec, PoolSpec
from controller.reconciler import (
    AdoptReplica,
    AgentView,
    Decision,
    ForgetReplica,
    StartReplica,
    StopReplica,
    decide,
)
from controller.server import ControllerServer
from controller.snapshot import LiveReplica, build_routes, healthy_members
from controller.usage import MemberLoad
from llmpool.capacity import Capacity
from llmpool.status import ReplicaState, ReplicaStatus
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.controller.fake_agent import FakeAgent
from tests.controller.test_reconciler import TEMPLATE, ids, pool, world
from tests.support import eventually, refused

READY = ReplicaState.READY
STARTING = ReplicaState.STARTING
STOPPED = ReplicaState.STOPPED
D = TypeVar("D")


def of(kind: type[D], decisions: list[Decision]) -> list[D]:
    return [d for d in decisions if isinstance(d, kind)]


def attached(
    rid: str = "att-1",
    pool_name: str = "p",
    state: ReplicaState = READY,
    healthy: bool = True,
    message: str = "",
) -> ReplicaStatus:
    return ReplicaStatus(
        replica_id=rid, pool=pool_name, state=state, healthy=healthy,
        url=f"http://10.0.0.5:8000/{rid}", attached=True, engine="vllm", served_model="served",
        running=3, waiting=2, kv_usage=0.25, latency_ms=7.0, message=message,
    )  # fmt: skip


def agent_with(*statuses: ReplicaStatus, slots: int = 4) -> AgentView:
    return AgentView(
        "a",
        True,
        0.0,
        Capacity(cpu_slots=slots),
        engines=("sim",),
        replicas={s.replica_id: s for s in statuses},
    )


# ---- reconciler


def test_attached_replicas_are_neither_adopted_nor_stopped() -> None:
    # One of a pool that wants replicas (would be adopted), one of no pool (would be stopped).
    w = world(
        [pool(1)],
        [
            agent_with(
                attached("att-1"), attached("att-2", "nowhere"), attached("att-3", "p", STARTING)
            )
        ],
    )
    decisions = decide(w, ids())
    assert of(AdoptReplica, decisions) == []
    assert of(StopReplica, decisions) == []
    # Not counted against the pool: its one managed replica is still placed.
    [start] = of(StartReplica, decisions)
    assert start.pool == "p" and start.agent_id == "a"


def test_attached_replicas_take_no_capacity() -> None:
    # One slot on the only agent: the attached engine must not use it up.
    decisions = decide(world([pool(1)], [agent_with(attached(), slots=1)]), ids())
    assert len(of(StartReplica, decisions)) == 1


def test_managed_replicas_are_still_adopted_and_stopped_beside_attached_ones() -> None:
    managed = ReplicaStatus(replica_id="m-1", pool="p", state=READY)
    stray = ReplicaStatus(replica_id="m-2", pool="gone", state=READY)
    decisions = decide(world([pool(1)], [agent_with(attached(), managed, stray)]), ids())
    assert [d.replica_id for d in of(AdoptReplica, decisions)] == ["m-1"]
    assert [d.replica_id for d in of(StopReplica, decisions)] == ["m-2"]


def test_an_assignment_for_an_attached_replica_is_forgotten_not_stopped() -> None:
    w = world([pool(1)], [agent_with(attached())], [Assignment("att-1", "p", "a", True, 900.0)])
    decisions = decide(w, ids())
    assert of(ForgetReplica, decisions) == [ForgetReplica("att-1", "attached")]
    assert of(StopReplica, decisions) == []
    assert len(of(StartReplica, decisions)) == 1


# ---- snapshot

POOLS = {"p": PoolSpec(name="p", replicas=1, template=TEMPLATE)}


def live(status: ReplicaStatus, routable: bool = True) -> LiveReplica:
    return LiveReplica(status, "a", routable, "z1")


def test_attached_members_are_routed_beside_backends_and_managed_replicas() -> None:
    managed = ReplicaStatus(
        replica_id="m-1", pool="p", state=READY, healthy=True, url="http://127.0.0.1:9"
    )
    routes = build_routes(
        POOLS,
        {"b": BackendSpec(id="b", pool="p", url="http://127.0.0.1:1")},
        {"m-1": Assignment("m-1", "p", "a")},
        {"m-1": live(managed), "att-1": live(attached())},
        {"att-1": MemberLoad(in_flight=4, latency_ms=11.0)},
    )
    members = {m.id: m for m in routes["p"].members}
    assert set(members) == {"b", "m-1", "att-1"}
    member = members["att-1"]
    assert member.healthy and not member.draining
    assert member.url == "http://10.0.0.5:8000/att-1" and member.zone == "z1"
    assert member.upstream_model == "served"
    assert (member.running, member.waiting, member.kv_usage) == (3, 2, 0.25)
    assert (member.in_flight, member.latency_ms) == (4, 11.0)
    assert healthy_members(routes["p"]) == 3


def test_attached_member_health_follows_its_status() -> None:
    for status in (attached(healthy=False), attached(state=STARTING, healthy=False)):
        routes = build_routes(POOLS, {}, {}, {"att-1": live(status)}, {})
        [member] = routes["p"].members
        assert not member.healthy
        assert healthy_members(routes["p"]) == 0


def test_attached_members_go_with_their_agent_pool_or_stop() -> None:
    cases = {
        "lease expired": {"att-1": live(attached(), routable=False)},
        "no such pool": {"att-1": live(attached(pool_name="nowhere"))},
        "stopped": {"att-1": live(attached(state=STOPPED, healthy=False))},
    }
    for why, replicas in cases.items():
        routes = build_routes(POOLS, {}, {}, replicas, {})
        assert set(routes) == {"p"}, why
        assert list(routes["p"].members) == [], why


# ---- admin API, over the real controller with a fake agent


@pytest.fixture()
async def watcher(controller: ControllerServer) -> AsyncIterator[FakeAgent]:
    agent = FakeAgent(f"127.0.0.1:{controller.port}", agent_id="watcher")
    await agent.connect(
        [status_to_proto(attached("att-1", "chat")), status_to_proto(attached("att-2", "nowhere"))]
    )
    try:
        yield agent
    finally:
        await agent.close()


async def test_admin_lists_attached_replicas_counts_them_and_never_stops_them(
    controller: ControllerServer,
    admin: admin_pb2_grpc.AdminServiceAsyncStub,
    watcher: FakeAgent,
) -> None:
    await admin.CreatePool(admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="chat")))

    async def listed() -> list[admin_pb2.ReplicaInfo]:
        return list((await admin.ListReplicas(admin_pb2.ListReplicasRequest())).replicas)

    replicas = await eventually(listed, what="attached replicas listed")
    by_id = {r.status.replica_id: r for r in replicas}
    assert set(by_id) == {"att-1", "att-2"}
    assert all(r.agent_id == "watcher" and r.status.attached and not r.desired for r in replicas)
    assert by_id["att-1"].status.message == ""
    assert by_id["att-2"].status.message.startswith("pool 'nowhere' does not exist")

    async def ready_members() -> int:
        status = await admin.GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="chat"))
        return status.healthy_members

    assert await eventually(ready_members, what="attached replica counted as a ready member")
    status = await admin.GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="chat"))
    assert [r.status.replica_id for r in status.replicas] == ["att-1"]
    assert status.healthy_members == 1 and status.message == ""

    agents = (await admin.ListAgents(admin_pb2.ListAgentsRequest())).agents
    assert [(a.agent_id, a.replicas) for a in agents] == [("watcher", 2)]

    # Reconcile passes decide nothing about them, and no command reaches the agent.
    assert await controller.parts.reconciler.run_once() == []
    assert watcher.of("stop") == [] and watcher.of("start") == []

    err = await refused(admin.DrainBackend(admin_pb2.DrainBackendRequest(id="att-1")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is attached: agent 'watcher' watches it" in (err.details() or "")
    err = await refused(_drain_tail(admin, "att-1"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no logs here" in (err.details() or "")
    assert watcher.of("tail_logs") == []


async def test_attached_replicas_leave_routing_when_their_agent_goes_quiet(
    controller: ControllerServer, admin: admin_pb2_grpc.AdminServiceAsyncStub
) -> None:
    await admin.CreatePool(admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="chat")))
    agent = FakeAgent(f"127.0.0.1:{controller.port}", agent_id="watcher")
    await agent.connect([status_to_proto(attached("att-1", "chat"))])
    try:
        await eventually(
            lambda: healthy_members(controller.parts.publisher.routes.get("chat")) == 1,
            what="attached member routed",
        )
        # The agent's last report drops it (as an agent does when it stops watching).
        agent.report([])
        await eventually(
            lambda: list(controller.parts.publisher.routes["chat"].members) == [],
            what="attached member gone",
        )
        agent.report([status_to_proto(attached("att-1", "chat"))])
        await eventually(
            lambda: healthy_members(controller.parts.publisher.routes.get("chat")) == 1,
            what="attached member back",
        )
    finally:
        await agent.close()
    # Silent past its lease (1 s here): out of routing, like its own replicas.
    await eventually(
        lambda: list(controller.parts.publisher.routes["chat"].members) == [],
        within=5,
        what="attached member dropped after the lease",
    )


async def _drain_tail(admin: admin_pb2_grpc.AdminServiceAsyncStub, rid: str) -> list[str]:
    stream = admin.TailLogs(admin_pb2.TailLogsRequest(replica_id=rid, lines=5))
    return [line.line async for line in stream]
