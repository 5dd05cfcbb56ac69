"""response_time, cost, queue_aware and session on fake members with a fake clock."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from gateway.members import Member, idle_member
from gateway.policies import PickContext, Policy, PolicyRegistry
from llmpool.clock import FakeClock


def mk(member_id: str, **fields: Any) -> Member:
    return idle_member(member_id, **fields)


def ctx(
    in_flight: dict[str, int] | None = None, headers: dict[str, str] | None = None, **payload: Any
) -> PickContext:
    return PickContext(model="m", payload=payload, headers=headers or {}, in_flight=in_flight or {})


def build(name: str, clock: FakeClock | None = None, **params: str) -> Policy:
    registry = PolicyRegistry(clock=clock or FakeClock(), rng=random.Random(7))
    return registry.build(name, params)


def test_response_time_explores_unobserved_then_prefers_the_fast_one() -> None:
    clock = FakeClock()
    policy = build("response_time", clock, output_tokens="10")
    members = [mk("fast"), mk("slow")]
    assert {policy.pick(members, ctx()).id, policy.pick(members, ctx()).id} == {"fast", "slow"}
    policy.observe("slow", 0.1, 0.0, 0, True)
    # Only "fast" is unobserved: it is tried first.
    assert policy.pick(members, ctx()).id == "fast"
    policy.observe("fast", 0.1, 0.01, 0, True)
    policy.observe("slow", 0.1, 0.05, 0, True)
    assert [policy.pick(members, ctx()).id for _ in range(5)] == ["fast"] * 5
    # Busy enough on this gateway, the fast one loses: 0.2 s x 5 > 0.6 s x 1.
    assert policy.pick(members, ctx({"fast": 4})).id == "slow"


def test_response_time_counts_failures_as_slow_and_decays_toward_neutral() -> None:
    clock = FakeClock()
    policy = build("response_time", clock, half_life_s="10", error_penalty_s="5")
    members = [mk("a"), mk("b")]
    policy.observe("a", 0.2, 0.0, 0, True)
    policy.observe("b", 0.001, 0.0, 0, False)  # a fast failure is not a fast member
    assert policy.pick(members, ctx()).id == "a"
    stats = policy.stats  # type: ignore[attr-defined]
    before = stats.ttft("b")
    clock.advance(100.0)  # ten half-lives: b is back near the pool's value
    after = stats.ttft("b")
    assert before > 4.0 and after < before / 2


def test_response_time_power_of_two_spreads_over_equal_members() -> None:
    policy = build("response_time")
    members = [mk(f"m{i}") for i in range(8)]
    for m in members:
        policy.observe(m.id, 0.1, 0.01, 0, True)
    picks = {policy.pick(members, ctx()).id for _ in range(200)}
    assert len(picks) >= 6


def test_cost_cheapest_within_latency_bound_else_fastest() -> None:
    clock = FakeClock()
    policy = build("cost", clock, max_latency_ms="500")
    members = [
        mk("cheap-slow", input_cost_per_mtok=0.1, output_cost_per_mtok=0.2, latency_ms=900),
        mk("mid", input_cost_per_mtok=1.0, output_cost_per_mtok=2.0, latency_ms=300),
        mk("dear", input_cost_per_mtok=5.0, output_cost_per_mtok=15.0, latency_ms=100),
    ]
    assert policy.pick(members, ctx()).id == "mid"
    # Observed latency beats the snapshot's: cheap-slow turns out fast.
    policy.observe("cheap-slow", 0.2, 0.0, 0, True)
    assert policy.pick(members, ctx()).id == "cheap-slow"
    # Nobody within the bound: the fastest.
    policy.observe("cheap-slow", 3.0, 0.0, 0, False)
    slow = [
        replace(m, latency_ms=2000) if m.id != "dear" else replace(m, latency_ms=800)
        for m in members
    ]
    assert policy.pick(slow, ctx()).id == "dear"


def test_cost_ties_go_to_least_loaded_then_in_turn() -> None:
    policy = build("cost")
    members = [mk("a"), mk("b"), mk("c", in_flight=2)]
    assert policy.pick(members, ctx({"a": 1})).id == "b"
    picks = [policy.pick(members, ctx()).id for _ in range(4)]
    assert sorted(picks) == ["a", "a", "b", "b"] and picks[0] != picks[1]


def test_queue_aware_weighs_queue_kv_and_running() -> None:
    policy = build("queue_aware")
    members = [
        mk("queued", waiting=4, running=2, kv_usage=0.2),
        mk("full-kv", waiting=0, running=2, kv_usage=0.95),
        mk("ok", waiting=1, running=4, kv_usage=0.3),
    ]
    # queued: 2*1 + 2*.2 + .5 = 2.9; full-kv: 0 + 1.9 + .5 = 2.4; ok: .5 + .6 + 1 = 2.1
    assert policy.pick(members, ctx()).id == "ok"


def pick_and_send(policy: Policy, members: list[Member], own: dict[str, int]) -> str:
    """A pick as the relay makes it: the chosen member's own in-flight count goes up."""
    chosen = policy.pick(members, ctx(in_flight=own)).id
    own[chosen] = own.get(chosen, 0) + 1
    return chosen


def test_queue_aware_counts_its_own_sends_until_the_member_reports_again() -> None:
    policy = build("queue_aware", kv_weight="0", running_weight="0")
    members = [mk("a"), mk("b")]
    policy.on_snapshot(members)
    own: dict[str, int] = {}
    picks = [pick_and_send(policy, members, own) for _ in range(4)]
    assert sorted(picks) == ["a", "a", "b", "b"]
    # The engines now report: a's figures include the 2 sent there, b has 5 waiting.
    fresh = [mk("a", waiting=2), mk("b", waiting=5)]
    policy.on_snapshot(fresh)
    assert [pick_and_send(policy, fresh, own) for _ in range(3)] == ["a", "a", "a"]


def test_queue_aware_spreads_a_burst_while_snapshots_repeat_stale_figures() -> None:
    # Snapshots come on every load change in the pool (another member's report, a gateway's
    # usage), carrying these members' old figures: the burst must not herd onto the member
    # that looked least busy when they were taken.
    policy = build("queue_aware")
    members = [mk("a", kv_usage=0.1)] + [mk(i, kv_usage=0.5) for i in "bcd"]
    own: dict[str, int] = {}
    for _ in range(8):
        policy.on_snapshot(members)
        pick_and_send(policy, members, own)
    assert set(own) == {"a", "b", "c", "d"}
    assert max(own.values()) <= 3


def test_queue_aware_takes_finished_requests_off_stale_figures() -> None:
    policy = build("queue_aware")
    members = [mk("a", running=4), mk("b", running=3)]
    policy.on_snapshot(members)
    # a's 4 running are this gateway's: b looks less busy.
    assert policy.pick(members, ctx(in_flight={"a": 4})).id == "b"
    # a's requests all finished, b got one more; no report yet: a is now the idle one.
    assert policy.pick(members, ctx(in_flight={"a": 0, "b": 1})).id == "a"


def test_session_is_sticky_by_header_or_user() -> None:
    policy = build("session")
    members = [mk(f"m{i}") for i in range(5)]
    policy.on_members(members)
    for key in ("alice", "bob", "carol"):
        by_header = {policy.pick(members, ctx(headers={"x-session-id": key})).id for _ in range(5)}
        by_user = {policy.pick(members, ctx(user=key)).id for _ in range(5)}
        assert len(by_header) == 1 and by_header == by_user
    custom = build("session", header="X-Conversation")
    custom.on_members(members)
    first = custom.pick(members, ctx(headers={"x-conversation": "c1"})).id
    assert all(
        custom.pick(members, ctx(headers={"x-conversation": "c1"})).id == first for _ in range(5)
    )


def test_session_bounded_load_caps_any_member_at_load_factor_times_mean() -> None:
    policy = build("session", load_factor="1.25")
    members = [mk(f"m{i}") for i in range(4)]
    policy.on_members(members)
    in_flight: dict[str, int] = {}
    for _ in range(200):
        # Every request has the same key: plain hashing would send them all to one member.
        chosen = policy.pick(members, ctx(in_flight, user="hot")).id
        in_flight[chosen] = in_flight.get(chosen, 0) + 1
        total = sum(in_flight.values())
        assert max(in_flight.values()) <= -(-1.25 * total // 4) + 1
    assert len(in_flight) == 4


def test_session_moves_only_about_one_nth_of_keys_when_a_member_joins() -> None:
    policy = build("session")
    four = [mk(f"m{i}") for i in range(4)]
    five = [*four, mk("m4")]
    policy.on_members(four)
    keys = [f"user-{i}" for i in range(2000)]
    before = {k: policy.pick(four, ctx(user=k)).id for k in keys}
    policy.on_members(five)
    after = {k: policy.pick(five, ctx(user=k)).id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "m4" for k in moved)
    assert 0.1 < len(moved) / len(keys) < 0.3


def test_session_without_key_goes_to_least_loaded() -> None:
    policy = build("session")
    members = [mk("a", in_flight=3), mk("b"), mk("c", in_flight=1)]
    assert policy.pick(members, ctx()).id == "b"
