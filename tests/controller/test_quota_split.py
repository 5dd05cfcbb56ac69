"""The pure parts of shared limits: the fair split of a limit over gateways, budget periods,
and which subjects are limited."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from controller.apikeys import ApiKeyRecord, TenantRecord
from controller.model import PoolSpec
from controller.quotas import RESERVE, SubjectLimit, allocate, limits_of, period_start

# 2026-12-02 (a Wednesday) 15:00 UTC.
WED_15H = datetime(2026, 12, 2, 15, tzinfo=UTC).timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# --- allocate ---------------------------------------------------------------------------------


def random_demands(rng: random.Random) -> dict[str, float]:
    n = rng.randint(1, 12)
    shape = rng.choice(("uniform", "skewed", "zeros", "mixed"))
    demands: dict[str, float] = {}
    for i in range(n):
        if shape == "uniform":
            want = rng.uniform(0, 1000)
        elif shape == "skewed":
            want = rng.paretovariate(1.0) * 10
        elif shape == "zeros":
            want = 0.0 if rng.random() < 0.7 else rng.uniform(0, 5000)
        else:
            want = rng.choice((0.0, 1.0, rng.uniform(0, 100), rng.uniform(1e3, 1e6)))
        demands[f"gw{i}"] = want
    return demands


def check_allocation(limit: float, demands: dict[str, float]) -> None:
    shares = allocate(limit, demands)
    eps = 1e-9 * max(limit, 1.0)
    floor = limit * RESERVE / len(demands)
    assert set(shares) == set(demands)
    assert math.isclose(sum(shares.values()), limit, rel_tol=1e-9, abs_tol=1e-9)
    unsatisfied = [g for g in demands if shares[g] < demands[g] - eps]
    leftover = limit - sum(max(want, floor) for want in demands.values())
    for g, share in shares.items():
        # Everyone has at least the reserve's floor.
        assert share >= floor - eps
        if unsatisfied and g not in unsatisfied:
            # While someone wants more than it has, nobody has more than it wants (or the floor).
            assert share <= max(demands[g], floor) + eps
        if not unsatisfied:
            # Everyone satisfied: what nobody wants is spread evenly.
            even = max(demands[g], floor) + leftover / len(demands)
            assert math.isclose(share, even, rel_tol=1e-9, abs_tol=eps)
    # An unsatisfied gateway has at least as much as any other (water-filling).
    for g in unsatisfied:
        assert all(shares[g] >= shares[h] - eps for h in shares)


def test_allocate_adds_up_to_the_limit_and_is_max_min_fair() -> None:
    for seed in range(500):
        rng = random.Random(seed)
        limit = rng.choice((1.0, 60.0, 1000.0, rng.uniform(0, 1e7)))
        demands = random_demands(rng)
        try:
            check_allocation(limit, demands)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: allocate({limit}, {demands})") from exc


def test_allocate_splits_evenly_for_equal_demands() -> None:
    for want in (0.0, 5.0, 1e6):
        shares = allocate(900.0, {f"g{i}": want for i in range(3)})
        assert shares == pytest.approx({"g0": 300.0, "g1": 300.0, "g2": 300.0})


def test_allocate_gives_the_reserve_floor_to_a_gateway_without_demand() -> None:
    shares = allocate(100.0, {"busy": 1e9, "idle": 0.0})
    assert shares["idle"] == pytest.approx(100.0 * RESERVE / 2)
    assert shares["busy"] == pytest.approx(100.0 - 100.0 * RESERVE / 2)
    # Without a reserve the idle gateway gets nothing while the other wants more.
    assert allocate(100.0, {"busy": 1e9, "idle": 0.0}, reserve=0.0) == {"busy": 100.0, "idle": 0.0}
    # A negative want counts as none.
    assert allocate(100.0, {"busy": 1e9, "odd": -50.0})["odd"] == pytest.approx(1.0)


def test_allocate_spreads_what_nobody_wants_evenly() -> None:
    # Floors 1 each; a wants 10, b 20; the 70 left over goes half and half.
    assert allocate(100.0, {"a": 10.0, "b": 20.0}) == pytest.approx({"a": 45.0, "b": 55.0})


def test_allocate_one_gateway_and_none() -> None:
    for want in (0.0, 3.0, 1e12):
        assert allocate(600.0, {"only": want}) == pytest.approx({"only": 600.0})
    assert allocate(600.0, {}) == {}
    assert allocate(0.0, {"a": 10.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}


# --- period_start -----------------------------------------------------------------------------


def test_period_start_for_known_dates() -> None:
    assert period_start("day", WED_15H) == utc(2026, 12, 2)
    assert period_start("week", WED_15H) == utc(2026, 11, 30)
    assert period_start("month", WED_15H) == utc(2026, 12, 1)
    assert period_start("total", WED_15H) == 0.0
    # A Monday's week starts that day; a Sunday's the Monday before; January the 1st.
    assert period_start("week", utc(2026, 11, 30, 0, 0, 1)) == utc(2026, 11, 30)
    assert period_start("week", utc(2026, 12, 6, 23, 59, 59)) == utc(2026, 11, 30)
    assert period_start("week", utc(2027, 1, 2, 12)) == utc(2026, 12, 28)
    assert period_start("month", utc(2027, 1, 1)) == utc(2027, 1, 1)
    assert period_start("day", utc(2027, 1, 1) - 1) == utc(2026, 12, 31)


# --- limits_of --------------------------------------------------------------------------------


def test_limits_of_names_only_subjects_with_a_limit() -> None:
    keys = [ApiKeyRecord(id="k1", rpm=60), ApiKeyRecord(id="k2"), ApiKeyRecord(id="k3", tpm=9)]
    tenants = [TenantRecord("a", tpm=1000), TenantRecord("b", budget_usd=5)]
    pools = [PoolSpec(name="p", rpm=10, tpm=20), PoolSpec(name="q")]
    assert limits_of(keys, tenants, pools) == {
        "key/k1": SubjectLimit(60, 0),
        "key/k3": SubjectLimit(0, 9),
        "tenant/a": SubjectLimit(0, 1000),
        "pool/p": SubjectLimit(10, 20),
    }
