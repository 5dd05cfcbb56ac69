"""prefix_aware's shortcut for a held prompt: a member holding part of it whose whole cost is
below any member's floor wins without the pass over the others, and always the member that the
full pass would pick."""

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
    """From the same state, the policy with the shortcut and one without pick the same member
    every time, over prompts long and short, held and new, loads moving and time passing; and
    the shortcut is taken often enough for that to mean something."""
    rng = random.Random(3)
    clock = FakeClock()
    policy = build(clock)
    pool = members(rng)
    policy.on_members(pool)
    policy.on_snapshot(pool)
    stems = [f"document {g} " * rng.choice([10, 200, 4000]) for g in range(12)]
    in_flight: dict[str, int] = {}
    taken = 0
    for step in range(600):
        if step % 50 == 0:
            pool = members(rng)
            policy.on_snapshot(pool)
        ctx = request(rng, stems, in_flight)
        full = copy.deepcopy(policy)
        full._holder_wins = lambda *_: -1  # type: ignore[method-assign]
        expected = full.pick(pool, copy.copy(ctx)).id
        won = -1
        holder_wins = policy._holder_wins

        def spy(*args: Any, _real: Any = holder_wins) -> int:
            nonlocal won
            won = _real(*args)
            return won

        policy._holder_wins = spy  # type: ignore[method-assign]
        got = policy.pick(pool, ctx).id
        del policy._holder_wins
        assert got == expected, step
        taken += won >= 0
        # Requests start and end; time moves.
        in_flight[got] = in_flight.get(got, 0) + 1
        for mid in list(in_flight):
            if rng.random() < 0.3:
                in_flight[mid] -= 1
                if not in_flight[mid]:
                    del in_flight[mid]
        clock.advance(rng.choice([0.0, 0.001, 0.02, 0.3]))
    assert taken > 100
