"""Change notification: one asyncio.Event per listener, set when any state changes."""

from __future__ import annotations

import asyncio


class Changes:
    """Fan-out of 'something changed' to the reconciler and the snapshot publisher."""

    def __init__(self) -> None:
        self._events: list[asyncio.Event] = []

    def listener(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.append(event)
        return event

    def notify(self) -> None:
        for event in self._events:
            event.set()
