"""A supervised replica's transitions on a fake clock, with no process and no waiting: the ready
timeout, liveness, restart backoff, drains and their deadlines."""

from __future__ import annotations

from agent.lifecycle import ReplicaLifecycle
from llmpool.backoff import Backoff
from llmpool.clock import FakeClock
from llmpool.status import ReplicaState


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def lifecycle(
    clock: FakeClock, changes: Changes | None = None, ready_timeout_s: float = 5.0
) -> ReplicaLifecycle:
    return ReplicaLifecycle(
        ready_timeout_s=ready_timeout_s,
        unhealthy_after=3,
        stable_s=30.0,
        # Without jitter, delay n is base x 2^n / 2: 0.1, 0.2, 0.4, ...
        backoff=Backoff(base=0.2, cap=10.0, jitter=lambda: 0.0),
        clock=clock,
        on_change=changes or Changes(),
    )


def test_starting_until_ready_or_the_ready_timeout() -> None:
    clock, changes = FakeClock(), Changes()
    life = lifecycle(clock, changes)
    life.launched("first start")
    assert (life.state, life.healthy, life.message) == (ReplicaState.STARTING, False, "first start")
    assert changes.count == 1
    assert life.not_ready("HTTP 503") is None
    clock.advance(4.9)
    assert life.not_ready("connection refused") is None
    clock.advance(0.1)
    assert life.not_ready("HTTP 503") == "not ready within 5s: HTTP 503"
    # A new process gets the whole timeout again.
    life.launched()
    assert life.not_ready("HTTP 503") is None
    assert life.ready() is True
    assert (life.state, life.healthy, life.message) == (ReplicaState.READY, True, "")


def test_liveness_failures_mark_unhealthy_and_one_answer_recovers() -> None:
    clock, changes = FakeClock(), Changes()
    life = lifecycle(clock, changes)
    life.launched()
    life.ready()
    before = changes.count
    assert life.unanswered("HTTP 500") is False
    clock.advance(1.0)
    assert life.unanswered("HTTP 500") is False
    assert life.healthy and changes.count == before
    assert life.message == "2 failed health probes in 1.0s: HTTP 500"
    assert life.answered() is False  # healthy all along; the streak starts over
    assert life.message == ""
    for _ in range(2):
        life.unanswered("timed out")
        clock.advance(1.0)
    assert life.unanswered("timed out") is True
    assert not life.healthy and life.state is ReplicaState.READY
    assert life.message == "3 failed health probes in 2.0s: timed out"
    assert changes.count == before + 1
    assert life.answered() is True
    assert life.healthy and life.message == "" and changes.count == before + 2


def test_restart_backoff_grows_and_starts_over_after_a_stable_run() -> None:
    clock = FakeClock()
    life = lifecycle(clock)
    life.launched()
    assert life.failed("process exited with code 1") == 0.1
    assert life.state is ReplicaState.FAILED and not life.healthy
    assert life.message == "process exited with code 1; restarting in 0.1s"
    assert life.restarting() == 1
    life.launched("restart 1")
    life.ready()
    clock.advance(29.0)  # not stable yet: the backoff keeps growing
    assert life.failed("process killed by signal 9") == 0.2
    assert life.restarting() == 2
    life.launched()
    assert life.failed("not ready within 5s: HTTP 503") == 0.4  # never ready: no reset
    life.launched()
    life.ready()
    clock.advance(30.0)
    assert life.failed("process killed by signal 9") == 0.1
    assert life.restarts == 2


def test_a_stop_drains_until_idle_or_its_deadline() -> None:
    clock = FakeClock()
    life = lifecycle(clock)
    life.launched()
    life.ready()
    assert life.stop(30.0) is True
    assert life.state is ReplicaState.DRAINING and life.draining and life.stopping
    assert life.drain_over(idle=False) is None
    clock.advance(10.0)
    assert life.drain_left() == 20.0 and life.drain_over(idle=False) is None
    assert life.drain_over(idle=True) == "idle"
    clock.advance(20.0)
    assert life.drain_over(idle=False) == "timed out" and life.drained_s() == 30.0
    life.stopped(0)
    assert (life.state, life.healthy) == (ReplicaState.STOPPED, False)
    assert life.message == "stopped (exit code 0)"


def test_a_later_stop_only_brings_the_drain_forward() -> None:
    clock = FakeClock()
    life = lifecycle(clock)
    life.launched()
    life.ready()
    assert life.stop(60.0) is True
    clock.advance(1.0)
    assert life.stop(120.0) is False and life.drain_left() == 59.0  # never longer
    assert life.stop(0.0) is False
    assert life.drain_over(idle=False) == "ended by the controller"


def test_a_stop_before_ready_does_not_drain_and_stays_draining() -> None:
    clock = FakeClock()
    life = lifecycle(clock)
    life.launched()
    assert life.stop(30.0) is True
    assert life.state is ReplicaState.DRAINING and not life.draining
    assert life.drain_over(idle=False) == "idle"
    # The readiness probe answering during the stop does not make it READY again.
    assert life.ready() is False and life.state is ReplicaState.DRAINING
    life.stopped(None)
    assert life.message == "stopped"
