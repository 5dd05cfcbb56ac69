"""The routing benchmark runs policies with engine facts only, and lets the oracle through."""

from __future__ import annotations

import math

import pytest

from bench.routing import workloads as wl
from bench.routing.cluster import SimShape
from bench.routing.oracle import ORACLE_POLICY
from bench.routing.run import FULL, QUICK, header, policy_params
from controller.validation import check_policy
from gateway.policies import PolicyRegistry, PrefixAware
from llmpool.errors import InvalidArgumentError
from llmpool.sim.costs import CostModel


def test_prefix_aware_is_told_the_engines_cache_size_and_prefill_speed() -> None:
    shape = SimShape(speedup=4.0, kv_blocks=256, block_size=64)
    params = policy_params("prefix_aware", shape, wl.WorkloadShape(system_tokens=6000))
    assert params["member_capacity_tokens"] == "16384"
    # 6,000 tokens take prefill_ms(6000) simulated ms, a quarter of that on the wall clock.
    expected = 6000 / (CostModel().prefill_ms(6000) / 1000.0) * 4.0
    assert abs(float(params["prefill_tokens_per_s"]) - expected) < 1.0
    policy = PolicyRegistry().build("prefix_aware", params)
    assert isinstance(policy, PrefixAware)
    assert policy.index.member_blocks == 16384 * 4 // policy.index.block_chars


def test_other_policies_run_with_their_defaults() -> None:
    for name in ("round_robin", "least_in_flight", "queue_aware", ORACLE_POLICY):
        assert policy_params(name, SimShape(), wl.WorkloadShape()) == {}


def test_controller_accepts_the_oracle_only_when_listed_as_an_extra_policy() -> None:
    # What the bench sets LLMPOOL_CONTROLLER_EXTRA_POLICIES to.
    assert check_policy(ORACLE_POLICY, {}, (ORACLE_POLICY,)) == ORACLE_POLICY
    with pytest.raises(InvalidArgumentError, match="unknown routing policy 'bench_oracle'"):
        check_policy(ORACLE_POLICY, {}, ())


def test_full_profile_gives_every_p99_at_least_300_requests_where_the_window_allows() -> None:
    for rates in FULL.rates.values():
        for rate in rates:
            n = FULL.count(rate)
            assert n <= FULL.max_requests
            # Either 300 requests, or the longest arrival window this profile allows.
            assert n >= FULL.min_requests or n == math.floor(rate * FULL.max_window_s)
    assert FULL.count(4) == 200  # 50 simulated seconds at 4/s
    assert FULL.count(8) == 300
    assert FULL.count(32) == 400  # capped
    # The quick profile keeps its fixed windows.
    assert QUICK.count(8) == math.ceil(8 * QUICK.duration_s)


def test_full_run_fits_in_about_20_minutes_of_arrivals_and_overheads() -> None:
    # Wall seconds of arrivals per system over the whole sweep, plus ~2.5 s a run for
    # switching, resets and drains (what the last full run spent): 10 systems (9 policies
    # without aliases, the oracle, vllm-router).
    per_system = sum(
        FULL.count(rate) / rate / FULL.speedup + 2.5
        for rates in FULL.rates.values()
        for rate in rates
    )
    assert 10 * per_system < 22 * 60


def test_header_says_how_many_requests_each_p99_rests_on() -> None:
    shape = SimShape(speedup=FULL.speedup)
    lines = header(
        FULL,
        shape,
        wl.WorkloadShape(),
        "make bench-routing",
        1.0,
        0.001,
        0.05,
        ["round_robin"],
        {4.0: 200, 8.0: 300},
    )
    text = "\n".join(lines)
    assert "200 at 4/s (50 s of arrivals), 300 at 8/s (38 s of arrivals)" in text
