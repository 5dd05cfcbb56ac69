"""A retry budget: retries may add at most `ratio` of the requests on top of them (plus a small
floor per second so that a quiet gateway can still retry), so that in an outage retries do not
multiply the load on members that are already failing (Finagle's and Envoy's rule)."""

from __future__ import annotations

from llmpool.clock import Clock


class RetryBudget:
    def __init__(
        self, clock: Clock, ratio: float = 0.2, floor_per_s: float = 10.0, cap: float = 100.0
    ) -> None:
        self._clock = clock
        self._ratio = ratio
        self._floor_per_s = floor_per_s
        self._cap = cap
        self._tokens = cap
        self._refilled = clock.monotonic()

    def deposit(self) -> None:
        """One request came in (the hot path: one addition)."""
        self._tokens += self._ratio

    def withdraw(self) -> bool:
        """True when a retry may go ahead (and pays for it)."""
        now = self._clock.monotonic()
        tokens = min(self._cap, self._tokens + (now - self._refilled) * self._floor_per_s)
        self._refilled = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
