"""An engine's state, health and status message as the agent's probes tell them, I/O-free:
a streak of failed liveness probes marks it unhealthy, one answer heals it. Supervised replicas
(agent/lifecycle.py) and attached engines (agent/attached.py) both build on it."""

from __future__ import annotations

from collections.abc import Callable

from llmpool.clock import Clock
from llmpool.status import ReplicaState


class ProbedHealth:
    """STARTING, unhealthy and without a message until told otherwise; on_change fires on
    state and health changes."""

    def __init__(
        self,
        *,
        unhealthy_after: int,
        clock: Clock,
        on_change: Callable[[], None],
        message: str = "",
    ) -> None:
        self._unhealthy_after = unhealthy_after
        self._clock = clock
        self._on_change = on_change
        self._state = ReplicaState.STARTING
        self._healthy = False
        self._message = message
        self._failures = 0
        # When the first failed probe of the current streak came.
        self._failing_since: float | None = None

    @property
    def state(self) -> ReplicaState:
        return self._state

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def message(self) -> str:
        return self._message

    def answered(self) -> bool:
        """A liveness probe answered: the streak of failures ends. True when that healed it."""
        streak, self._failures, self._failing_since = self._failures, 0, None
        if streak:
            self._message = ""
        if self._healthy:
            return False
        self._healthy = True
        self._message = ""
        self._on_change()
        return True

    def unanswered(self, error: str) -> bool:
        """A liveness probe failed. True when this made it unhealthy."""
        now = self._clock.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        failing_s = now - self._failing_since
        self._message = f"{self._failures} failed health probes in {failing_s:.1f}s: {error}"
        if not self._healthy or self._failures < self._unhealthy_after:
            return False
        self._healthy = False
        self._on_change()
        return True

    def note(self, message: str) -> None:
        """A new message for people, nothing else changed."""
        self._message = message

    def enter(self, state: ReplicaState, message: str, *, healthy: bool | None = None) -> None:
        """A new state (and health, when given); the failure streak starts over."""
        self._state = state
        self._message = message
        if healthy is not None:
            self._healthy = healthy
        self._failures, self._failing_since = 0, None
        self._on_change()
