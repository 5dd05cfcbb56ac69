"""RestartGrace: a restarted controller waits for the agents its store names, or the window."""

from __future__ import annotations

import asyncio

from controller.metrics import ControllerMetrics
from controller.publisher import SnapshotPublisher
from controller.restart_grace import RestartGrace
from controller.snapshot import Routes
from llmpool.clock import FakeClock


def test_settles_when_every_expected_agent_is_back() -> None:
    back: set[str] = set()
    grace = RestartGrace({"a", "b"}, 15.0, FakeClock(), back.__contains__)
    assert not grace.settled() and grace.waiting_for() == ["a", "b"]
    assert grace.in_grace("a") and not grace.in_grace("other")
    assert "a, b" in grace.message()
    back.add("a")
    assert not grace.settled() and grace.waiting_for() == ["b"]
    back.add("b")
    assert grace.settled() and grace.message() == "" and not grace.in_grace("a")
    # Sticky: an agent leaving later is not a restart any more.
    back.clear()
    assert grace.settled() and grace.waiting_for() == []


def test_settles_when_the_window_passes() -> None:
    clock = FakeClock()
    grace = RestartGrace({"gone"}, 15.0, clock, lambda _: False)
    clock.advance(14.9)
    assert not grace.settled() and grace.remaining_s() > 0
    clock.advance(0.2)
    assert grace.settled() and grace.waiting_for() == []


def test_a_first_start_has_nothing_to_wait_for() -> None:
    assert RestartGrace((), 15.0, FakeClock(), lambda _: False).settled()
    assert RestartGrace({"a"}, 0.0, FakeClock(), lambda _: False).settled()


async def test_publisher_marks_tables_provisional_then_sends_a_final_full_one() -> None:
    settled = False
    routes: Routes = {}
    publisher = SnapshotPublisher(
        lambda: routes, asyncio.Event(), FakeClock(), ControllerMetrics(),
        provisional=lambda: not settled,
    )  # fmt: skip
    sub = publisher.subscribe("g")
    first = await sub.next_batch()
    assert first is not None and first[0].full and first[0].provisional
    assert not publisher.publish()  # nothing changed, still provisional
    settled = True
    assert publisher.publish()  # same routes, but now final: every gateway gets them whole
    final = await sub.next_batch()
    assert final is not None and len(final) == 1
    assert final[0].full and not final[0].provisional
    assert not publisher.publish()
