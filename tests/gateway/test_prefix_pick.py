"""prefix_aware's shortcut for a held prompt: a member holding part of it whose whole cost is
below any member's floor wins without the pass over the others, always the member that the
full pass would pick, and leaves the queues as the full pass would."""

from __future__ import annotations

import copy
import random
from typing import Any

from gateway.members import Member, idle_member
from gateway.policies import PickContext, PolicyRegistry, PrefixAware
from llmpool.clock import FakeClock


def build(clock: FakeClock) -> PrefixAware:
    policy = PolicyRegistry(clock=clock).build("prefix_aware")
    assert isinstance(policy, PrefixAware)
    return policy


def members(rng: random.Random) -> tuple[Member, ...]:
    return tuple(
        idle_member(
            f"m{i}",
            in_flight=rng.randint(0, 6),
            cache_tokens=rng.choice([0, 2048, 8192, 32768]),
        )
        for i in range(8)
    )


def request(rng: random.Random, stems: list[str], in_flight: dict[str, int]) -> PickContext:
    payload: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": rng.choice(stems)},
            {"role": "user", "content": "q" * rng.randint(0, 3000)},
        ],
        "stream": rng.random() < 0.5,
    }
    return PickContext(model="m", payload=payload, in_flight=dict(in_flight))


def test_the_shortcut_picks_what_the_full_pass_picks() -> None:
    """A policy with the shortcut and one without, each fed the same requests and keeping its
    own state, pick the same member every time, over prompts long and short, held and new,
    requests starting and ending and time passing (so a state the shortcut left behind must
    not change a later pick); and the shortcut is taken often enough for that to mean
    something."""
    rng = random.Random(3)
    clock = FakeClock()
    policy = build(clock)
    full = build(clock)
    full._holder_wins = lambda *_: -1  # type: ignore[method-assign]
    pool = members(rng)
    for p in (policy, full):
        p.on_members(pool)
        p.on_snapshot(pool)
    stems = [f"document {g} " * rng.choice([10, 200, 4000]) for g in range(12)]
    in_flight: dict[str, int] = {}
    taken = 0
    holder_wins = policy._holder_wins

    def spy(*args: Any) -> int:
        nonlocal taken
        won = holder_wins(*args)
        taken += won >= 0
        return won

    policy._holder_wins = spy  # type: ignore[method-assign]
    for step in range(800):
        if step % 50 == 0:
            pool = members(rng)
            policy.on_snapshot(pool)
            full.on_snapshot(pool)
        ctx = request(rng, stems, in_flight)
        expected = full.pick(pool, copy.copy(ctx)).id
        got = policy.pick(pool, ctx).id
        assert got == expected, step
        # Requests start and end; time moves.
        in_flight[got] = in_flight.get(got, 0) + 1
        for mid in list(in_flight):
            if rng.random() < 0.3:
                in_flight[mid] -= 1
                if not in_flight[mid]:
                    del in_flight[mid]
        clock.advance(rng.choice([0.0, 0.001, 0.02, 0.3]))
    assert taken > 100


def test_the_shortcut_drops_requests_that_ended_elsewhere() -> None:
    """Requests that ended on another member are dropped from its queue by a pick the shortcut
    decides, as by one the full pass decides: a queue updated only now and then would drain
    what ended as if it were still ahead of what did not."""
    clock = FakeClock()
    policy = build(clock)
    a, b = idle_member("a"), idle_member("b")
    policy.on_members((a, b))
    policy.on_snapshot((a, b))
    doc = "shared document " * 2000

    def ask(text: str, pool: tuple[Member, ...], in_flight: dict[str, int]) -> str:
        payload = {"messages": [{"role": "user", "content": text}]}
        return policy.pick(pool, PickContext(model="m", payload=payload, in_flight=in_flight)).id

    assert ask(doc + "first", (a,), {}) == "a"
    assert ask("another document " * 2000, (b,), {"a": 1}) == "b"
    assert policy.backlog_blocks("b") > 0
    taken = []
    holder_wins = policy._holder_wins

    def spy(*args: Any) -> int:
        taken.append(holder_wins(*args))
        return taken[-1]

    policy._holder_wins = spy  # type: ignore[method-assign]
    # b's request ended (the gateway's count there dropped to 0); the held document goes to a.
    assert ask(doc + "second", (a, b), {"a": 1}) == "a"
    assert taken == [0]
    assert policy.backlog_blocks("b") == 0
