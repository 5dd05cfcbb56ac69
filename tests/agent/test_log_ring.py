"""The per-replica log ring and its followers."""

from __future__ import annotations

import asyncio

from agent.commands import split_chunks
from agent.log_ring import MAX_LINE_CHARS, LogRing


def test_ring_keeps_last_lines_only() -> None:
    ring = LogRing(maxlen=3)
    for i in range(5):
        ring.append(f"line {i}")
    assert ring.tail(10) == ["line 2", "line 3", "line 4"]
    assert ring.tail(1) == ["line 4"]
    assert ring.tail(0) == []


def test_long_lines_are_cut() -> None:
    ring = LogRing()
    ring.append("x" * (MAX_LINE_CHARS * 2))
    assert len(ring.tail(1)[0]) < MAX_LINE_CHARS + 20


async def test_follower_gets_new_lines_in_batches_then_end() -> None:
    ring = LogRing()
    ring.append("old")
    follower = ring.follow()
    for i in range(3):
        ring.append(f"new {i}")
    assert await follower.next_batch(linger_s=0) == ["new 0", "new 1", "new 2"]
    ring.append("last")
    ring.close()
    assert await follower.next_batch(linger_s=0) == ["last"]
    assert await follower.next_batch(linger_s=0) == []
    assert ring.follower_count == 0


async def test_slow_follower_drops_lines_but_still_sees_the_end() -> None:
    ring = LogRing(follower_pending=2)
    follower = ring.follow()
    for i in range(5):
        ring.append(str(i))
    ring.close()
    got: list[str] = []
    while batch := await asyncio.wait_for(follower.next_batch(linger_s=0), 1):
        got.extend(batch)
    assert follower.dropped > 0
    assert len(got) < 5


def test_unfollow_stops_delivery() -> None:
    ring = LogRing()
    follower = ring.follow()
    follower.close()
    ring.append("x")
    assert ring.follower_count == 0


def test_split_chunks_bounds_bytes() -> None:
    lines = ["a" * 100] * 10
    chunks = split_chunks(lines, max_bytes=350)
    assert sum(len(c) for c in chunks) == 10
    assert all(len(c) <= 3 for c in chunks)
    assert split_chunks([]) == [[]]
