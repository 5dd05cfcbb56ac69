"""Seeded, deterministic routing workloads: shared prefixes, multi-turn sessions, unique prompts."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from llmpool.sim.textgen import output_token, prompt_seed
from llmpool.sim.tokens import ChatMessage, render_chat, tokenize

SHARED_PREFIX = "shared_prefix"
MULTI_TURN = "multi_turn"
UNIQUE = "unique"
WORKLOADS = (SHARED_PREFIX, MULTI_TURN, UNIQUE)

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class BenchRequest:
    """One request of a run: when to send it (simulated seconds from the run's start), the
    group or session it belongs to, and the reply the simulator will give (for checking)."""

    at_s: float
    affinity: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int
    expected_reply: str

    def body(self, model: str) -> dict[str, object]:
        return {
            "model": model,
            "stream": True,
            "max_tokens": self.max_tokens,
            "messages": [{"role": r, "content": c} for r, c in self.messages],
        }

    @property
    def prompt_tokens(self) -> int:
        """Prompt length as the simulator counts it (BOS included)."""
        return 1 + len(tokenize(_render(self.messages)))


@dataclass(frozen=True)
class WorkloadShape:
    """Sizes of the three workloads (tokens as the simulator's tokenizer counts them)."""

    groups: int = 8
    system_tokens: int = 6000
    question_tokens: int = 40
    sessions: int = 16
    session_context_tokens: int = 3000
    unique_tokens: int = 6000
    max_tokens: int = 16


def poisson_times(rng: random.Random, rate: float, count: int) -> list[float]:
    """Arrival times of a Poisson process of `rate` per second: `count` of them, from ~0."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    t = 0.0
    times: list[float] = []
    for _ in range(count):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def text_of_tokens(rng: random.Random, tokens: int) -> str:
    """Random words adding up to exactly `tokens` tokens of the simulator's tokenizer."""
    words: list[str] = []
    left = tokens
    while left > 0:
        # A word of up to 4 letters after a space is one token; longer words cost more.
        length = rng.randint(2, min(8, 4 * left))
        words.append("".join(rng.choices(_LETTERS, k=length)))
        left -= -(-length // 4)
    return " ".join(words)


def _render(messages: Sequence[tuple[str, str]]) -> str:
    return render_chat([ChatMessage(r, c) for r, c in messages])


def sim_reply(messages: Sequence[tuple[str, str]], max_tokens: int) -> str:
    """The simulator's deterministic answer to these messages (llmpool/sim/textgen.py)."""
    seed = prompt_seed(_render(messages))
    return "".join(output_token(seed, i) for i in range(max_tokens))


def shared_prefix(seed: int, rate: float, count: int, shape: WorkloadShape) -> list[BenchRequest]:
    """G groups, each with its own long system prompt; every request picks a group at random
    and asks a short unique question."""
    rng = random.Random(f"{SHARED_PREFIX}/{seed}")
    systems = [text_of_tokens(rng, shape.system_tokens) for _ in range(shape.groups)]
    times = poisson_times(random.Random(f"{SHARED_PREFIX}/{seed}/{rate}"), rate, count)
    out: list[BenchRequest] = []
    for at in times:
        group = rng.randrange(shape.groups)
        messages = (
            ("system", systems[group]),
            ("user", text_of_tokens(rng, shape.question_tokens)),
        )
        out.append(
            BenchRequest(
                at, f"g{group}", messages, shape.max_tokens, sim_reply(messages, shape.max_tokens)
            )
        )
    return out


def multi_turn(seed: int, rate: float, count: int, shape: WorkloadShape) -> list[BenchRequest]:
    """S chat sessions; each turn's prompt is the session so far (its context, every earlier
    question and the simulator's reply to it) plus a new question. Arrivals are Poisson; the
    sessions take turns in a shuffled order each round, so one session's turns come about S
    arrivals apart (a user reading the answer before asking again)."""
    rng = random.Random(f"{MULTI_TURN}/{seed}")
    history: list[list[tuple[str, str]]] = [
        [("system", text_of_tokens(rng, shape.session_context_tokens))]
        for _ in range(shape.sessions)
    ]
    times = poisson_times(random.Random(f"{MULTI_TURN}/{seed}/{rate}"), rate, count)
    order: list[int] = []
    out: list[BenchRequest] = []
    for at in times:
        if not order:
            order = list(range(shape.sessions))
            rng.shuffle(order)
        session = order.pop()
        turn = [*history[session], ("user", text_of_tokens(rng, shape.question_tokens))]
        reply = sim_reply(turn, shape.max_tokens)
        out.append(BenchRequest(at, f"s{session}", tuple(turn), shape.max_tokens, reply))
        history[session] = [*turn, ("assistant", reply)]
    return out


def unique(seed: int, rate: float, count: int, shape: WorkloadShape) -> list[BenchRequest]:
    """Control: every prompt is new (no shared prefix beyond the chat markers), of about the
    length of the shared-prefix workload's prompts."""
    rng = random.Random(f"{UNIQUE}/{seed}")
    times = poisson_times(random.Random(f"{UNIQUE}/{seed}/{rate}"), rate, count)
    out: list[BenchRequest] = []
    for i, at in enumerate(times):
        messages = (("user", text_of_tokens(rng, shape.unique_tokens)),)
        reply = sim_reply(messages, shape.max_tokens)
        out.append(BenchRequest(at, f"u{i}", messages, shape.max_tokens, reply))
    return out


def build(
    name: str, seed: int, rate: float, count: int, shape: WorkloadShape
) -> list[BenchRequest]:
    """The requests of one workload at one rate; the same arguments give the same requests."""
    if name == SHARED_PREFIX:
        return shared_prefix(seed, rate, count, shape)
    if name == MULTI_TURN:
        return multi_turn(seed, rate, count, shape)
    if name == UNIQUE:
        return unique(seed, rate, count, shape)
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
