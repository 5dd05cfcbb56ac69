"""A bounded ring of a replica's output lines, with followers that get new lines as they come."""

from __future__ import annotations

import asyncio
from collections import deque

# A line longer than this is cut: one runaway line must not fill the ring's memory.
MAX_LINE_CHARS = 8192


class Follower:
    """New lines of one ring for one reader; next_batch() returns [] once the ring is closed."""

    def __init__(self, ring: LogRing, max_pending: int) -> None:
        self._ring = ring
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=max_pending)
        self.dropped = 0

    def _push(self, line: str | None) -> None:
        try:
            self._queue.put_nowait(line)
        except asyncio.QueueFull:
            # A slow reader loses lines rather than growing memory without bound.
            self.dropped += 1

    def _close(self) -> None:
        # The end marker must get through even when the queue is full.
        while self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(None)

    async def next_batch(self, max_lines: int = 500, linger_s: float = 0.05) -> list[str]:
        """Waits for at least one line, lingers briefly to batch more; [] at the end."""
        first = await self._queue.get()
        if first is None:
            self._queue.put_nowait(None)
            return []
        batch = [first]
        if linger_s > 0:
            await asyncio.sleep(linger_s)
        while len(batch) < max_lines and not self._queue.empty():
            line = self._queue.get_nowait()
            if line is None:
                # Keep the end marker for the next call so this batch is still delivered.
                self._queue.put_nowait(None)
                break
            batch.append(line)
        return batch

    def close(self) -> None:
        self._ring.unfollow(self)


class LogRing:
    """The last `maxlen` lines of one replica across its restarts."""

    def __init__(self, maxlen: int = 1000, follower_pending: int = 10000) -> None:
        self._lines: deque[str] = deque(maxlen=maxlen)
        self._followers: set[Follower] = set()
        self._follower_pending = follower_pending
        self.closed = False

    def append(self, line: str) -> None:
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + "...[cut]"
        self._lines.append(line)
        for follower in self._followers:
            follower._push(line)

    def tail(self, lines: int) -> list[str]:
        if lines <= 0:
            return []
        return list(self._lines)[-lines:]

    def follow(self) -> Follower:
        """A follower of lines appended from now on (take tail() in the same step: no gap)."""
        follower = Follower(self, self._follower_pending)
        if self.closed:
            follower._close()
        else:
            self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)

    @property
    def follower_count(self) -> int:
        return len(self._followers)

    def close(self) -> None:
        """The replica is gone: every follower gets the end."""
        self.closed = True
        for follower in self._followers:
            follower._close()
        self._followers.clear()
