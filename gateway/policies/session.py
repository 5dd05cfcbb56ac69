"""session: sticky by a session header or the `user` field, bounded-load consistent hashing."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext, Policy
from gateway.policies.hash_ring import HashRing


class Session(Policy, name="session"):
    """The same session goes to the same member while that member is not overloaded.

    The key is the `header` request header, else the body's `user`. Keys are hashed onto a ring
    of the route's members (`vnodes` points each); a key takes the first member clockwise whose
    in-flight count (PickContext.loads) is below ceil(load_factor x (total + 1) / n), so no member
    holds more than load_factor times the mean. Requests without a key go to the least loaded."""

    def configure(self, params: ParamReader) -> None:
        self.header = params.text("header", "x-session-id").lower()
        self.load_factor = params.number("load_factor", 1.25, min=1.0)
        self.vnodes = params.integer("vnodes", 100, min=1, max=10000)
        self._ring = HashRing((), self.vnodes)
        # The candidates tuple last seen (one per snapshot, or per retry) and each member's
        # position in it, so a pick does no per-member dict building.
        self._seen: Sequence[Member] = ()
        self._positions: dict[str, int] = {}

    def on_members(self, members: Sequence[Member]) -> None:
        self._ring = HashRing((m.id for m in members), self.vnodes)

    def key(self, ctx: PickContext) -> str | None:
        value = ctx.headers.get(self.header)
        return value if value else ctx.user

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        key = self.key(ctx)
        if key is None:
            return self.least_loaded(candidates, ctx)
        positions = self._positions_of(candidates)
        loads = ctx.loads(candidates)
        cap = math.ceil(self.load_factor * (sum(loads) + 1) / len(candidates))
        chosen = self._ring.first(
            key, lambda m: (i := positions.get(m)) is not None and loads[i] < cap
        )
        # None cannot happen (some load is below the mean), but stay total.
        return candidates[positions[chosen] if chosen is not None else loads.index(min(loads))]

    def _positions_of(self, candidates: Sequence[Member]) -> dict[str, int]:
        if candidates is not self._seen:
            self._seen = candidates
            self._positions = {m.id: i for i, m in enumerate(candidates)}
            if not self._ring.members.issuperset(self._positions):
                self._ring = HashRing(self._ring.members | self._positions.keys(), self.vnodes)
        return self._positions
