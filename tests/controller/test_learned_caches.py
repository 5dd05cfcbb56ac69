"""Caches and prefill speeds gateways learned their members have: the controller keeps each
gateway's latest and hands every gateway the lower median cache and the median speed."""

from __future__ import annotations

from controller.metrics import ControllerMetrics
from controller.model import BackendSpec, PoolSpec
from controller.snapshot import LiveReplica, build_routes
from controller.usage import LEARNED_TTL_S, MISSED_TTL_S, SENT_TTL_S, UsageAggregator
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


def test_prefixes_a_gateway_found_missing_go_to_every_gateway_for_a_minute() -> None:
    """One gateway found a member no longer held a prompt prefix: every gateway is told (on the
    member, in every snapshot) for MISSED_TTL_S, so each forgets it there and places it
    elsewhere alike instead of finding the miss again; bounded per report and per member."""
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)

    def missed(gateway: str, member: str, *keys: int) -> gateway_pb2.UsageReport:
        line = gateway_pb2.MemberUsage(member_id=member, model="p", missed_prefixes=keys)
        return gateway_pb2.UsageReport(gateway_id=gateway, members=[line])

    usage.record(missed("g1", "static", 11, 12))
    clock.advance(20.0)
    usage.record(missed("g2", "static", 13, 11))  # 11 again: now the latest
    usage.record(missed("g2", "other", (1 << 64) - 1))
    loads = usage.loads()
    assert loads["static"].missed_prefixes == (12, 13, 11)
    assert loads["other"].missed_prefixes == ((1 << 64) - 1,)
    pools = {"p": PoolSpec(name="p", policy="prefix_aware")}
    backends = {"static": BackendSpec(id="static", pool="p", url="http://127.0.0.1:1")}
    routes = build_routes(pools, backends, {}, {}, loads)
    assert routes["p"].members[0].missed_prefixes == (12, 13, 11)
    # A minute after a gateway last said so, a prefix is dropped; a member with none left too.
    clock.advance(MISSED_TTL_S - 10.0)
    assert usage.loads()["static"].missed_prefixes == (13, 11)
    clock.advance(30.0)
    assert "static" not in usage.loads() and "other" not in usage.loads()
    # At most 64 taken from one line of a report, 256 kept for a member.
    for n in range(10):
        usage.record(missed("g1", "static", *range(n * 100, n * 100 + 100)))
    kept = usage.loads()["static"].missed_prefixes
    assert len(kept) == 256 and kept[-1] == 963 and 0 not in kept and 64 not in kept


def test_prefixes_gateways_sent_a_member_go_to_every_gateway_for_half_a_minute() -> None:
    """What each gateway sent a member (prefix, prompt tokens): every gateway is told the union
    on the member, with how many gateways sent each, for SENT_TTL_S after each gateway said so,
    the latest size per prefix; a line pairing them wrongly loses only the unpaired or absurd
    ones; bounded per report and per member."""
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)

    def sent(gateway: str, member: str, pairs: dict[int, int]) -> gateway_pb2.UsageReport:
        line = gateway_pb2.MemberUsage(
            member_id=member,
            model="p",
            sent_prefixes=list(pairs),
            sent_prefix_tokens=list(pairs.values()),
        )
        return gateway_pb2.UsageReport(gateway_id=gateway, members=[line])

    usage.record(sent("g1", "static", {11: 6000, 12: 3000}))
    clock.advance(10.0)
    usage.record(sent("g2", "static", {13: 6100, 11: 6200}))  # 11 again: the latest size
    loads = usage.loads()
    assert loads["static"].sent_prefixes == (12, 13, 11)
    assert loads["static"].sent_prefix_tokens == (3000, 6100, 6200)
    assert loads["static"].sent_prefix_senders == (1, 1, 2)
    pools = {"p": PoolSpec(name="p", policy="prefix_aware")}
    backends = {"static": BackendSpec(id="static", pool="p", url="http://127.0.0.1:1")}
    member = build_routes(pools, backends, {}, {}, loads)["p"].members[0]
    assert (member.sent_prefixes, member.sent_prefix_tokens) == ((12, 13, 11), (3000, 6100, 6200))
    assert member.sent_prefix_senders == (1, 1, 2)
    clock.advance(SENT_TTL_S - 5.0)
    # g1's word on 11 and 12 is past: 11 is g2's alone.
    assert usage.loads()["static"].sent_prefixes == (13, 11)
    assert usage.loads()["static"].sent_prefix_senders == (1, 1)
    clock.advance(10.0)
    assert "static" not in usage.loads()
    # A line with fewer sizes than prefixes, or a size past any engine's: those not taken.
    line = gateway_pb2.MemberUsage(
        member_id="m", model="p", sent_prefixes=[1, 2, 3], sent_prefix_tokens=[100, 1 << 30]
    )
    usage.record(gateway_pb2.UsageReport(gateway_id="g3", members=[line]))
    assert usage.loads()["m"].sent_prefixes == (1,)
    # At most 64 taken from one line of a report, 256 kept for a member.
    for n in range(10):
        usage.record(sent("g1", "big", {k: 10 for k in range(n * 100, n * 100 + 100)}))
    kept = usage.loads()["big"].sent_prefixes
    assert len(kept) == 256 and kept[-1] == 963 and 0 not in kept and 64 not in kept
    # A gateway found 963 missing there (after sending it, in the same report or before):
    # no gateway is told it is held there any more; a send after that tells again.
    line = gateway_pb2.MemberUsage(
        member_id="big",
        model="p",
        sent_prefixes=[5],
        sent_prefix_tokens=[10],
        missed_prefixes=[963, 5],
    )
    usage.record(gateway_pb2.UsageReport(gateway_id="g2", members=[line]))
    kept = usage.loads()["big"].sent_prefixes
    assert 963 not in kept and 5 not in kept and 962 in kept
    usage.record(sent("g3", "big", {963: 10}))
    assert usage.loads()["big"].sent_prefixes[-1] == 963
    # The pool's policy changed: forgotten with what gateways learned there.
    usage.forget_learned({"big"})
    assert usage.loads()["big"].sent_prefixes == ()


def verdicts(gateway: str, member: str, *points: tuple[int, bool]) -> gateway_pb2.UsageReport:
    line = gateway_pb2.MemberUsage(
        member_id=member,
        model="p",
        verdict_reach_tokens=[reach for reach, _ in points],
        verdict_hits=[hit for _, hit in points],
    )
    return gateway_pb2.UsageReport(gateway_id=gateway, members=[line])


def test_every_gateways_verdicts_together_bound_a_cache_none_bounds_alone() -> None:
    """Three gateways each saw a member hit shallow and miss deep, too few times to bound its
    cache alone (it takes three misses past a depth); together they bound it at the middle of
    the gap, below what any gateway learned, for a while. Lines that pair depths and verdicts
    wrongly are taken no further than their pairs; depths past any engine's not at all."""
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    usage.record(verdicts("g1", "a", (6000, True), (12000, False)))
    usage.record(verdicts("g2", "a", (5000, True), (13000, False)))
    assert learned(usage).get("a", 0) == 0
    usage.record(report("g3", a=65536))
    usage.record(verdicts("g3", "a", (6500, True), (14000, False)))
    assert learned(usage)["a"] == (6500 + 12000) // 2
    # A broken line: a depth with no verdict, and one past any engine's.
    line = gateway_pb2.MemberUsage(
        member_id="b", model="p", verdict_reach_tokens=[9000, 1 << 30], verdict_hits=[False]
    )
    usage.record(gateway_pb2.UsageReport(gateway_id="g1", members=[line]))
    usage.record(verdicts("g2", "b", (1 << 30, False), (1 << 30, False)))
    assert learned(usage).get("b", 0) == 0
    clock.advance(LEARNED_TTL_S + 1)
    usage.record(verdicts("g1", "c", (100, True)))
    assert "a" not in learned(usage)
    # A policy change drops them with what gateways learned.
    for gateway in ("g1", "g2", "g3"):
        usage.record(verdicts(gateway, "a", (6000, True), (12000, False)))
    assert learned(usage)["a"] == 9000
    usage.forget_learned({"a"})
    assert learned(usage).get("a", 0) == 0
