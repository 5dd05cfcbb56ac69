"""The transitions of one supervised replica, I/O-free: state, health, restart backoff, the ready
timeout and the drain deadline, read off an injected clock.

Replica (agent/replica.py) spawns, probes and kills; it tells this object what happened and asks
it what follows, so every timing rule is tested with a fake clock and no process."""

from __future__ import annotations

from collections.abc import Callable

from agent.health import ProbedHealth
from llmpool.backoff import Backoff
from llmpool.clock import Clock
from llmpool.status import ReplicaState


class ReplicaLifecycle(ProbedHealth):
    """STARTING until the readiness probe answers (FAILED if it does not within
    ready_timeout_s), then READY, with health from liveness probes (answered() and
    unanswered(), agent/health.py); FAILED when the process ends, then STARTING again after a
    backoff that starts over once a run lasted stable_s; DRAINING on a stop, then STOPPED.
    on_change fires on state and health changes."""

    def __init__(
        self,
        *,
        ready_timeout_s: float,
        unhealthy_after: int,
        stable_s: float,
        backoff: Backoff,
        clock: Clock,
        on_change: Callable[[], None],
    ) -> None:
        super().__init__(unhealthy_after=unhealthy_after, clock=clock, on_change=on_change)
        self._ready_timeout_s = ready_timeout_s
        self._stable_s = stable_s
        self._backoff = backoff
        self._restarts = 0
        self.last_error = ""
        self._ready_by = 0.0
        self._ready_since: float | None = None
        self._stopping = False
        # Set while a stop waits for in-flight requests: when it began, when the first stop said
        # it must end, and when it must end now (a later stop may bring that forward).
        self._drain_from: float | None = None
        self._drain_asked_by = 0.0
        self._drain_by = 0.0

    # ---- view

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def draining(self) -> bool:
        """The stop waits for in-flight requests to end first (see drain_over)."""
        return self._drain_from is not None

    # ---- a process's life

    def launched(self, note: str = "") -> None:
        """A process was spawned: STARTING until it answers its readiness probe."""
        self.last_error = "no answer yet"
        self._ready_by = self._clock.monotonic() + self._ready_timeout_s
        self.enter(ReplicaState.STARTING, note, healthy=False)

    def not_ready(self, error: str) -> str | None:
        """A readiness probe failed. Returns why to give up on this process once its time to
        get ready is over, else None."""
        self.last_error = error
        if self._clock.monotonic() < self._ready_by:
            return None
        return f"not ready within {self._ready_timeout_s:g}s: {error}"

    def ready(self) -> bool:
        """The readiness probe answered: healthy, and READY unless a stop began meanwhile.
        True when it became READY."""
        self._ready_since = self._clock.monotonic()
        if self._stopping:
            self._healthy = True  # it may serve what is in flight, but stays DRAINING
            return False
        self.enter(ReplicaState.READY, "", healthy=True)
        return True

    def failed(self, reason: str) -> float:
        """The process exited or never got ready (outside a stop): FAILED. Returns the wait
        before the next start; the backoff starts over after a run of stable_s."""
        self.enter(ReplicaState.FAILED, reason, healthy=False)
        since = self._ready_since
        if since is not None and self._clock.monotonic() - since >= self._stable_s:
            self._backoff.reset()
        self._ready_since = None
        delay = self._backoff.delay()
        self._message = f"{reason}; restarting in {delay:.1f}s"
        return delay

    def restarting(self) -> int:
        """The backoff is over and a new process is spawned: the restart count, this one in."""
        self._restarts += 1
        return self._restarts

    # ---- stopping

    def stop(self, drain_s: float) -> bool:
        """A stop. The first one turns DRAINING and, when the replica was READY and drain_s > 0,
        starts a drain of at most drain_s; True. A later one only brings the drain's end
        forward (the controller's word that nothing is in flight); False."""
        now = self._clock.monotonic()
        if self._stopping:
            if self._drain_from is not None:
                self._drain_by = min(self._drain_by, now + drain_s)
            return False
        self._stopping = True
        if self._state is ReplicaState.READY and drain_s > 0:
            self._drain_from = now
            self._drain_asked_by = self._drain_by = now + drain_s
        self.enter(ReplicaState.DRAINING, "stop requested")
        return True

    def drain_over(self, idle: bool) -> str | None:
        """Whether the drain ends now: "idle" (the engine has nothing running or waiting),
        "timed out" (drain_s passed), "ended by the controller" (a later stop's shorter
        deadline passed), or None to keep waiting."""
        if idle or self._drain_from is None:
            return "idle"
        if self.drain_left() > 0:
            return None
        return "ended by the controller" if self._drain_by < self._drain_asked_by else "timed out"

    def drained_s(self) -> float:
        """Seconds since the drain began (0 when there is none)."""
        start = self._drain_from
        return 0.0 if start is None else self._clock.monotonic() - start

    def drain_left(self) -> float:
        """Seconds until the drain's deadline."""
        return self._drain_by - self._clock.monotonic()

    def stopped(self, exit_code: int | None) -> None:
        self._drain_from = None
        note = "stopped" if exit_code is None else f"stopped (exit code {exit_code})"
        self.enter(ReplicaState.STOPPED, note, healthy=False)
