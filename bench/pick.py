"""`python -m bench.pick`: microbenchmark of one policy pick with 64 members (p50/p99 in us)."""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from dataclasses import dataclass, replace
from typing import Any

import orjson

from bench.stats import percentile
from gateway.members import Member
from gateway.policies import PickContext, Policy, PolicyRegistry
from gateway.policies.prefix_index import PrefixIndex
from llmpool.clock import SystemClock

MEMBERS = 64
BASE = Member(
    id="",
    url="http://h",
    weight=1,
    healthy=True,
    draining=False,
    zone="",
    kind="openai",
    upstream_model=None,
    running=0,
    waiting=0,
    kv_usage=-1,
    in_flight=0,
    latency_ms=0,
    chat_url="",
    completions_url="",
    embeddings_url="",
)


@dataclass(frozen=True)
class Row:
    policy: str
    workload: str
    p50_us: float
    p99_us: float


def members(rng: random.Random) -> tuple[Member, ...]:
    return tuple(
        replace(
            BASE,
            id=f"replica-{i:02d}",
            weight=rng.randint(1, 4),
            running=rng.randint(0, 32),
            waiting=rng.randint(0, 4),
            kv_usage=rng.random(),
            in_flight=rng.randint(0, 16),
            latency_ms=rng.uniform(50, 500),
            input_cost_per_mtok=rng.choice([0.0, 0.5, 1.0]),
            output_cost_per_mtok=rng.choice([0.0, 1.5, 3.0]),
            # Engines' caches as they report them (512 to 4,096 blocks of 16 tokens): the
            # warmed index fills the smaller ones, so picks pay for eviction as in production.
            cache_tokens=rng.choice([8192, 16384, 32768, 65536]),
        )
        for i in range(MEMBERS)
    )


def word_text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def context(payload: dict[str, Any], in_flight: dict[str, int]) -> PickContext:
    """A request as the gateway hands it to a policy: the client's body and its parse."""
    return PickContext(model="m", body=orjson.dumps(payload), payload=payload, in_flight=in_flight)


def chat_contexts(
    rng: random.Random, systems: list[str], count: int, in_flight: dict[str, int]
) -> list[PickContext]:
    """4 KB chat prompts: one of the shared 3 KB system prompts and a unique 1 KB question."""
    return [
        context(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": rng.choice(systems)},
                    {"role": "user", "content": word_text(rng, 1024)},
                ],
                "user": f"user-{rng.randrange(10_000)}",
            },
            in_flight,
        )
        for _ in range(count)
    ]


def long_contexts(
    rng: random.Random, documents: list[str], count: int, in_flight: dict[str, int]
) -> list[PickContext]:
    """32k-token chat prompts (128 KB): one of the shared 120 KB documents and a unique 8 KB
    question."""
    return [
        context(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": rng.choice(documents)},
                    {"role": "user", "content": word_text(rng, 8192)},
                ],
            },
            in_flight,
        )
        for _ in range(count)
    ]


def time_picks(policy: Policy, pool: tuple[Member, ...], ctxs: list[PickContext]) -> list[float]:
    pick = policy.pick
    clock = time.perf_counter_ns
    took: list[float] = []
    gc.disable()
    try:
        for ctx in ctxs:
            start = clock()
            pick(pool, ctx)
            took.append((clock() - start) / 1000.0)
    finally:
        gc.enable()
    return sorted(took)


def run(picks: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    pool = members(rng)
    in_flight = {m.id: rng.randint(0, 8) for m in pool[::3]}
    registry = PolicyRegistry(clock=SystemClock(), rng=random.Random(seed))
    systems = [word_text(rng, 3072) for _ in range(256)]
    rows: list[Row] = []
    for name in registry.names():
        policy = registry.build(name)
        for m in pool:
            policy.observe(m.id, rng.uniform(0.05, 0.5), rng.uniform(0.005, 0.05), 1000, True)
        policy.on_members(pool)
        policy.on_snapshot(pool)
        workload = "4 KB chat prompts"
        if name == "prefix_aware":
            # Warm the index: every system prompt seen several times.
            for ctx in chat_contexts(rng, systems, 2_000, in_flight):
                policy.pick(pool, ctx)
            workload += ", warmed index"
        ctxs = chat_contexts(rng, systems, picks, in_flight)
        took = time_picks(policy, pool, ctxs)
        rows.append(Row(name, workload, percentile(took, 50), percentile(took, 99)))
    rows.append(unique_prompts(rng, pool, in_flight, max(1000, picks // 4)))
    rows.append(long_prompts(rng, pool, in_flight, max(200, picks // 10)))
    return rows


def unique_prompts(
    rng: random.Random, pool: tuple[Member, ...], in_flight: dict[str, int], picks: int
) -> Row:
    """prefix_aware on 4 KB prompts that share nothing: each is new to the index, so each pick
    places it (rendezvous among the members that cost about as little) and evicts for it."""
    policy = PolicyRegistry(clock=SystemClock(), rng=random.Random(1)).build("prefix_aware")
    policy.on_members(pool)
    policy.on_snapshot(pool)

    def contexts(count: int) -> list[PickContext]:
        return [
            context(
                {"model": "m", "messages": [{"role": "user", "content": word_text(rng, 4096)}]},
                in_flight,
            )
            for _ in range(count)
        ]

    for ctx in contexts(2_000):
        policy.pick(pool, ctx)
    took = time_picks(policy, pool, contexts(picks))
    return Row(
        "prefix_aware",
        "4 KB unique prompts, warmed index",
        percentile(took, 50),
        percentile(took, 99),
    )


def long_prompts(
    rng: random.Random, pool: tuple[Member, ...], in_flight: dict[str, int], picks: int
) -> Row:
    """prefix_aware on 32k-token prompts: 64 shared documents, the index warmed with 500."""
    policy = PolicyRegistry(clock=SystemClock(), rng=random.Random(1)).build("prefix_aware")
    policy.on_members(pool)
    policy.on_snapshot(pool)
    documents = [word_text(rng, 120 * 1024) for _ in range(64)]
    for ctx in long_contexts(rng, documents, 500, in_flight):
        policy.pick(pool, ctx)
    questions = [word_text(rng, 8192) for _ in range(picks)]
    took: list[float] = []
    clock = time.perf_counter_ns
    for question in questions:
        # The client's body arrives and is parsed just before the pick, as in the gateway: a
        # 128 KB prompt is in the CPU's cache then, not one of a pregenerated 100 MB.
        body = orjson.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": rng.choice(documents)},
                    {"role": "user", "content": question},
                ],
            }
        )
        ctx = PickContext(model="m", body=body, payload=orjson.loads(body), in_flight=in_flight)
        gc.disable()
        start = clock()
        policy.pick(pool, ctx)
        took.append((clock() - start) / 1000.0)
        gc.enable()
    took.sort()
    return Row(
        "prefix_aware",
        "32k-token chat prompts, warmed index",
        percentile(took, 50),
        percentile(took, 99),
    )


def hook_cost(calls: int) -> list[Row]:
    """What the relay pays per request end: the `observes` check, plus observe() when set."""
    registry = PolicyRegistry()
    rows = []
    for name in ("round_robin", "response_time"):
        policy = registry.build(name)
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(calls):
            if policy.observes:
                policy.observe("replica-01", 0.12, 0.01, 100, True)
        per_call = (clock() - start) / calls / 1000.0
        rows.append(Row(name, "relay observe hook", per_call, per_call))
    return rows


def index_bytes_per_block(blocks: int = 50_000) -> float:
    """Memory of the prefix index per block, measured with tracemalloc."""
    rng = random.Random(1)
    index = PrefixIndex(block_chars=64, max_blocks=blocks, max_prompt_blocks=1024, max_holders=8)
    texts = [word_text(rng, 64 * 64) for _ in range(blocks // 64 + 1)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, text in enumerate(texts):
        index.insert(f"replica-{i % 64:02d}", index.match(text))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(index)


def table(rows: list[Row]) -> str:
    lines = [
        "| policy | workload | p50 us | p99 us |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {r.policy} | {r.workload} | {r.p50_us:.1f} | {r.p99_us:.1f} |" for r in rows]
    return "\n".join(lines)


# The bound on a prefix_aware pick's p99 (issue 14), checked by --runs.
TARGET_P99_US = 100.0


def summary(runs: list[list[Row]]) -> str:
    """prefix_aware's rows of every run, and in how many runs each workload's p99 stayed under
    TARGET_P99_US."""
    lines = ["| run | workload | p50 us | p99 us |", "|---:|---|---:|---:|"]
    held: dict[str, int] = {}
    for n, rows in enumerate(runs, 1):
        for r in rows:
            if r.policy != "prefix_aware":
                continue
            lines.append(f"| {n} | {r.workload} | {r.p50_us:.1f} | {r.p99_us:.1f} |")
            held[r.workload] = held.get(r.workload, 0) + (r.p99_us < TARGET_P99_US)
    lines.append("")
    lines += [
        f"- {workload}: p99 under {TARGET_P99_US:g} us in {k} of {len(runs)} runs"
        for workload, k in held.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pick", description=__doc__)
    p.add_argument("--picks", type=int, default=20_000, help="timed picks per policy")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs one after another (seeds --seed, --seed+1, ...); with more than one, "
        "prefix_aware's rows of each and how many stayed under the p99 target",
    )
    args = p.parse_args(argv)
    rows = run(args.picks, args.seed) + hook_cost(1_000_000)
    version = sys.version.split()[0]
    print(f"Pick time, {MEMBERS} members ({args.picks} picks per policy, Python {version})")
    print()
    print(table(rows))
    print()
    print(f"prefix index: {index_bytes_per_block():.0f} bytes per block (64-char blocks)")
    if args.runs > 1:
        runs = [rows] + [run(args.picks, args.seed + n) for n in range(1, args.runs)]
        print()
        print(f"prefix_aware in {args.runs} runs (seeds {args.seed}-{args.seed + args.runs - 1}):")
        print()
        print(summary(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
