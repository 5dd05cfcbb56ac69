"""The pure snapshot builder and diff, and the publisher's fan-out to fast and slow subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from controller.convert import specs_from_config
from controller.grpc_gateway import GatewayServicer
from controller.metrics import ControllerMetrics
from controller.model import Assignment, BackendSpec, PoolSpec, Template
from controller.publisher import SnapshotPublisher
from controller.snapshot import LiveReplica, Routes, build_routes, diff_routes, healthy_members
from controller.usage import MemberLoad, UsageAggregator
from gateway.policies import PrefixAware
from gateway.routing import RoutingTable
from llmpool.clock import FakeClock
from llmpool.config import parse_config
from llmpool.protoconv import to_proto
from llmpool.status import ReplicaState, ReplicaStatus
from llmpool.v1 import gateway_pb2

POOLS = {
    "p": PoolSpec(
        name="p", policy="least_in_flight", replicas=2, template=Template(served_model="m")
    ),
    "empty": PoolSpec(name="empty"),
}
BACKENDS = {
    "b-on": BackendSpec(id="b-on", pool="p", url="http://127.0.0.1:1", weight=2),
    "b-off": BackendSpec(id="b-off", pool="p", url="http://127.0.0.1:2", enabled=False),
    "b-drain": BackendSpec(id="b-drain", pool="p", url="http://127.0.0.1:3", draining=True),
}


def status(
    rid: str, state: ReplicaState = ReplicaState.READY, healthy: bool = True
) -> ReplicaStatus:
    return ReplicaStatus(
        replica_id=rid, pool="p", state=state, url=f"http://127.0.0.1:9/{rid}", healthy=healthy,
        running=2, waiting=1, kv_usage=0.5,
    )  # fmt: skip


def test_builder_members_health_and_load() -> None:
    assignments = {
        "r-ok": Assignment("r-ok", "p", "a"),
        "r-expired": Assignment("r-expired", "p", "b"),
        "r-starting": Assignment("r-starting", "p", "a"),
        "r-draining": Assignment("r-draining", "p", "a", desired=False),
        "r-unreported": Assignment("r-unreported", "p", "a"),
    }
    live = {
        "r-ok": LiveReplica(status("r-ok"), "a", True, "z1"),
        "r-expired": LiveReplica(status("r-expired"), "b", False),
        "r-starting": LiveReplica(status("r-starting", ReplicaState.STARTING, False), "a", True),
        "r-draining": LiveReplica(status("r-draining"), "a", True),
    }
    loads = {"r-ok": MemberLoad(in_flight=5, latency_ms=12.0), "b-on": MemberLoad(in_flight=1)}
    routes = build_routes(POOLS, BACKENDS, assignments, live, loads)

    assert set(routes) == {"p", "empty"}
    assert list(routes["empty"].members) == []
    route = routes["p"]
    assert route.policy == "least_in_flight"
    members = {m.id: m for m in route.members}
    assert set(members) == {"b-on", "b-drain", "r-ok", "r-expired", "r-starting", "r-draining"}
    assert (
        members["b-on"].healthy and members["b-on"].weight == 2 and members["b-on"].in_flight == 1
    )
    assert not members["b-drain"].healthy and members["b-drain"].draining
    ok = members["r-ok"]
    assert ok.healthy and ok.upstream_model == "m" and ok.zone == "z1"
    assert (ok.running, ok.waiting, ok.kv_usage, ok.in_flight, ok.latency_ms) == (
        2,
        1,
        0.5,
        5,
        12.0,
    )
    assert not members["r-expired"].healthy
    assert not members["r-starting"].healthy
    assert members["r-draining"].draining and not members["r-draining"].healthy
    assert healthy_members(route) == 2


def test_diff_reports_changed_and_removed_models_only() -> None:
    old = build_routes(POOLS, BACKENDS, {}, {}, {})
    pools = {"p": POOLS["p"], "new": PoolSpec(name="new")}
    backends = dict(BACKENDS, extra=BackendSpec(id="extra", pool="p", url="http://127.0.0.1:4"))
    new = build_routes(pools, backends, {}, {}, {})
    changed, removed = diff_routes(old, new)
    assert [r.model for r in changed] == ["new", "p"]
    assert removed == ["empty"]
    assert diff_routes(new, new) == ([], [])


class _Table:
    def __init__(self) -> None:
        self.routes: Routes = {}

    def build(self) -> Routes:
        return dict(self.routes)


async def test_publisher_full_first_then_deltas_and_slow_subscriber_collapses() -> None:
    table = _Table()
    changed = asyncio.Event()
    publisher = SnapshotPublisher(
        table.build, changed, FakeClock(), ControllerMetrics(), max_pending=3
    )
    fast = publisher.subscribe("fast")
    slow = publisher.subscribe("slow")
    first = await fast.next_batch()
    assert first is not None and len(first) == 1 and first[0].full
    base = first[0].version

    for i in range(10):
        table.routes = build_routes({f"m{i}": PoolSpec(name=f"m{i}")}, {}, {}, {}, {})
        assert publisher.publish()
        batch = await fast.next_batch()
        assert batch is not None and [s.version for s in batch] == [base + i + 1]
        assert not batch[0].full and [r.model for r in batch[0].routes] == [f"m{i}"]
    assert not publisher.publish()  # nothing changed: no new version

    pending = await slow.next_batch()
    assert pending is not None
    # The slow one never blocked the publisher; what piled up ends in one full snapshot.
    # The slow one never blocked the publisher: what piled up collapsed into a full snapshot,
    # possibly followed by newer deltas, ending at the latest version.
    assert pending[0].full and len(pending) <= 3
    assert pending[-1].version == base + 10
    assert [s.version for s in pending] == sorted(s.version for s in pending)
    assert [r.model for r in pending[-1].routes] == ["m9"]
    assert slow.overflows >= 1


async def test_publisher_run_pushes_change_quickly() -> None:
    table = _Table()
    changed = asyncio.Event()
    publisher = SnapshotPublisher(table.build, changed, FakeClock(), ControllerMetrics())
    sub = publisher.subscribe("g")
    await sub.next_batch()
    task = asyncio.create_task(publisher.run())
    try:
        table.routes = build_routes({"x": PoolSpec(name="x")}, {}, {}, {}, {})
        changed.set()
        batch = await asyncio.wait_for(sub.next_batch(), 1.0)
        assert batch is not None and [r.model for r in batch[0].routes] == ["x"]
    finally:
        task.cancel()
        publisher.close()
    assert await sub.next_batch() is None


def test_members_carry_prices_labels_and_prefix_hit_rate_from_config() -> None:
    config = parse_config(
        """
pools:
  - name: p
    replicas: 1
    template: {engine: sim, cpu_slots: 0, input_cost_per_mtok: 0.02, output_cost_per_mtok: 0.1}
    backends:
      - {id: remote, url: "http://api.example", labels: {tier: paid},
         input_cost_per_mtok: 0.15, output_cost_per_mtok: 0.6}
"""
    )
    pools, backends = specs_from_config(config)
    live = ReplicaStatus(
        replica_id="r1", pool="p", state=ReplicaState.READY, url="http://h:2",
        healthy=True, prefix_cache_hit_rate=0.75,
    )  # fmt: skip
    routes = build_routes(
        {p.name: p for p in pools},
        {b.id: b for b in backends},
        {"r1": Assignment("r1", "p", "a")},
        {"r1": LiveReplica(live, "a", True)},
        {},
    )
    members = {m.id: m for m in routes["p"].members}
    remote, replica = members["remote"], members["r1"]
    assert (remote.input_cost_per_mtok, remote.output_cost_per_mtok) == (0.15, 0.6)
    assert dict(remote.labels) == {"tier": "paid"}
    assert remote.prefix_cache_hit_rate == -1.0  # a static backend does not say
    assert (replica.input_cost_per_mtok, replica.output_cost_per_mtok) == (0.02, 0.1)
    assert replica.prefix_cache_hit_rate == 0.75


def test_gateways_conditions_are_kept_per_gateway_and_expire() -> None:
    from controller.usage import MemberCondition, UsageAggregator, UsageReport

    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    ejected = MemberCondition("r1", "ejected", 4.0, 1)
    usage.record(UsageReport("g1", conditions=(ejected,)))
    usage.record(UsageReport("g2", conditions=(MemberCondition("other", "cooling", 2.0),)))
    assert [(c.member_id, c.gateway_id) for c in usage.conditions({"r1"})] == [("r1", "g1")]
    usage.record(UsageReport("g1"))  # g1 lets it back in: its next report lists none
    assert usage.conditions({"r1", "other"}) == [MemberCondition("other", "cooling", 2.0, 0, "g2")]
    clock.advance(6.0)  # g2 went quiet
    assert usage.conditions({"other"}) == []


async def test_a_gateways_usage_report_rebuilds_the_snapshot_without_waiting_for_refresh() -> None:
    """With static backends no agent reports to set the change event: a gateway's usage (in
    flight, prefixes sent or found missing) reached the others only at the next refresh, a
    second later (four simulated seconds in the routing benchmark)."""
    changed = asyncio.Event()
    clock = FakeClock()
    publisher = SnapshotPublisher(_Table().build, changed, clock, ControllerMetrics())
    servicer = GatewayServicer(publisher, UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0))

    async def reports() -> AsyncIterator[gateway_pb2.UsageReport]:
        yield gateway_pb2.UsageReport(
            gateway_id="g",
            members=[gateway_pb2.MemberUsage(member_id="b1", model="p", in_flight=2)],
        )

    assert not changed.is_set()
    await servicer.ReportUsage(reports(), None)  # type: ignore[arg-type]
    assert changed.is_set()


async def test_routes_tell_gateways_how_many_watch_them() -> None:
    """prefix_aware places new prefixes one way for a gateway alone, another with others."""
    pools = {"m": PoolSpec(name="m", policy="prefix_aware")}

    def build() -> Routes:
        return build_routes(pools, {}, {}, {}, {}, publisher.gateways())

    changed = asyncio.Event()
    publisher = SnapshotPublisher(build, changed, FakeClock(), ControllerMetrics())
    publisher.publish()
    assert publisher.routes["m"].gateways == 0
    publisher.subscribe("gw-1")
    assert changed.is_set()  # A new watcher rebuilds the routes.
    publisher.publish()
    assert publisher.routes["m"].gateways == 1
    second = publisher.subscribe("gw-2")
    publisher.subscribe("gw-2")  # Reconnecting before its old stream ended: still one.
    assert publisher.publish() and publisher.routes["m"].gateways == 2

    table = RoutingTable()
    table.apply(to_proto(publisher.full_snapshot(), gateway_pb2.RoutingSnapshot))
    route = table.get("m")
    assert route is not None and isinstance(route.policy, PrefixAware)
    assert route.policy.gateways == 2
    publisher.unsubscribe(second)
    publisher.publish()
    assert publisher.routes["m"].gateways == 2  # gw-2's other stream still watches.
