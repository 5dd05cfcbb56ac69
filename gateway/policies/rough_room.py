"""A rough bound of the cache of a member whose cache nothing has measured yet.

A member of unknown cache (no report, no cap learned) is costed as if it held 262k tokens
(member_capacity_tokens): sending it more evicts nothing, as far as the costs know. Long before
the evidence is enough for a cap (three misses past a depth, cache_estimate.py), one miss says
the member is full: its rough room is the lesser of the depth that splits its hits from one miss
past them (cap_bound(points, 1, 1)), and, for a gateway alone or one that hears every other
gateway's sends (its index sees all the member takes in), what the index held there at the
member's latest miss, for FULL_S. Not a cap (one
slow hit on a busy host makes either up, and nothing is forgotten for it): only the room pick()
costs the member by (Columns.room). Seen without it: two multi-turn sessions that outgrew a
16k-token engine moved onto the 8k one, which had just missed and forgotten a session and so
looked the least loaded and least filled for a guessed room; both then missed turn after turn
(0.37-0.79 s against 0.15 s)."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.policies.prefix_index import PrefixIndex
from llmpool.cache_bound import cap_bound

# Seconds what the index held at a member's latest miss bounds its rough room (a gateway alone).
FULL_S = 30.0


class RoughRooms:
    def __init__(self, index: PrefixIndex) -> None:
        self.index = index
        # Per member, the bound in units (read by Columns.room).
        self.rough: dict[str, float] = {}
        # Whether this gateway's index sees all its members take in (no other gateway, or it
        # hears all their sends: PrefixAware.hears_all).
        self.alone = True
        self._split: dict[str, float] = {}
        self._full: dict[str, tuple[float, float]] = {}

    def verdict(
        self,
        member: str,
        points: Iterable[tuple[int, bool]],
        reach: int,
        hit: bool,
        held: int,
        now: float,
    ) -> None:
        """A prediction at member was decided (`points`: its verdicts with their depth, this
        one's included when its `reach` is known; `held`: units the index held there before a
        miss forgot anything)."""
        if not hit and self.alone and held > 0:
            # (Nothing held of its own there: the prompt was another gateway's claim, which
            # says nothing of this member's room.)
            self._full[member] = (now, float(held))
        if reach:
            split = self._split.get(member)
            if not hit or (split is not None and reach > split):
                found = cap_bound(points, 1, 1)
                if found is None:
                    self._split.pop(member, None)
                else:
                    self._split[member] = found
        found = self._split.get(member)
        full = self._full.get(member)
        if full is not None:
            if now - full[0] > FULL_S:
                del self._full[member]
            elif found is None or full[1] < found:
                found = full[1]
        if found != self.rough.get(member):
            if found is None:
                del self.rough[member]
            else:
                self.rough[member] = found
            # Its room in pick()'s columns changes with it.
            self.index.changed.add(self.index.record(member))

    def forget(self, keep: set[str]) -> None:
        for table in (self.rough, self._split, self._full):
            for m in [m for m in table if m not in keep]:
                del table[m]
