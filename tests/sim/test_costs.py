"""The cost model reproduces the Dynamo mocker's curves."""

from __future__ import annotations

import pytest

from llmpool.sim.costs import CostModel


def test_prefill_curve_matches_the_mocker_fit() -> None:
    c = CostModel()
    assert c.prefill_ms(0) == 0.0
    assert c.prefill_ms(1000) == pytest.approx(4.21e-7 * 1e6 + 15.18 + 16.5)  # 32.10 ms
    assert c.prefill_ms(8000) == pytest.approx(4.21e-7 * 64e6 + 1.518e-2 * 8000 + 16.5)
    assert c.prefill_ms(2000) > c.prefill_ms(1000) > c.prefill_ms(1)


def test_decode_curve_grows_with_kv_fill_and_has_a_floor() -> None:
    c = CostModel()
    assert c.decode_ms(0.0) == pytest.approx(5.74)
    assert c.decode_ms(0.5) == pytest.approx(-25.74 * 0.25 + 54.01 * 0.5 + 5.74)
    assert c.decode_ms(1.0) == pytest.approx(-25.74 + 54.01 + 5.74)
    assert c.decode_ms(0.9) > c.decode_ms(0.5) > c.decode_ms(0.1)
    assert c.decode_ms(2.0) == c.decode_ms(1.0)  # clamped to the valid range
    floor = CostModel(decode_const_ms=-100.0)
    assert floor.decode_ms(0.0) == 1.0


def test_step_adds_prefill_and_decode() -> None:
    c = CostModel()
    assert c.step_ms(100, 0.2, decoding=True) == pytest.approx(c.prefill_ms(100) + c.decode_ms(0.2))
    assert c.step_ms(100, 0.2, decoding=False) == pytest.approx(c.prefill_ms(100))
