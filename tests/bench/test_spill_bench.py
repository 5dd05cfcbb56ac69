"""bench/spill.py's config is one llm-pool accepts, and its table says what it measured."""

from __future__ import annotations

from bench.spill import Row, config, render
from llmpool.config import parse_config


def test_the_bench_config_has_a_local_pool_that_falls_back_to_cloud() -> None:
    pools = {p.name: p for p in parse_config(config()).pools}
    assert pools["local"].fallbacks == ["cloud"] and pools["local"].ttft_slo_ms > 0
    assert pools["cloud"].replicas == 2


def test_the_table_has_a_row_per_load() -> None:
    table = render([Row("", "0.5 R", 10.0, 300, 0, 0.0, 20, 22),
                    Row("ttft_slo 5", "2 R", 40.0, 1200, 0, 0.5, 21, 23)])  # fmt: skip
    assert "| 0.5 R | 10.0 | 300 | 0 | 0% | - | 20 ms | 22 ms |" in table
    assert "| 2 R | 40.0 | 1200 | 0 | 50% | ttft_slo 5 | 21 ms | 23 ms |" in table
