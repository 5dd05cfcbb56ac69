"""Caches and prefill speeds gateways learned their members have: the controller keeps each
gateway's latest and hands every gateway the lower median cache and the median speed."""

from __future__ import annotations

from controller.metrics import ControllerMetrics
from controller.model import BackendSpec, PoolSpec
from controller.snapshot import LiveReplica, build_routes
from controller.usage import LEARNED_TTL_S, UsageAggregator
from llmpool.clock import FakeClock
from llmpool.status import ReplicaState, ReplicaStatus
from llmpool.v1 import gateway_pb2


def report(gateway: str, speed: float = 0.0, **learned: int) -> gateway_pb2.UsageReport:
    members = [
        gateway_pb2.MemberUsage(
            member_id=m, model="p", learned_cache_tokens=n, learned_prefill_s_per_token=speed
        )
        for m, n in learned.items()
    ]
    return gateway_pb2.UsageReport(gateway_id=gateway, members=members)


def learned(usage: UsageAggregator) -> dict[str, int]:
    return {m: load.learned_cache_tokens for m, load in usage.loads().items()}


def test_every_gateway_gets_the_lower_median_of_the_caches_gateways_learned() -> None:
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    usage.record(report("g1", a=65536, b=8192))
    usage.record(report("g2", a=16384))
    usage.record(report("g3", b=0))  # g3 learned nothing of b
    assert learned(usage) == {"a": 16384, "b": 8192}
    # g2 restarted (or a began to report): it learned nothing now, and its word goes.
    usage.record(report("g2", a=0))
    assert learned(usage)["a"] == 65536
    # Absurd sizes are not believed.
    usage.record(report("g3", a=1 << 40))
    assert learned(usage)["a"] == 65536
    # With three saying, one gateway's low bound (a busy host's) does not carry the others.
    usage.record(report("g2", a=65536))
    usage.record(report("g3", a=2048))
    assert learned(usage)["a"] == 65536
    usage.record(report("g4", a=4096))
    assert learned(usage)["a"] == 4096


def test_every_gateway_gets_the_median_speed_gateways_learned() -> None:
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    usage.record(report("g1", 20e-6, a=0))
    usage.record(report("g2", 30e-6, a=0))
    usage.record(report("g3", 1e6, a=0))  # not believed
    usage.record(report("g4", float("nan"), a=0))
    assert usage.loads()["a"].learned_prefill_s_per_token == 25e-6
    usage.record(report("g5", 90e-6, a=0))
    assert usage.loads()["a"].learned_prefill_s_per_token == 30e-6
    clock.advance(LEARNED_TTL_S + 1)
    assert "a" not in usage.loads()


def test_learned_caches_outlive_load_reports_but_not_forever() -> None:
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    usage.record(report("g1", a=8192))
    # Long after in-flight counts expire (a gateway names a member only while it sends it
    # requests), what it learned stands.
    clock.advance(60.0)
    assert learned(usage) == {"a": 8192}
    clock.advance(LEARNED_TTL_S)
    assert learned(usage) == {}


def test_snapshots_carry_it_on_every_member() -> None:
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    usage.record(report("g1", 40e-6, static=8192, r1=4096, r2=4096))
    pools = {"p": PoolSpec(name="p", policy="prefix_aware")}
    backends = {"static": BackendSpec(id="static", pool="p", url="http://127.0.0.1:1")}
    live = {
        rid: LiveReplica(
            ReplicaStatus(
                replica_id=rid, pool="p", state=ReplicaState.READY, url=f"http://127.0.0.1:9/{rid}",
                healthy=True, attached=True, cache_tokens=cache,
            ),
            "agent",
            True,
        )
        for rid, cache in (("r1", 0), ("r2", 32768))
    }  # fmt: skip
    routes = build_routes(pools, backends, {}, live, usage.loads())
    members = {m.id: m for m in routes["p"].members}
    assert members["static"].learned_cache_tokens == 8192
    assert members["r1"].learned_cache_tokens == 4096
    # One that reports its cache gets both: gateways bound it by what they learned, but not
    # far below its report (cache_estimate.REPORTED_FLOOR).
    assert members["r2"].cache_tokens == 32768 and members["r2"].learned_cache_tokens == 4096
    # The speed is the engines', whatever they report of their caches.
    assert all(m.learned_prefill_s_per_token == 40e-6 for m in members.values())
