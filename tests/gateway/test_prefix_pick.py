"""prefix_aware's shortcut for a held prompt: a member holding part of it whose whole cost is
below what any other member could cost wins without the pass over the others, always the member
that the full pass would pick, and leaves the queues as the full pass would."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace
from typing import Any

import pytest

from gateway.members import Member, idle_member
from gateway.policies import PickContext, PolicyRegistry, PrefixAware
from gateway.policies.columns import Columns
from gateway.policies.prefix_index import PrefixIndex
from llmpool.clock import FakeClock


def build(clock: FakeClock) -> PrefixAware:
    policy = PolicyRegistry(clock=clock).build("prefix_aware")
    assert isinstance(policy, PrefixAware)
    return policy


def watched(policy: PrefixAware) -> list[int]:
    """What each of the policy's shortcut attempts returns from now on (-1: none taken)."""
    attempts: list[int] = []
    holder_wins = policy._holder_wins

    def spy(*args: Any) -> int:
        attempts.append(holder_wins(*args))
        return attempts[-1]

    policy._holder_wins = spy  # type: ignore[method-assign]
    return attempts


def spy_pruned(policy: PrefixAware) -> list[int]:
    """How many members each full pass of the policy leaves out from now on."""
    counts: list[int] = []
    adjust = policy._adjust

    def spy(cols: Columns, costs: list[float], *args: Any) -> None:
        adjust(cols, costs, *args)
        counts.append(costs.count(math.inf))

    policy._adjust = spy  # type: ignore[method-assign]
    return counts


def members(rng: random.Random, caches: tuple[int, ...]) -> tuple[Member, ...]:
    return tuple(
        idle_member(f"m{i}", in_flight=rng.randint(0, 6), cache_tokens=rng.choice(caches))
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


@pytest.mark.parametrize(
    "caches",
    [
        (0, 2048, 8192, 32768),  # some with room to spare: the others' requests bound alone
        (4096, 8192, 16384),  # all full soon: a long prompt evicts wherever it goes
    ],
)
def test_the_shortcut_picks_what_the_full_pass_picks(caches: tuple[int, ...]) -> None:
    """A policy with the shortcuts and one without, each fed the same requests and keeping its
    own state, pick the same member every time, over prompts long and short, held and new,
    requests starting and ending and time passing (so a state a shortcut left behind must
    not change a later pick); and each shortcut is taken often enough for that to mean
    something: the holder that wins without the full pass, and the full pass leaving out
    members too dear for their queues to matter."""
    rng = random.Random(3)
    clock = FakeClock()
    policy = build(clock)
    full = build(clock)
    full._holder_wins = lambda *_: -1  # type: ignore[method-assign]
    full._pruned = lambda _: math.inf  # type: ignore[method-assign]
    pruned = spy_pruned(policy)
    pool = members(rng, caches)
    for p in (policy, full):
        p.on_members(pool)
        p.on_snapshot(pool)
    stems = [f"document {g} " * rng.choice([10, 200, 4000]) for g in range(12)]
    in_flight: dict[str, int] = {}
    attempts = watched(policy)
    for step in range(800):
        if step % 50 == 0:
            pool = members(rng, caches)
            policy.on_snapshot(pool)
            full.on_snapshot(pool)
        ctx = request(rng, stems, in_flight)
        expected = full.pick(pool, copy.copy(ctx)).id
        got = policy.pick(pool, ctx).id
        assert got == expected, step
        # The first pass's lists of each candidate's room left and singles follow the records.
        cols = policy._cols
        assert cols is not None
        cols.refresh()
        assert cols.free == [r.room - r.units for r in cols.records], step
        assert cols.singles == [r.singles for r in cols.records], step
        # Requests start and end; time moves.
        in_flight[got] = in_flight.get(got, 0) + 1
        for mid in list(in_flight):
            if rng.random() < 0.3:
                in_flight[mid] -= 1
                if not in_flight[mid]:
                    del in_flight[mid]
        clock.advance(rng.choice([0.0, 0.001, 0.02, 0.3]))
    assert sum(won >= 0 for won in attempts) > 100
    assert sum(pruned) > 100


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
    taken = watched(policy)
    # b's request ended (the gateway's count there dropped to 0); the held document goes to a.
    assert ask(doc + "second", (a, b), {"a": 1}) == "a"
    assert taken == [0]
    assert policy.backlog_blocks("b") == 0


def test_a_long_prompt_partly_held_wins_at_a_busy_holder_when_every_cache_is_full() -> None:
    """Every cache full: the document sent anywhere else evicts its whole size there, so the
    member holding its first part wins without the full pass, though the part it lacks evicts
    there too and the others' requests are in flight on it alone."""
    clock = FakeClock()
    policy = build(clock)
    pool = (idle_member("a", cache_tokens=8192), idle_member("b", cache_tokens=8192))
    policy.on_members(pool)
    policy.on_snapshot(pool)

    def context(text: str) -> PickContext:
        payload = {"messages": [{"role": "user", "content": text}]}
        return PickContext(model="m", payload=payload, in_flight={})

    def ask(text: str, pool: tuple[Member, ...]) -> str:
        return policy.pick(pool, context(text)).id

    doc = "the document " * 5000  # ~16,000 tokens: twice what either caches
    assert ask(doc + "first", (pool[0],)) == "a"
    assert ask("another document " * 5000, (pool[1],)) == "b"
    match = policy.index.match(context(doc).prefix_key)
    size, held = match.blocks, match.depth["a"][0]
    assert size // 3 < held < size  # Its deepest blocks evicted there.
    assert max(r.room - r.units for r in policy.index.held_by.values()) < size // 8
    taken = watched(policy)
    busy = (replace(pool[0], in_flight=5), pool[1])
    policy.on_snapshot(busy)
    assert ask(doc + "second", busy) == "a"
    assert taken == [0]


@pytest.mark.parametrize("evict, hot", [(1.0, 2.0), (0.7, 0.7), (1.5, 0.5), (0.5, 3.0)])
def test_the_least_cost_is_below_every_first_pass_cost_and_equal_to_it_when_all_evict(
    evict: float, hot: float
) -> None:
    """The bound the shortcut compares a holder against never exceeds what the first pass
    costs any member (else the shortcut could pick a holder the full pass would not); for a
    prompt bigger than every member's room and one-off blocks together it is the least of
    them exactly where hot blocks weigh at least as much as one-off ones (as by default)."""
    rng = random.Random(11)
    index = PrefixIndex(block_chars=16, max_blocks=100_000, max_prompt_blocks=64, max_holders=4)
    pool = tuple(idle_member(f"m{i}", in_flight=rng.randint(0, 6)) for i in range(12))
    for m in pool:
        index.set_cap(m.id, rng.choice([64, 256, 1024]))

    def send(n: int) -> None:
        text = f"group {rng.randrange(8)} " * rng.randint(4, 40) + f"tail {n} " * rng.randint(0, 30)
        index.insert(rng.choice(pool).id, index.match(text))

    for n in range(100):
        send(n)
    cols = Columns(pool, {}, index, 4.0, evict, hot, {})
    exact = 0
    for n in range(100, 400):
        send(n)  # The bound's terms follow the records as the index changes them.
        for units in rng.sample(range(3000), 8):
            costs = cols.costs(units)
            bound = cols.least_cost(units)
            assert bound <= min(costs), (n, units)
            if all(units - f > s for f, s in zip(cols.free, cols.singles, strict=True)):
                exact += 1
                if hot >= evict:
                    assert bound == pytest.approx(min(costs)), (n, units)
    assert exact > 100
