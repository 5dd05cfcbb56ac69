"""Routing bench workloads: deterministic, Poisson-timed, shaped as documented."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from bench.routing import workloads as wl
from llmpool.sim.tokens import tokenize

SHAPE = wl.WorkloadShape(
    groups=4,
    system_tokens=300,
    question_tokens=10,
    sessions=3,
    session_context_tokens=200,
    unique_tokens=300,
    max_tokens=4,
)


@pytest.mark.parametrize("name", wl.WORKLOADS)
def test_same_seed_same_requests_other_seed_other_requests(name: str) -> None:
    a = wl.build(name, 1, 5.0, 30, SHAPE)
    assert a == wl.build(name, 1, 5.0, 30, SHAPE)
    assert a != wl.build(name, 2, 5.0, 30, SHAPE)
    assert len(a) == 30 and all(x.at_s < y.at_s for x, y in itertools.pairwise(a))


def test_poisson_schedule_has_the_rate_and_exponential_spread() -> None:
    times = wl.poisson_times(random.Random(7), 20.0, 4000)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / 20.0, rel=0.05)
    # Exponential gaps: the standard deviation equals the mean (coefficient of variation 1).
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.07)
    with pytest.raises(ValueError):
        wl.poisson_times(random.Random(1), 0.0, 3)


def test_text_of_tokens_counts_with_the_simulators_tokenizer() -> None:
    rng = random.Random(3)
    for n in (1, 7, 64, 500):
        assert len(tokenize(wl.text_of_tokens(rng, n))) == n


def test_shared_prefix_groups_share_their_system_prompt_only() -> None:
    reqs = wl.build(wl.SHARED_PREFIX, 1, 5.0, 40, SHAPE)
    systems: dict[str, set[str]] = {}
    for r in reqs:
        systems.setdefault(r.affinity, set()).add(r.messages[0][1])
    assert len(systems) == SHAPE.groups and all(len(s) == 1 for s in systems.values())
    assert len({next(iter(s)) for s in systems.values()}) == SHAPE.groups
    assert len({r.messages[1][1] for r in reqs}) == len(reqs)  # every question is new
    assert all(r.prompt_tokens > SHAPE.system_tokens for r in reqs)


def test_multi_turn_prompt_extends_the_previous_turn_with_the_sim_reply() -> None:
    reqs = wl.build(wl.MULTI_TURN, 1, 5.0, 12, SHAPE)
    by_session: dict[str, list[wl.BenchRequest]] = {}
    for r in reqs:
        by_session.setdefault(r.affinity, []).append(r)
    assert len(by_session) == SHAPE.sessions
    for turns in by_session.values():
        assert len(turns) == 4  # sessions take turns: 12 arrivals, 3 sessions
        for prev, nxt in itertools.pairwise(turns):
            assert nxt.messages[: len(prev.messages)] == prev.messages
            assert nxt.messages[len(prev.messages)] == ("assistant", prev.expected_reply)
            assert nxt.prompt_tokens > prev.prompt_tokens
    first = reqs[0]
    assert first.expected_reply == wl.sim_reply(first.messages, SHAPE.max_tokens)
    assert len(first.expected_reply.split()) == SHAPE.max_tokens  # one word a token


def test_unique_prompts_share_nothing_and_have_the_set_length() -> None:
    reqs = wl.build(wl.UNIQUE, 1, 5.0, 20, SHAPE)
    assert len({r.messages[0][1][:20] for r in reqs}) == 20
    assert {len(tokenize(r.messages[0][1])) for r in reqs} == {SHAPE.unique_tokens}
    body = reqs[0].body("m")
    assert body["stream"] is True and body["model"] == "m" and body["max_tokens"] == 4


def test_unknown_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        wl.build("nope", 1, 1.0, 1, SHAPE)
