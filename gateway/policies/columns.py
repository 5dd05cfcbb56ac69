"""What prefix_aware's pick reads of each candidate, kept between picks in flat lists."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from gateway.members import Member
from gateway.policies.held import Held
from gateway.policies.prefix_index import PrefixIndex


class Columns:
    """Per candidate, in the route's order: its id, its record in the index, the cost of the
    other gateways' requests in flight there, and its room left, share of its room held and
    units sent there once.
    Built for one tuple of candidates and one usage report; the last two follow the records
    the index changed (`refresh`). In lists, the first pass (`costs`) reads two short arrays
    rather than 64 records (each two cache lines and three integer objects away: the pass is
    mostly cache misses when it runs only now and then), and a bound below it (`least_cost`)
    is two minimums of lists kept alongside.

    Eviction is weighed `evict` a unit for a member's one-off blocks (LRU takes them first),
    `hot` for the rest."""

    __slots__ = (
        "base",
        "candidates",
        "changed",
        "evict",
        "fill",
        "floor",
        "free",
        "guessed",
        "highs",
        "hot",
        "ids",
        "known",
        "lo",
        "lows",
        "position",
        "records",
        "reported",
        "rough",
        "singles",
        "slot",
    )

    def __init__(
        self,
        candidates: Sequence[Member],
        reported: Mapping[str, int],
        index: PrefixIndex,
        request_blocks: float,
        evict: float,
        hot: float,
        rough: Mapping[str, float],
    ) -> None:
        index.changed.clear()  # Read afresh below.
        self.changed: set[Held] = index.changed
        self.candidates = candidates
        self.reported = reported
        self.evict = evict
        self.hot = hot
        self.lo = min(evict, hot)
        self.ids = ids = [m.id for m in candidates]
        self.records = records = [index.record(mid) for mid in ids]
        # The other gateways' requests in flight there (Member.in_flight, the controller's
        # aggregate, less what this gateway last reported of its own), in units.
        self.base = [
            request_blocks * max(m.in_flight - reported.get(m.id, 0), 0) for m in candidates
        ]
        # No member costs less than this (what holding part of a prompt takes off aside).
        self.floor = min(self.base, default=0.0)
        self.position = {mid: i for i, mid in enumerate(ids)}
        self.slot = {r: i for i, r in enumerate(records)}
        # Members of unknown cache that missed past some depth are taken to hold no more than
        # that (RoughRooms.rough; the same dict, kept up to date: a change marks the record).
        self.rough = rough
        rooms = [self.room(i) for i in range(len(records))]
        self.free = [room - r.units for r, room in zip(records, rooms, strict=True)]
        # What the index holds there for its room, and how many candidates have no cap of
        # their own (reported or learned): prefix_aware balances new prefixes on these.
        self.fill = [r.units / room for r, room in zip(records, rooms, strict=True)]
        self.known = [bool(r.cap) for r in records]
        self.guessed = self.known.count(False)
        self.singles = [r.singles for r in records]
        # least_cost's terms per candidate (see there).
        self.lows = [0.0] * len(records)
        self.highs = [0.0] * len(records) if hot > evict else []
        for i in range(len(records)):
            self._terms(i)

    def room(self, i: int) -> float:
        """Candidate i's room: its record's, or, for one of unknown cache (no cap) that missed
        past some depth, no more than that (rough)."""
        record = self.records[i]
        room = record.room
        rough = self.rough
        if rough and not record.cap:
            bound = rough.get(self.ids[i])
            if bound is not None and bound < room:
                return bound
        return room

    def _terms(self, i: int) -> None:
        c, f = self.base[i], self.free[i]
        self.lows[i] = c - self.lo * f
        if self.highs:
            self.highs[i] = c - self.hot * f - (self.hot - self.evict) * self.singles[i]

    def refresh(self) -> None:
        """Takes the changes of the records the index changed since (PrefixIndex.changed,
        emptied)."""
        changed = self.changed
        if not changed:
            return
        slot = self.slot.get
        free = self.free
        fill = self.fill
        singles = self.singles
        for r in changed:
            i = slot(r)
            if i is not None:
                room = self.room(i)
                free[i] = room - r.units
                fill[i] = r.units / room
                singles[i] = r.singles
                self._terms(i)
                if bool(r.cap) != self.known[i]:
                    self.known[i] = not self.known[i]
                    self.guessed += -1 if r.cap else 1
        changed.clear()

    def least_filled(self, near: list[int], chosen: int, units: float) -> list[int] | None:
        """Of the candidates in near (positions), those holding, for their room, no more than
        `units` over the least filled of them; None when `chosen` is one (checked first against
        the least of all candidates, one pass in C: most often it is).

        prefix_aware places a new prefix by rendezvous among these while some member's cache
        is unknown: every room is then the same guess, costs do not tell members apart, and
        rendezvous alone put 3 or 4 of 8 prompt groups on one of four members about half the
        time, thrashing it from the first second (four 16k-token engines, one gateway: p99
        0.62 s against the oracle's 0.14 s; spread evenly, 0.15 s). Only for a gateway alone:
        others count their own sends until the controller tells them the rest a second later,
        so their fills differ and each would put a prefix elsewhere."""
        fill = self.fill
        room = self.room
        if fill[chosen] <= min(fill) + units / room(chosen):
            return None
        least = min([fill[i] for i in near])
        kept = [i for i in near if fill[i] <= least + units / room(i)]
        return None if chosen in kept else kept

    def spill_costs(self, costs: list[float], holders: Collection[str], units: float) -> None:
        """Adds `units` to the cost of every candidate of unknown cache (no cap) that is not
        among the prompt's holders. A prompt held on some members, sent to one whose cache
        nothing measured: its room is a guess (262k tokens) that no eviction is costed
        against, yet the prompt now sits on two members, and in a full cache it pushes out as
        much (hot prompts of other groups, which miss in turn); prefix_aware costs it so
        (evict_weight x the prompt), after charge_queues: a holder whose queue is what makes
        it dear keeps the prompt until that queue costs more than twice its prefill (one the
        first pass already put out of reach, past the slack, is not brought back). Seen
        without it: four 16k-token engines, eight prompt groups, one gateway, seed 6: busy
        holders spilled groups onto members already holding two, those thrashed and the
        groups spread over three members each (p99 1.03 s against the oracle's 0.14; 0.146
        with it, 0.137-0.148 at seeds 5 to 9). Only for a gateway alone: with others, its
        index's holder may be where another gateway moved the prompt from, and this kept
        sessions there (multi-turn, three gateways, seeds 6 and 7: 0.54 and 0.50 s against
        0.16 and 0.39)."""
        known = self.known
        for i, mid in enumerate(self.ids):
            if not known[i] and mid not in holders:
                costs[i] += units

    def costs(self, units: int) -> list[float]:
        """Every candidate's cost as one that holds none of a prompt of `units` and has none of
        our requests in flight (most of them, most of the time): the other gateways' requests
        there (base), and what the prompt's blocks would evict (LRU takes the oldest first:
        the one-off blocks, then the hot ones). The prompt's own blocks are left out: the
        same for every member."""
        self.refresh()
        evict, hot = self.evict, self.hot
        extra = hot - evict
        return [
            ((c + hot * over - extra * s) if over > s else c + evict * over)
            if (over := units - f) > 0
            else c
            for c, f, s in zip(self.base, self.free, self.singles, strict=True)
        ]

    def least_cost(self, units: int) -> float:
        """A bound below every one of costs(units): sent to member j, the prompt evicts over =
        units - free[j] there (nothing when <= 0), singles[j] of it at `evict` a unit and the
        rest at `hot`, so j costs at least base[j] + lo x over (lo the lesser weight: lows[j]
        + lo x units) and, with hot the greater, at least base[j] + hot x over - (hot - evict)
        x singles[j] (highs[j] + hot x units): the least of each is one minimum of a list kept
        between picks. Below floor unless caches are full, as they mostly are: then a long
        prompt evicts wherever it goes. (Less a millionth of a unit: the terms are summed in
        another order than costs', and rounding must not lift the bound over a cost.)"""
        self.refresh()
        if not self.lows:
            return 0.0
        bound = self.lo * units + min(self.lows)
        if self.highs:
            bound = max(bound, self.hot * units + min(self.highs))
        return bound - 1e-6


def evicted(record: Held, new: float, evict: float, hot: float, room: float) -> float:
    """What sending `new` units to the member evicts there (its room `room`: Columns.room),
    weighed (Columns.costs inlines the same for speed): LRU takes the oldest first, the
    one-off blocks (`evict` a unit), then the hot ones (`hot`)."""
    over = record.units + new - room
    if over <= 0:
        return 0.0
    if over > new:
        over = new
    hot_over = over - record.singles
    return evict * over + ((hot - evict) * hot_over if hot_over > 0 else 0.0)
