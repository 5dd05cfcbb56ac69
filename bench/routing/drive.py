"""The open-loop load generator: sends every request at its scheduled time, streams the answers."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from bench.routing.client import ConnectionPool, Outcome, send
from bench.routing.oracle import AFFINITY_HEADER
from bench.routing.workloads import BenchRequest


@dataclass
class Collected:
    """Client-side measurements of one run, converted to simulated seconds."""

    scheduled: int
    ok: int
    errors: int
    unfinished: int
    wrong_replies: int
    ttfts_s: list[float]  # inf for a request without a first token
    itls_s: list[float]
    tokens: int
    span_s: float
    first_error: str
    members: list[str] = field(default_factory=list)  # who served each request ("": unknown)


async def drive(
    requests: Sequence[BenchRequest],
    target: Callable[[BenchRequest], ConnectionPool],
    model: str,
    speedup: float,
    grace_s: float,
) -> Collected:
    """Open loop: request i leaves at start + at_s / speedup (wall) whether or not earlier ones
    finished. Latency runs from the scheduled time (no coordinated omission). Everything still
    open grace_s (wall) after the last send is abandoned and counted unfinished."""
    bodies = [orjson.dumps(r.body(model)) for r in requests]
    start = time.perf_counter() + 0.05
    end = start + (requests[-1].at_s / speedup if requests else 0.0) + grace_s
    outcomes: list[Outcome | None] = [None] * len(requests)

    async def one(i: int, req: BenchRequest, at: float) -> None:
        outcomes[i] = await send(
            target(req), bodies[i], {AFFINITY_HEADER: req.affinity}, max(0.1, end - at)
        )

    tasks: list[asyncio.Task[None]] = []
    for i, req in enumerate(requests):
        at = start + req.at_s / speedup
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, req, at)))
    if tasks:
        await asyncio.gather(*tasks)
    return collect(requests, outcomes, start, speedup)


def collect(
    requests: Sequence[BenchRequest],
    outcomes: Sequence[Outcome | None],
    start: float,
    speedup: float,
) -> Collected:
    """Pure: turns wall-clock outcomes into simulated-time measurements."""
    ttfts: list[float] = []
    itls: list[float] = []
    ok = errors = unfinished = wrong = tokens = 0
    last = start
    first_error = ""
    members: list[str] = []
    for req, out in zip(requests, outcomes, strict=True):
        members.append(out.member if out is not None else "")
        scheduled = start + req.at_s / speedup
        if out is None or out.first_token_at is None:
            ttfts.append(math.inf)
        else:
            ttfts.append((out.first_token_at - scheduled) * speedup)
        if out is None:
            unfinished += 1
            continue
        tokens += out.tokens
        if out.last_token_at is not None:
            last = max(last, out.last_token_at)
        if out.ok:
            ok += 1
            itl = out.mean_itl()
            if itl is not None:
                itls.append(itl * speedup)
            if req.expected_reply and out.text != req.expected_reply:
                wrong += 1
        elif out.error == "timeout":
            unfinished += 1
        else:
            errors += 1
            first_error = first_error or out.error
    return Collected(
        scheduled=len(requests),
        ok=ok,
        errors=errors,
        unfinished=unfinished,
        wrong_replies=wrong,
        ttfts_s=ttfts,
        itls_s=itls,
        tokens=tokens,
        span_s=(last - start) * speedup,
        first_error=first_error,
        members=members,
    )
