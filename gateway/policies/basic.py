"""Simple policies: round_robin, weighted_round_robin, least_connections (+ least_in_flight)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext, Policy


def in_flight_load(member: Member, ctx: PickContext) -> float:
    """Requests in flight: this gateway's own (live) plus the controller's aggregate."""
    return ctx.in_flight.get(member.id, 0) + member.in_flight


class RoundRobin(Policy, name="round_robin"):
    """Each candidate in turn."""

    _next = 0

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        member = candidates[self._next % len(candidates)]
        self._next += 1
        return member


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
    """Fewest requests in flight: this gateway's own, live, plus the other gateways' (the
    controller's aggregate less what this gateway last reported, so ours count once); ties are
    broken round robin so equal members share the load."""

    _next = 0

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        own, reported = ctx.in_flight, ctx.reported_in_flight
        best_load = float("inf")
        tied: list[Member] = []
        for member in candidates:
            others = member.in_flight - reported.get(member.id, 0)
            load = own.get(member.id, 0) + (others if others > 0 else 0.0)
            if load < best_load:
                best_load, tied = load, [member]
            elif load == best_load:
                tied.append(member)
        choice = tied[self._next % len(tied)]
        self._next += 1
        return choice


class LeastInFlight(LeastConnections, name="least_in_flight"):
    """The first name of least_connections, kept for existing configs."""
