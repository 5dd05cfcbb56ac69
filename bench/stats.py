"""Percentiles and latency summaries of plain lists of numbers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, interpolated linearly between
    the closest ranks; NaN for an empty list."""
    if not sorted_values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return sorted_values[low]
    frac = rank - low
    return sorted_values[low] * (1.0 - frac) + sorted_values[high] * frac


@dataclass(frozen=True)
class Summary:
    """Count, mean and tail of a sample; NaN fields when the sample is empty."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


def summarize(values: Iterable[float]) -> Summary:
    data = sorted(values)
    if not data:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan)
    return Summary(
        count=len(data),
        mean=sum(data) / len(data),
        p50=percentile(data, 50),
        p90=percentile(data, 90),
        p99=percentile(data, 99),
        p999=percentile(data, 99.9),
        max=data[-1],
    )


def added(value: float, floor: float) -> float:
    """What a system adds over the floor measured by the same client (NaN stays NaN)."""
    return value - floor
