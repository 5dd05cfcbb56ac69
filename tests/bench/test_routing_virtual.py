"""The virtual-time routing run: deterministic, and its engines' latency follows their caches
(a router that keeps groups apart beats one that scatters them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from bench.routing.virtual import ORACLE, Setup, VirtualRun, main, percentile
from bench.routing.workloads import WorkloadShape, build
from gateway.members import Member
from gateway.policies import PickContext, PrefixAware
from gateway.policies.homes import overloaded

SHAPE = WorkloadShape(groups=4, system_tokens=3000)


def p99(setup: Setup, policy: str, seed: int = 5) -> float:
    requests = build("shared_prefix", seed, 8.0, 120, SHAPE)
    return percentile(VirtualRun(setup, policy, requests).run(), 99)


def test_runs_are_deterministic_and_every_request_is_answered() -> None:
    setup = Setup(kv_blocks=(512, 512), gateways=2)
    requests = build("shared_prefix", 5, 8.0, 120, SHAPE)
    first = VirtualRun(setup, "prefix_aware", requests)
    assert len(first.run()) == len(requests)
    second = VirtualRun(setup, "prefix_aware", requests)
    second.run()
    assert first.trace == second.trace
    assert {g for _, _, g, _, _, _ in first.trace} == {0, 1}


def test_host_time_adds_to_every_answer_both_ways_and_runs_stay_deterministic() -> None:
    requests = build("shared_prefix", 5, 8.0, 120, SHAPE)
    bare = VirtualRun(Setup(kv_blocks=(512, 512)), ORACLE, requests).run()
    hosted = Setup(kv_blocks=(512, 512), host_ms=30.0)
    first = VirtualRun(hosted, ORACLE, requests)
    slower = first.run()
    assert len(slower) == len(requests)
    # Each way takes 7.5-22.5 ms: no answer comes sooner than 15 ms past the quickest bare one.
    assert min(slower) >= min(bare) + 0.015
    assert 0.015 <= percentile(slower, 50) - percentile(bare, 50) <= 0.045
    again = VirtualRun(hosted, ORACLE, requests)
    again.run()
    assert again.trace == first.trace
    # A policy hears of first tokens and ends that late too, and every request still ends.
    run = VirtualRun(
        Setup(kv_blocks=(512, 512), gateways=2, host_ms=30.0), "prefix_aware", requests
    )
    assert len(run.run()) == len(requests)
    assert all(not gw.in_flight for gw in run.gateways)


def test_keeping_groups_on_one_engine_beats_scattering_them() -> None:
    # Four groups of 3,000 tokens on two 8k-token engines: two a engine fit, four do not.
    setup = Setup(kv_blocks=(512, 512))
    oracle = p99(setup, ORACLE)
    assert p99(setup, "prefix_aware") <= 1.5 * oracle
    assert p99(setup, "round_robin") > 2 * oracle


def test_the_command_prints_a_row_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "5,6", "--seconds", "5", "--policies", "oracle"]) == 0
    out = capsys.readouterr().out
    assert out.count("p99") == 2


def test_several_gateways_send_a_homed_prefix_home_unless_it_is_overloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shape: eight 6,000-token groups on four engines reporting 16k-token caches,
    # three gateways. Before homes were followed, a gateway's cost model sent a homed group
    # elsewhere with its home idle (seed 8: nine times), each such spill evicting a group the
    # controller had homed where it landed.
    spilled: list[tuple[str, str]] = []
    homed: list[str] = []
    pick = PrefixAware.pick

    def watched(self: PrefixAware, candidates: Sequence[Member], ctx: PickContext) -> Member:
        key = self.index.match(ctx.prefix_key).key
        position = {m.id: i for i, m in enumerate(candidates)}
        home = self.homes.at(key, position, self.clock.monotonic())
        chosen = pick(self, candidates, ctx)
        if home >= 0:
            homed.append(chosen.id)
            if chosen.id != candidates[home].id and not overloaded(ctx.loads(candidates), home):
                spilled.append((candidates[home].id, chosen.id))
        return chosen

    monkeypatch.setattr(PrefixAware, "pick", watched)
    requests = build("shared_prefix", 8, 10.0, 400, WorkloadShape())
    VirtualRun(Setup(kv_blocks=(1024,) * 4, gateways=3), "prefix_aware", requests).run()
    assert len(homed) > 300
    assert spilled == []


def test_gateways_asking_home_each_long_new_prefix_on_one_member_from_its_first_send() -> None:
    # Four groups of 3,000 tokens, two gateways, two 8k-token engines: each group homed at its
    # first send, two an engine, and every gateway told the same homes.
    setup = Setup(kv_blocks=(512, 512), gateways=2)
    requests = build("shared_prefix", 5, 8.0, 120, SHAPE)
    run = VirtualRun(setup, "prefix_aware", requests)
    run.run()
    homes = run.homes.homes("pool")
    assert len(homes) == 4
    assert sorted(Counter(h.member for h in homes.values()).values()) == [2, 2]
    for gw in run.gateways:
        assert isinstance(gw.policy, PrefixAware)
        assert {p: gw.policy.homes.by_prefix.get(p) for p in homes} == {
            p: h.member for p, h in homes.items()
        }
    # Each group went to one engine from its first request on.
    members: dict[str, set[str]] = {}
    for _, group, _, member, _, _ in run.trace:
        members.setdefault(group, set()).add(member)
    assert all(len(m) == 1 for m in members.values())


def test_gateways_that_hear_each_others_sends_each_judge_every_answer() -> None:
    requests = build("multi_turn", 5, 8.0, 160, SHAPE)

    def verdicts(share_ms: float) -> list[int]:
        setup = Setup(kv_blocks=(512, 1024, 2048), reported=False, gateways=3, share_ms=share_ms)
        run = VirtualRun(setup, "prefix_aware", requests)
        assert len(run.run()) == len(requests)
        counts = []
        for gw in run.gateways:
            assert not gw.in_flight  # every request heard of, its own or told, ended
            assert isinstance(gw.policy, PrefixAware) and gw.policy.hears_all == (share_ms >= 0)
            outcomes = gw.policy.sizer.outcomes.values()
            counts.append(sum(o.hits + o.misses for o in outcomes))
        return counts

    alone, heard = verdicts(-1.0), verdicts(2.0)
    # Each judged about its third of the answers; told of the others' sends, about all of them.
    assert all(h >= 2 * a for h, a in zip(heard, alone, strict=True))
    assert max(heard) - min(heard) <= max(heard) // 10
