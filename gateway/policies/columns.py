"""What prefix_aware's pick reads of each candidate, kept between picks in flat lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.members import Member
from gateway.policies.prefix_index import Held, PrefixIndex


class Columns:
    """Per candidate, in the route's order: its id, its record in the index, the cost of the
    other gateways' requests in flight there, and its room left and units sent there once.
    Built for one tuple of candidates and one usage report; the last two follow the records
    the index changed (`refresh`). In lists, the first pass reads two short arrays rather than
    64 records (each two cache lines and three integer objects away: the pass is mostly cache
    misses when it runs only now and then)."""

    __slots__ = (
        "base",
        "candidates",
        "floor",
        "free",
        "ids",
        "position",
        "records",
        "reported",
        "singles",
        "slot",
    )

    def __init__(
        self,
        candidates: Sequence[Member],
        reported: Mapping[str, int],
        index: PrefixIndex,
        request_blocks: float,
    ) -> None:
        index.changed.clear()  # Read afresh below.
        self.candidates = candidates
        self.reported = reported
        self.ids = ids = [m.id for m in candidates]
        self.records = records = [index.record(mid) for mid in ids]
        # The other gateways' requests in flight there (Member.in_flight, the controller's
        # aggregate, less what this gateway last reported of its own), in units.
        self.base = base = [
            request_blocks * max(m.in_flight - reported.get(m.id, 0), 0) for m in candidates
        ]
        # No member costs less than this (what holding part of a prompt takes off aside).
        self.floor = min(base, default=0.0)
        self.position = {mid: i for i, mid in enumerate(ids)}
        self.slot = {r: i for i, r in enumerate(records)}
        self.free = [r.room - r.units for r in records]
        self.singles = [r.singles for r in records]

    def refresh(self, changed: set[Held]) -> None:
        """Takes the changes of the records in `changed` (emptied)."""
        slot = self.slot.get
        free = self.free
        singles = self.singles
        for r in changed:
            i = slot(r)
            if i is not None:
                free[i] = r.room - r.units
                singles[i] = r.singles
        changed.clear()
