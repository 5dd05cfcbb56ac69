"""Exponential backoff with full jitter, for reconnects and process restarts."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """delay() grows base * factor**attempt up to cap; reset() after a success."""

    def __init__(
        self,
        base: float = 0.2,
        cap: float = 10.0,
        factor: float = 2.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._base = base
        self._cap = cap
        self._factor = factor
        self._jitter = jitter
        self.attempt = 0

    def delay(self) -> float:
        """The next wait; half fixed, half jittered so that many clients do not retry in step."""
        ceiling = min(self._cap, self._base * self._factor**self.attempt)
        self.attempt += 1
        return ceiling / 2 + ceiling / 2 * self._jitter()

    def reset(self) -> None:
        self.attempt = 0


def reconnect_backoff() -> Backoff:
    """Agents' and gateways' reconnects to the controller: capped at 3 s, so all are back
    within about 3 s of a controller restart (a longer cap made recovery wait on the backoff,
    not the controller); full jitter spreads a thousand agents over those 3 s."""
    return Backoff(base=0.2, cap=3.0)
