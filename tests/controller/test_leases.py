"""Agent leases and usage expiry on a fake clock: no sleeping."""

from __future__ import annotations

from controller.agents import AgentConnection, AgentRegistry
from controller.changes import Changes
from controller.commands import CancelTailCommand, StopCommand
from controller.metrics import ControllerMetrics
from controller.usage import MemberUsage, UsageAggregator, UsageReport
from llmpool.clock import FakeClock
from llmpool.v1 import agent_pb2, types_pb2


def register(registry: AgentRegistry, agent_id: str = "a") -> AgentConnection:
    conn = AgentConnection(agent_id)
    msg = agent_pb2.Register(
        agent_id=agent_id,
        hostname="h",
        capacity=types_pb2.Capacity(cpu_slots=2),
        replicas=[types_pb2.ReplicaStatus(replica_id="r1", pool="p")],
    )
    registry.register(msg, conn)
    return conn


def test_lease_expires_after_silence_and_renews_on_report() -> None:
    clock = FakeClock()
    changes = Changes()
    seen = changes.listener()
    registry = AgentRegistry(clock, lease_s=5, lost_after_s=15, changes=changes)
    register(registry)
    assert seen.is_set()
    assert registry.lease_valid("a")
    clock.advance(4.9)
    assert registry.lease_valid("a")
    clock.advance(0.2)
    assert not registry.lease_valid("a")
    seen.clear()
    registry.report("a", [types_pb2.ReplicaStatus(replica_id="r2", pool="p")])
    assert registry.lease_valid("a") and seen.is_set()
    record = registry.get("a")
    assert record is not None and set(record.replicas) == {"r2"}
    assert registry.find_replica("r2") == ("a", record.replicas["r2"])
    assert not registry.lease_valid("nobody")


def test_disconnect_only_by_current_stream_and_send() -> None:
    registry = AgentRegistry(FakeClock(), 5, 15, Changes())
    old = register(registry)
    new = register(registry)
    assert old.outbox.get_nowait() is None  # the replaced stream is told to end
    registry.disconnect("a", old)
    record = registry.get("a")
    assert record is not None and record.connected
    assert registry.send("a", CancelTailCommand("t1"))
    assert new.outbox.qsize() == 1
    # The registry is the edge: the command leaves as the agent protocol's message.
    sent = new.outbox.get_nowait()
    assert sent == agent_pb2.ControllerMessage(cancel_tail=agent_pb2.CancelTail(request_id="t1"))
    registry.disconnect("a", new)
    assert not record.connected
    assert not registry.send("a", StopCommand("r1", 0.0))


def test_usage_in_flight_summed_across_gateways_and_expires() -> None:
    clock = FakeClock()
    metrics = ControllerMetrics()
    usage = UsageAggregator(clock, metrics, ttl_s=3)
    for gw, n in (("g1", 2), ("g2", 3)):
        usage.record(
            UsageReport(
                gateway_id=gw,
                members=(MemberUsage(member_id="m", model="p", in_flight=n, requests=4),),
            )
        )
    assert usage.loads()["m"].in_flight == 5
    assert (
        metrics.registry.get_sample_value("llmpool_controller_requests_total", {"model": "p"}) == 8
    )
    clock.advance(2)
    usage.record(UsageReport(gateway_id="g1", members=(MemberUsage(member_id="m", in_flight=1),)))
    clock.advance(2)
    # g2's report is now 4 s old (> ttl 3 s): only g1's latest counts.
    assert usage.loads()["m"].in_flight == 1


def test_a_report_with_capacity_refreshes_gpu_use_and_one_without_keeps_it() -> None:
    registry = AgentRegistry(FakeClock(), 5, 15, Changes())
    register(registry)
    fresh = types_pb2.Capacity(
        gpus=1, cpu_slots=2, gpu_indices=[3], gpu_memory_bytes=[100], gpu_memory_used_bytes=[60]
    )
    registry.report("a", [], fresh)
    record = registry.get("a")
    assert record is not None and list(record.capacity.gpu_memory_used_bytes) == [60]
    registry.report("a", [])
    assert list(record.capacity.gpu_indices) == [3]
