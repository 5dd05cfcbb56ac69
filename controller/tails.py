"""Routes LogChunk messages from agents to the admin TailLogs streams waiting for them."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LogChunk:
    """Log lines an agent sent for one tail request (mirrors llmpool.v1.LogChunk)."""

    request_id: str
    replica_id: str = ""
    lines: tuple[str, ...] = ()
    # The tail is over (the replica stopped, or it was not following).
    done: bool = False
    error: str = ""


@dataclass
class Tail:
    request_id: str
    agent_id: str
    # None: the agent went away; no more chunks will come.
    chunks: asyncio.Queue[LogChunk | None] = field(default_factory=asyncio.Queue)


class LogTails:
    def __init__(self) -> None:
        self._tails: dict[str, Tail] = {}

    def open(self, agent_id: str) -> Tail:
        tail = Tail(uuid.uuid4().hex, agent_id)
        self._tails[tail.request_id] = tail
        return tail

    def close(self, request_id: str) -> None:
        self._tails.pop(request_id, None)

    def deliver(self, agent_id: str, chunk: LogChunk) -> None:
        tail = self._tails.get(chunk.request_id)
        # Chunks for a tail that ended or belongs to another agent are dropped.
        if tail is not None and tail.agent_id == agent_id:
            tail.chunks.put_nowait(chunk)

    def agent_gone(self, agent_id: str) -> None:
        for tail in self._tails.values():
            if tail.agent_id == agent_id:
                tail.chunks.put_nowait(None)
