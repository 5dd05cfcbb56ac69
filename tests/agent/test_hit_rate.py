"""The prefix cache hit rate the agent reports, from counters (vLLM) or a gauge (SGLang)."""

from __future__ import annotations

from agent.engine_metrics import EngineLoad
from agent.hit_rate import HitRate


def counters(hits: float, queries: float) -> EngineLoad:
    return EngineLoad(prefix_cache_hits=hits, prefix_cache_queries=queries)


def test_rate_over_the_last_scrapes_with_lookups_and_unknown_before() -> None:
    rate = HitRate()
    rate.update(EngineLoad())
    assert rate.value == -1.0
    rate.update(counters(100, 1000))  # a baseline, whatever happened before the agent looked
    assert rate.value == -1.0
    rate.update(counters(400, 1400))
    assert rate.value == 0.75
    rate.update(counters(400, 1400))  # no lookups since: the last rate stands
    assert rate.value == 0.75


def test_counter_reset_sets_a_new_baseline() -> None:
    rate = HitRate()
    rate.update(counters(500, 1000))
    rate.update(counters(600, 1100))
    assert rate.value == 1.0
    rate.update(counters(10, 100))  # the engine restarted
    assert rate.value == 1.0
    rate.update(counters(10, 200))
    assert rate.value == 0.0


def test_an_engine_gauge_is_taken_as_it_is() -> None:
    rate = HitRate()
    rate.update(EngineLoad(prefix_cache_hit_rate=0.4))
    assert rate.value == 0.4
