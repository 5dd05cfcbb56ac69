"""Simple policies: round_robin, weighted_round_robin, least_connections (+ least_in_flight)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext, Policy


class RoundRobin(Policy, name="round_robin"):
    """Each candidate in turn."""

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        return self.in_turn(candidates)


class WeightedRoundRobin(Policy, name="weighted_round_robin"):
    """Smooth weighted round robin (as nginx does it): by Member.weight, evenly interleaved.

    Every pick adds each candidate's weight to its running score, takes the highest score and
    subtracts the total weight from it. Weight 0 gets nothing while any candidate has weight."""

    def configure(self, params: ParamReader) -> None:
        self._score: dict[str, int] = {}

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        best = self._smooth(candidates, weighted=True)
        # All weights are 0: nothing is preferred, so share equally.
        return (
            best if best is not None else self._smooth(candidates, weighted=False) or candidates[0]
        )

    def _smooth(self, candidates: Sequence[Member], *, weighted: bool) -> Member | None:
        score = self._score
        total = 0
        best: Member | None = None
        best_score = 0
        for member in candidates:
            weight = member.weight if weighted else 1
            if weight <= 0:
                continue
            total += weight
            current = score.get(member.id, 0) + weight
            score[member.id] = current
            if best is None or current > best_score:
                best, best_score = member, current
        if best is not None:
            score[best.id] = best_score - total
        return best

    def on_members(self, members: Sequence[Member]) -> None:
        keep = {m.id for m in members}
        self._score = {k: v for k, v in self._score.items() if k in keep}


class LeastConnections(Policy, name="least_connections"):
    """Fewest requests in flight (PickContext.load: this gateway's own, live, plus the other
    gateways'); ties are broken in turn so equal members share the load."""

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        return self.least_loaded(candidates, ctx)


class LeastInFlight(LeastConnections, name="least_in_flight"):
    """The first name of least_connections, kept for existing configs."""
