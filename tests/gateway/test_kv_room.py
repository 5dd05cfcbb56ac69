"""KV room: a prompt that waited beside ours running at a member bounds what the member runs at
once, and a later prompt that would reach that bound there costs the wait."""

from __future__ import annotations

import pytest

from gateway.members import Member, idle_member
from gateway.policies import PickContext, PolicyRegistry, PrefixAware
from gateway.policies.kv_room import TTL_S, KvRooms
from gateway.policies.ticket import Ticket
from llmpool.clock import FakeClock

UNIT_S = 0.001


def waited(running: float, clear: bool = True) -> Ticket:
    return Ticket("m", 0, 100, 0.0, alone=False, clear=clear, running=running)


def test_a_prompt_that_waited_beside_ours_running_bounds_the_member() -> None:
    rooms = KvRooms()
    # Prefill of 100 units: 0.1 s, as the fastest answer took; it took 0.6 s: it waited 0.5 s.
    rooms.answered(waited(100.0), 0.6, UNIT_S, 0.1, now=1.0)
    # 100 of ours running and a prompt of 100: what it could not run; 0.5 s at 1,000 units/s.
    assert rooms.cost("m", 100.0, 100.0, 1000.0, now=2.0) == pytest.approx(500.0)
    assert rooms.cost("m", 150.0, 100.0, 1000.0, now=2.0) == pytest.approx(500.0)
    # Below the bound, or another member: nothing.
    assert rooms.cost("m", 50.0, 100.0, 1000.0, now=2.0) == 0.0
    assert rooms.cost("n", 100.0, 100.0, 1000.0, now=2.0) == 0.0
    # A second wait at a lower total lowers the bound and moves the average wait.
    rooms.answered(waited(60.0), 0.4, UNIT_S, 0.1, now=3.0)
    assert rooms.cost("m", 60.0, 100.0, 1000.0, now=4.0) == pytest.approx(
        (0.5 + 0.3 * (0.3 - 0.5)) * 1000.0
    )
    # The fastest answer, when more than the prefill, is what it would have taken alone.
    rooms = KvRooms()
    rooms.answered(waited(100.0), 0.35, UNIT_S, 0.2, now=1.0)
    assert not rooms.short
    rooms.answered(waited(100.0), 0.45, UNIT_S, 0.2, now=1.0)
    assert rooms.cost("m", 100.0, 100.0, 1000.0, now=1.0) == pytest.approx(250.0)


def test_what_says_nothing_of_room_teaches_nothing() -> None:
    cases = [
        (waited(100.0), 0.19, UNIT_S),  # within twice its prefill
        (waited(0.0), 0.6, UNIT_S),  # nothing of ours running beside it
        (waited(100.0, clear=False), 0.6, UNIT_S),  # ours queued, or others' there
        (waited(100.0), 0.6, None),  # no prefill speed known to judge it by
    ]
    for ticket, ttft, unit_s in cases:
        rooms = KvRooms()
        rooms.answered(ticket, ttft, unit_s, 0.1, now=1.0)
        assert rooms.cost("m", 1000.0, 100.0, 1000.0, now=1.0) == 0.0
        assert not rooms.short


def test_a_bound_lapses_without_another_wait_and_goes_with_its_member() -> None:
    rooms = KvRooms()
    rooms.answered(waited(100.0), 0.6, UNIT_S, 0.1, now=1.0)
    assert rooms.cost("m", 100.0, 100.0, 1000.0, now=1.0 + TTL_S) > 0.0
    assert rooms.cost("m", 100.0, 100.0, 1000.0, now=2.0 + TTL_S) == 0.0
    assert not rooms.short
    rooms.answered(waited(100.0), 0.6, UNIT_S, 0.1, now=1.0)
    rooms.forget({"n"})
    assert not rooms.short


def _policy(clock: FakeClock, members: list[Member]) -> PrefixAware:
    built = PolicyRegistry(clock=clock).build("prefix_aware")
    assert isinstance(built, PrefixAware)
    built.on_members(members)
    built.on_snapshot(members)
    return built


def _prompt(n: int) -> str:
    # ~12.8 KB: 100 units of 128 bytes; each its own first block.
    return (f"unique prompt {n} " * 800)[:12800]


def test_a_member_that_made_a_prompt_wait_beside_ours_gets_no_second_while_one_runs() -> None:
    """Two members of unknown cache, a gateway alone. One long prompt runs on x, two on y; a new
    one costs less on x (one request there against two) until x was seen making a prompt wait
    for room beside one of ours: then it goes to y, where both are only decoding."""

    def run(wait_s: float) -> str:
        clock = FakeClock(100.0)
        x, y = idle_member("x"), idle_member("y")
        p = _policy(clock, [x, y])
        n = 0

        def send(candidates: list[Member], in_flight: dict[str, int]) -> Ticket:
            nonlocal n
            n += 1
            ctx = PickContext(
                model="m", payload={"prompt": _prompt(n), "stream": True}, in_flight=in_flight
            )
            p.pick(candidates, ctx)
            assert isinstance(ctx.ticket, Ticket)
            return ctx.ticket

        for _ in range(5):  # the prefill speed, from prompts alone on a member
            ticket = send([x], {})
            clock.advance(0.1)
            p.began(ticket, 0.1)
            p.settle(ticket, 0.1, 0)
        first = send([x], {})
        clock.advance(0.1)
        p.began(first, 0.1)
        beside = send([x], {"x": 1})
        assert beside.clear and beside.running > 0
        clock.advance(0.1 + wait_s)
        p.began(beside, 0.1 + wait_s)
        p.settle(first, 0.1, 0)  # the first ends; the second runs on
        for k in range(2):
            ticket = send([y], {"x": 1, "y": k} if k else {"x": 1})
            clock.advance(0.1)
            p.began(ticket, 0.1)
        ctx = PickContext(
            model="m", payload={"prompt": _prompt(99), "stream": True}, in_flight={"x": 1, "y": 2}
        )
        chosen = p.pick([x, y], ctx).id
        # What it saw x unable to run at once: the two prompts, in units of 32 tokens.
        both = int((beside.running + beside.new) * 32)
        assert p.room_tokens("x") == (both if wait_s else 0) and p.room_tokens("y") == 0
        return chosen

    assert run(0.0) == "x"
    assert run(1.0) == "y"
