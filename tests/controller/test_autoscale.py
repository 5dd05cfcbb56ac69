"""The pure autoscale step (controller/autoscale.py), second by second on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.autoscale import (
    Keep,
    PoolSignals,
    ScaleDecision,
    ScaleDown,
    ScaleState,
    ScaleUp,
    recommend,
    step,
)
from controller.model import Autoscale

POLICY = Autoscale(
    min_replicas=1,
    max_replicas=4,
    target=2,
    up_window_s=5,
    down_window_s=20,
    up_cooldown_s=10,
    down_cooldown_s=15,
)


class Pool:
    """One pool driven second by second; replicas follow each decision at once (and are READY
    unless told otherwise)."""

    def __init__(self, policy: Autoscale = POLICY, replicas: int = 1, slo_ms: float = 0) -> None:
        self.policy = policy
        self.replicas = replicas
        self.slo_ms = slo_ms
        self.state = ScaleState()
        self.now = 1000.0
        self.decisions: list[tuple[float, ScaleDecision]] = []

    def run(self, seconds: int, signals: Callable[[int], PoolSignals]) -> ScaleDecision:
        decision: ScaleDecision | None = None
        for _ in range(seconds):
            decision, self.state, _ = step(
                "p", self.policy, self.slo_ms, self.replicas, signals(self.replicas),
                self.state, self.now,
            )  # fmt: skip
            if not isinstance(decision, Keep):
                self.replicas = decision.target
                self.decisions.append((self.now, decision))
            self.now += 1.0
        assert decision is not None
        return decision

    def scaled_at(self) -> list[tuple[float, int]]:
        return [(t - 1000.0, d.target) for t, d in self.decisions if not isinstance(d, Keep)]


def saturated(batch: float, total: float) -> Callable[[int], PoolSignals]:
    """`total` requests spread over the ready replicas, each decoding at most `batch`."""

    def signals(ready: int) -> PoolSignals:
        per = total / ready if ready else 0.0
        running = min(per, batch)
        return PoolSignals(
            ready=ready,
            running=running * ready,
            waiting=(per - running) * ready,
            peak_running=running,
            in_flight=total,
        )

    return signals


def idle(ready: int) -> PoolSignals:
    return PoolSignals(ready=ready)


def test_a_queue_past_the_target_for_the_whole_up_window_adds_replicas() -> None:
    pool = Pool()
    # One replica batching 4 with 6 more waiting: 10 requests at 4 + 2 each want 2 replicas.
    pool.run(4, saturated(4, 10))
    assert pool.decisions == []  # the up window (5 s) has not passed
    pool.run(2, saturated(4, 10))
    assert pool.scaled_at() == [(5.0, 2)]
    assert isinstance(pool.decisions[0][1], ScaleUp)
    assert "10 requests" in pool.decisions[0][1].reason
    # Two replicas each decoding 4 with 1 waiting: within the target, steady.
    decision = pool.run(30, saturated(4, 10))
    assert isinstance(decision, Keep) and decision.reason.startswith("steady")
    assert pool.replicas == 2


def test_a_burst_shorter_than_the_up_window_adds_nothing() -> None:
    pool = Pool()
    pool.run(6, saturated(4, 4))  # full batch, nobody waiting: one replica is enough
    pool.run(3, saturated(4, 30))
    pool.run(10, saturated(4, 4))
    assert pool.decisions == []


def test_scale_up_goes_to_the_least_recommendation_of_the_window() -> None:
    pool = Pool(replicas=1)
    pool.run(6, saturated(4, 4))
    pool.run(3, saturated(4, 13))  # wants 3 (13 / 6)
    pool.run(3, saturated(4, 19))  # wants 4
    # Over the 5 s window ending at the scale-up the least is 3.
    assert pool.scaled_at()[0][1] == 3


def test_scale_ups_are_a_cooldown_apart() -> None:
    policy = Autoscale(min_replicas=1, max_replicas=8, up_window_s=0, up_cooldown_s=10)
    pool = Pool(policy)
    pool.run(1, saturated(4, 10))
    assert pool.scaled_at() == [(0.0, 2)]
    decision = pool.run(9, saturated(4, 100))
    assert isinstance(decision, Keep) and "up cooldown" in decision.reason
    pool.run(1, saturated(4, 100))
    assert pool.scaled_at() == [(0.0, 2), (10.0, 8)]


def test_no_scale_down_before_the_whole_down_window_is_quiet() -> None:
    pool = Pool(replicas=3)
    pool.run(30, saturated(4, 18))  # 3 replicas each decoding 4 with 2 waiting: the target
    assert pool.decisions == []
    pool.run(19, saturated(4, 3))  # now what one replica's batch holds with room to spare
    assert pool.decisions == []
    pool.run(2, saturated(4, 3))
    assert pool.scaled_at() == [(50.0, 1)]
    assert isinstance(pool.decisions[0][1], ScaleDown)


def test_a_scale_down_waits_out_its_cooldown_after_a_scale_up() -> None:
    policy = Autoscale(
        min_replicas=1, max_replicas=4, up_window_s=0, down_window_s=0, down_cooldown_s=15
    )
    pool = Pool(policy)
    pool.run(1, saturated(4, 20))
    assert pool.scaled_at() == [(0.0, 4)]
    decision = pool.run(10, idle)
    assert isinstance(decision, Keep) and "down cooldown" in decision.reason
    pool.run(6, idle)
    assert pool.scaled_at() == [(0.0, 4), (15.0, 1)]


def test_an_idle_pool_scales_to_zero_only_when_its_floor_is_zero() -> None:
    floor_one = Pool(replicas=2)
    floor_one.run(60, idle)
    assert floor_one.replicas == 1
    to_zero = Pool(Autoscale(min_replicas=0, max_replicas=4, down_window_s=20), replicas=2)
    to_zero.run(19, idle)
    assert to_zero.replicas == 2
    to_zero.run(2, idle)
    assert to_zero.replicas == 0
    assert "no request" in to_zero.decisions[-1][1].reason


def test_one_request_a_second_keeps_a_replica_of_a_pool_with_floor_zero() -> None:
    pool = Pool(Autoscale(min_replicas=0, max_replicas=4, down_window_s=5), replicas=1)
    pool.run(30, lambda ready: PoolSignals(ready=ready, requests=1))
    assert pool.replicas == 1


def test_a_held_request_starts_the_first_replica_at_once() -> None:
    pool = Pool(Autoscale(min_replicas=0, max_replicas=4, up_window_s=30), replicas=0)
    pool.run(5, idle)
    assert pool.replicas == 0
    decision = pool.run(1, lambda ready: PoolSignals(ready=ready, held=3))
    assert isinstance(decision, ScaleUp) and decision.target == 1
    assert "held" in decision.reason
    # Until that replica is READY nothing more starts, however many wait.
    decision = pool.run(60, lambda ready: PoolSignals(ready=0, held=50))
    assert pool.replicas == 1
    assert "no replica is ready" in decision.reason


def test_a_count_outside_the_floor_and_ceiling_moves_in_at_once() -> None:
    high = Pool(replicas=9)
    decision = high.run(1, saturated(4, 100))
    assert isinstance(decision, ScaleDown) and decision.target == 4
    assert "ceiling" in decision.reason
    low = Pool(Autoscale(min_replicas=2, max_replicas=4), replicas=0)
    decision = low.run(1, idle)
    assert isinstance(decision, ScaleUp) and decision.target == 2


def test_a_restarted_autoscaler_judges_no_window_it_has_not_seen() -> None:
    pool = Pool(replicas=3)
    pool.run(19, idle)  # fresh state: 19 s of history, the down window is 20 s
    assert pool.decisions == []


def test_the_batch_learned_under_a_queue_sizes_a_later_scale_down() -> None:
    quick = Autoscale(
        min_replicas=1,
        max_replicas=8,
        up_window_s=0,
        down_window_s=10,
        up_cooldown_s=0,
        down_cooldown_s=0,
    )
    pool = Pool(quick, replicas=2)
    pool.run(3, saturated(8, 40))  # batch 8 seen full with a queue
    assert pool.state.batch == 8
    before = pool.replicas
    # 16 requests over the replicas it has now: each decodes fewer than 8, but the learned batch
    # says 16 fit in 3 replicas at 80% of their batch (16 / 6.4 -> 3).
    pool.run(15, saturated(8, 16))
    assert before > 3 and pool.replicas == 3


@pytest.mark.parametrize(
    ("metric", "signals", "slo", "want"),
    [
        ("kv", PoolSignals(ready=2, kv_usage=0.9, running=1), 0, 3),  # 2 x 0.9 / 0.8
        ("kv", PoolSignals(ready=4, kv_usage=0.1, running=1), 0, 1),
        ("ttft", PoolSignals(ready=2, ttft_ms=900, requests=5), 300, 6),  # 2 x 900 / 300
        ("ttft", PoolSignals(ready=2, ttft_ms=50, requests=5), 300, 1),
        ("ttft", PoolSignals(ready=2), 300, 0),  # no traffic at all
        ("waiting", PoolSignals(ready=0, held=7), 0, 3),  # 7 held at 1 + 2 per replica
    ],
)
def test_recommendations_per_metric(
    metric: str, signals: PoolSignals, slo: float, want: int
) -> None:
    policy = Autoscale(min_replicas=0, max_replicas=8, metric=metric)
    rec = recommend(policy, slo, signals, batch=0)
    assert rec.replicas == want, rec.why


def test_demand_that_one_batch_holds_only_when_full_keeps_two_replicas() -> None:
    """Two replicas batching 2 carry 3 requests. One replica could take them only with its batch
    always full, and then the queue, and the demand with it, grows: no scale-down (and no
    scale-up again a minute later)."""
    policy = Autoscale(
        min_replicas=1, max_replicas=2, target=1, up_window_s=0, down_window_s=5,
        down_cooldown_s=0,
    )  # fmt: skip
    pool = Pool(policy, replicas=2)
    pool.run(3, saturated(2, 8))  # the batch (2) is learned while requests queue
    pool.run(30, saturated(2, 3))
    assert pool.replicas == 2 and pool.decisions == []
    pool.run(6, saturated(2, 1))  # one request fits one replica's batch with room
    assert pool.replicas == 1
