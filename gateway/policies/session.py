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

    def on_members(self, members: Sequence[Member]) -> None:
        self._ring = HashRing((m.id for m in members), self.vnodes)

    def key(self, ctx: PickContext) -> str | None:
        value = ctx.headers.get(self.header)
        return value if value else ctx.user

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        key = self.key(ctx)
        if key is None:
            return self.least_loaded(candidates, ctx)
        loads = dict(zip((m.id for m in candidates), ctx.loads(candidates), strict=True))
        ring = self._ring
        if not ring.members.issuperset(loads):
            self._ring = ring = HashRing(ring.members | loads.keys(), self.vnodes)
        cap = math.ceil(self.load_factor * (sum(loads.values()) + 1) / len(candidates))
        chosen = ring.first(key, lambda m: m in loads and loads[m] < cap)
        if chosen is None:  # Cannot happen (some load is below the mean), but stay total.
            chosen = min(loads, key=loads.__getitem__)
        return next(m for m in candidates if m.id == chosen)
