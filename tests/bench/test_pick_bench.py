"""bench/pick.py's summary of several runs: prefix_aware's rows, and in how many runs each
workload stayed under the p99 target."""

from __future__ import annotations

from bench.pick import TARGET_P99_US, Row, summary


def test_summary_counts_the_runs_under_the_target_per_workload() -> None:
    runs = [
        [
            Row("round_robin", "4 KB chat prompts", 0.1, 500.0),  # not prefix_aware: left out
            Row("prefix_aware", "32k", 30.0, TARGET_P99_US - 1),
            Row("prefix_aware", "unique", 40.0, TARGET_P99_US + 1),
        ],
        [
            Row("prefix_aware", "32k", 31.0, TARGET_P99_US),  # at the target: not under it
            Row("prefix_aware", "unique", 41.0, 80.0),
        ],
    ]
    text = summary(runs)
    assert "round_robin" not in text
    assert "| 2 | unique | 41.0 | 80.0 |" in text
    assert "- 32k: p99 under 100 us in 1 of 2 runs" in text
    assert "- unique: p99 under 100 us in 1 of 2 runs" in text
