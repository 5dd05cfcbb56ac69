"""Gateways' sends passed on to the other gateways as they happen (GatewayService.ShareSends).

With several gateways each sees only its own requests; the others' reach it as counts in the
next snapshot, a second late, with nothing of their prompts, first bytes or waits. Measured in
virtual time (docs/benchmarks.md, "Every gateway sees every send"), that is what three gateways
lack against one: not a shared index, but every request in flight. So each gateway tells the
others, through here, every send's prompt blocks, its first byte and its end, and each counts
the others' requests as it counts its own. The controller only passes batches on; it keeps
nothing, and while it is away each gateway routes on what it knows.

Bounded: a batch carries at most MAX_EVENTS events, an event at most MAX_HASHES hashes; each
listener queues at most QUEUED batches. A listener that falls that far behind has lost events
(ends it would never hear): its stream is ended, and the gateway drops what it was told and
starts again on a new one."""

from __future__ import annotations

import asyncio
import itertools
import math

from llmpool.v1 import gateway_pb2

# Events in one batch, and block hashes in one event (prefix_aware's max_prompt_blocks is at
# most 256).
MAX_EVENTS = 1024
MAX_HASHES = 256
# Bytes of a model or member name.
MAX_NAME = 256
# Batches waiting for one gateway before its stream is ended.
QUEUED = 1024

_KINDS = frozenset(gateway_pb2.SendEvent.Kind.values())


class Listener:
    """One gateway's ShareSends stream: what the others told, waiting to go out."""

    __slots__ = ("name", "overflowed", "queue")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: asyncio.Queue[gateway_pb2.SendBatch | None] = asyncio.Queue(QUEUED)
        self.overflowed = False

    async def next(self) -> gateway_pb2.SendBatch | None:
        """The next batch to send the gateway; None once its stream should end."""
        if self.overflowed:
            return None
        return await self.queue.get()

    def put(self, batch: gateway_pb2.SendBatch | None) -> None:
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            # Nothing waits on a full queue: the next next() ends the stream.
            self.overflowed = True


class SendRelay:
    """The gateways' ShareSends streams, each batch passed on to every other one at once."""

    def __init__(self) -> None:
        self._listeners: dict[str, Listener] = {}
        self._numbers = itertools.count(1)

    def __len__(self) -> int:
        return len(self._listeners)

    def join(self, gateway_id: str) -> Listener:
        """A gateway's stream opens. Its name is unique to the stream (a reconnect is a new
        sender: its request numbers start again)."""
        name = f"{gateway_id[:MAX_NAME]}#{next(self._numbers)}"
        listener = self._listeners[name] = Listener(name)
        return listener

    def leave(self, listener: Listener) -> None:
        """A gateway's stream ended: the others drop what it told them (an empty batch)."""
        if self._listeners.pop(listener.name, None) is None:
            return
        gone = gateway_pb2.SendBatch(gateway_id=listener.name)
        for other in self._listeners.values():
            other.put(gone)

    def pass_on(self, sender: Listener, batch: gateway_pb2.SendBatch) -> None:
        """Sends a checked batch (invalid()) to every gateway but its sender, named for it."""
        if not batch.events:
            return  # An empty batch means a sender gone; a live one's is nothing.
        batch.gateway_id = sender.name
        for other in self._listeners.values():
            if other is not sender:
                other.put(batch)


def invalid(batch: gateway_pb2.SendBatch) -> str:
    """What is wrong with a gateway's batch ("": nothing)."""
    if len(batch.events) > MAX_EVENTS:
        return f"a batch carries at most {MAX_EVENTS} events"
    for event in batch.events:
        if event.kind not in _KINDS:
            return "unknown event kind"
        if len(event.hashes) > MAX_HASHES:
            return f"an event carries at most {MAX_HASHES} hashes"
        if len(event.model) > MAX_NAME or len(event.member_id) > MAX_NAME:
            return f"model and member names are at most {MAX_NAME} characters"
        if not (math.isfinite(event.ttft_s) and event.ttft_s >= 0.0):
            return "ttft_s must be a finite number of seconds, 0 or more"
    return ""
