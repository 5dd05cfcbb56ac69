"""After a restart the controller knows what it decided (the store) but not yet what runs (the
agents). Until the agents its assignments name have registered again, or grace_s passes, its
routing tables are provisional: a replica missing from them may only be an agent that has not
reconnected yet, so gateways merge such tables into the ones they hold instead of replacing them,
and the reconciler neither forgets nor replaces those agents' replicas."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llmpool.clock import Clock


class RestartGrace:
    def __init__(
        self,
        expected: Iterable[str],
        grace_s: float,
        clock: Clock,
        registered: Callable[[str], bool],
    ) -> None:
        self._expected = frozenset(expected)
        self.grace_s = grace_s
        self._clock = clock
        self._registered = registered
        self._started = clock.monotonic()
        # Sticky: once settled, an agent that goes away later is ordinary news, not a restart.
        self._settled = not self._expected or grace_s <= 0

    def settled(self) -> bool:
        if not self._settled and (self.remaining_s() <= 0 or not self.waiting_for()):
            self._settled = True
        return self._settled

    def waiting_for(self) -> list[str]:
        """Expected agents not heard from since the restart."""
        if self._settled:
            return []
        return sorted(a for a in self._expected if not self._registered(a))

    def remaining_s(self) -> float:
        return max(0.0, self.grace_s - (self._clock.monotonic() - self._started))

    def in_grace(self, agent_id: str) -> bool:
        """Whether an agent that has not registered since the restart still gets time."""
        return not self.settled() and agent_id in self._expected

    def message(self) -> str:
        """Why tables are provisional, for GetPoolStatus; empty once settled."""
        waiting = self.waiting_for() if not self.settled() else []
        if not waiting:
            return ""
        shown = ", ".join(waiting[:5]) + (
            f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        )
        return (
            f"controller restarted: waiting up to {self.remaining_s():.0f} s for agent(s) "
            f"{shown} before replacing their replicas"
        )
