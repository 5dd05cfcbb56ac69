"""The probe-latency moving average."""

from __future__ import annotations

import pytest

from agent.ewma import Ewma


def test_first_sample_is_taken_as_is_then_smoothed() -> None:
    avg = Ewma(alpha=0.5)
    assert avg.value is None
    assert avg.add(10.0) == 10.0
    assert avg.add(20.0) == 15.0
    avg.reset()
    assert avg.value is None


def test_alpha_must_be_a_fraction() -> None:
    with pytest.raises(ValueError):
        Ewma(alpha=0)
