"""Counters read from each engine's /metrics (vLLM names) and what a run's deltas say."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
FINISHED = "vllm:e2e_request_latency_seconds_count"
GENERATED = "vllm:generation_tokens_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class EngineCounters:
    """One engine's counters at one moment (sums over label sets)."""

    hits: float = 0.0
    queries: float = 0.0
    finished: float = 0.0
    generated: float = 0.0
    running: float = 0.0
    waiting: float = 0.0

    def minus(self, earlier: EngineCounters) -> EngineCounters:
        return EngineCounters(
            self.hits - earlier.hits,
            self.queries - earlier.queries,
            self.finished - earlier.finished,
            self.generated - earlier.generated,
            self.running,
            self.waiting,
        )

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0


def parse_counters(text: str) -> EngineCounters:
    """Pure parser of Prometheus text: the samples above, summed over their labels."""
    wanted = {HITS, QUERIES, FINISHED, GENERATED, RUNNING, WAITING}
    sums = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, rest = line.partition(" ")
        name = name_part.split("{", 1)[0]
        if name in wanted:
            try:
                sums[name] += float(rest.split()[0])
            except (IndexError, ValueError):
                continue
    return EngineCounters(
        sums[HITS], sums[QUERIES], sums[FINISHED], sums[GENERATED], sums[RUNNING], sums[WAITING]
    )


def hit_rate(deltas: Sequence[EngineCounters]) -> float:
    """Prefix cache hit rate over all engines: hit tokens / looked-up tokens (NaN if none)."""
    queries = sum(d.queries for d in deltas)
    return sum(d.hits for d in deltas) / queries if queries else math.nan


def imbalance(counts: Sequence[float]) -> float:
    """Load imbalance: max / mean of requests per engine (1.0 is even; NaN with no requests)."""
    if not counts or sum(counts) == 0:
        return math.nan
    return max(counts) / (sum(counts) / len(counts))


def deltas(
    after: Mapping[str, EngineCounters], before: Mapping[str, EngineCounters]
) -> list[EngineCounters]:
    """Per engine (by URL, in sorted order) the change over a run."""
    return [after[k].minus(before.get(k, EngineCounters())) for k in sorted(after)]
