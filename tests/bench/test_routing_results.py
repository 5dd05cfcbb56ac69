"""Routing bench maths: percentiles, engine counters, the oracle's mapping, tables, targets."""

from __future__ import annotations

import math

import pytest

from bench.routing.cluster import POOL, SimShape, config_yaml
from bench.routing.engine_stats import EngineCounters, deltas, hit_rate, imbalance, parse_counters
from bench.routing.oracle import affinity_index, assign
from bench.routing.report import BEGIN, END, replace_section
from bench.routing.results import RunResult, nearest_rank, targets, workload_table
from llmpool.config import parse_config

METRICS = """\
# HELP vllm:prefix_cache_hits_total x
vllm:prefix_cache_hits_total{model_name="m"} 640.0
vllm:prefix_cache_queries_total{model_name="m"} 1000.0
vllm:e2e_request_latency_seconds_count{model_name="m"} 10.0
vllm:e2e_request_latency_seconds_sum{model_name="m"} 99.0
vllm:num_requests_running{model_name="m"} 2.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:generation_tokens_total{model_name="m"} 160.0
"""


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 50) == 50 and nearest_rank(values, 99) == 99
    assert nearest_rank(values, 100) == 100 and nearest_rank(values, 0) == 1
    assert nearest_rank([3.0, 1.0, 2.0], 50) == 2
    assert math.isnan(nearest_rank([], 50))
    # Two unanswered requests in 100: p99 is infinite, p50 is not.
    tail = [*values[:98], math.inf, math.inf]
    assert math.isinf(nearest_rank(tail, 99)) and nearest_rank(tail, 50) == 50
    with pytest.raises(ValueError):
        nearest_rank(values, 101)


def test_engine_counters_parse_and_deltas() -> None:
    c = parse_counters(METRICS)
    assert (c.hits, c.queries, c.finished, c.generated) == (640, 1000, 10, 160)
    assert c.running == 2 and not c.idle
    before = {"b": EngineCounters(hits=40, queries=500, finished=4), "a": EngineCounters()}
    after = {"a": EngineCounters(hits=0, queries=100, finished=2), "b": c}
    d = deltas(after, before)
    assert [x.finished for x in d] == [2, 6]
    assert hit_rate(d) == pytest.approx(600 / 600)
    assert imbalance([x.finished for x in d]) == pytest.approx(6 / 4)
    assert math.isnan(hit_rate([EngineCounters()])) and math.isnan(imbalance([0, 0]))


def test_oracle_sends_group_i_to_engine_i_mod_n_by_sorted_id() -> None:
    ids = ["r-c", "r-a", "r-d", "r-b"]
    assert [ids[assign(f"g{i}", ids)] for i in range(6)] == [
        "r-a",
        "r-b",
        "r-c",
        "r-d",
        "r-a",
        "r-b",
    ]
    assert affinity_index("s12") == 12
    chosen = {ids[assign("no-digits", ids)] for _ in range(3)}
    assert len(chosen) == 1  # stable
    with pytest.raises(ValueError):
        assign("g1", [])


def test_generated_config_is_a_valid_pool_of_sim_engines() -> None:
    shape = SimShape(engines=4, speedup=2, kv_blocks=256)
    config = parse_config(config_yaml(shape))
    pool = config.pools[0]
    assert pool.name == POOL and pool.replicas == 4 and pool.template is not None
    assert pool.template.cpu_slots == 0
    command = pool.template.command
    assert command[command.index("--kv-blocks") + 1] == "256"
    assert command[command.index("--speedup") + 1] == "2"


def _row(system: str, rate: float, p50: float, p99: float, ok: int = 10) -> RunResult:
    return RunResult(
        "shared_prefix",
        system,
        rate,
        scheduled=10,
        ok=ok,
        ttft_p50=p50,
        ttft_p99=p99,
        itl_p50=0.02,
        tokens_per_s=100,
        hit_rate=0.5,
        imbalance=1.1,
    )


def test_table_marks_systems_that_keep_up_and_shows_timeouts() -> None:
    rows = [
        _row("oracle", 8, 0.05, 0.2),
        _row("round_robin", 8, 2.0, math.inf, ok=9),
        RunResult("shared_prefix", "vllm-router cache_aware", 8, skipped="not run: no venv"),
    ]
    text = workload_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| system") and len(lines) == 5
    assert "oracle *" in text and "round_robin *" not in text
    assert "timeout" in text and "not run: no venv" in text and "50%" in text


def test_targets_pass_and_fail_with_numbers() -> None:
    rows = [
        _row("oracle", 8, 0.05, 0.2),
        _row("prefix_aware", 8, 0.06, 0.25),
        _row("round_robin", 8, 1.0, 6.0),
        _row("vllm-router cache_aware", 8, 0.1, 0.2),
    ]
    lines = targets("shared_prefix", rows)
    assert any("within 1.5x: PASS" in line for line in lines)
    assert any(">= 10x lower: PASS" in line for line in lines)
    assert any("better: FAIL" in line for line in lines)
    assert targets("multi_turn", [_row("oracle", 8, 0.05, 0.2)])[0].startswith("multi_turn: n/a")
    unique = [
        RunResult("unique", "prefix_aware", 4, scheduled=10, ok=10, ttft_p50=1.04),
        RunResult("unique", "least_in_flight", 4, scheduled=10, ok=10, ttft_p50=1.0),
    ]
    assert "within 5%: PASS" in targets("unique", unique)[0]


def test_section_is_replaced_in_place_and_the_rest_is_kept() -> None:
    doc = "# Gateway benchmark\n\ntables\n"
    once = replace_section(doc, "## Routing\n\nv1")
    assert once.startswith(doc.rstrip("\n")) and "v1" in once and once.count(BEGIN) == 1
    twice = replace_section(once + "\n## After\n", "## Routing\n\nv2")
    assert "v1" not in twice and "v2" in twice and twice.endswith("## After\n")
    assert twice.count(BEGIN) == 1 and twice.count(END) == 1
    assert replace_section("", "x") == f"{BEGIN}\nx\n{END}\n"
