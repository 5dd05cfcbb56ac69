"""The routing benchmark runs policies with engine facts only, and lets the oracle through."""

from __future__ import annotations

import pytest

from bench.routing import workloads as wl
from bench.routing.cluster import SimShape
from bench.routing.oracle import ORACLE_POLICY
from bench.routing.run import policy_params
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
