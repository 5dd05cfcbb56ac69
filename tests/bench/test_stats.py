"""Percentiles and summaries of the benchmark."""

import math

import pytest

from bench.stats import percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    data = [1.0, 2.0, 3.0, 4.0]
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile(data, 50) == pytest.approx(2.5)
    assert percentile(data, 25) == pytest.approx(1.75)


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_sorts_and_reports_the_tail() -> None:
    values = [float(v) for v in range(1000, 0, -1)]  # 1..1000, unsorted
    s = summarize(values)
    assert s.count == 1000
    assert s.mean == pytest.approx(500.5)
    assert s.p50 == pytest.approx(500.5)
    assert s.p99 == pytest.approx(990.01)
    assert s.max == 1000.0


def test_summarize_empty_is_nan() -> None:
    s = summarize([])
    assert s.count == 0
    assert math.isnan(s.p50) and math.isnan(s.max)
