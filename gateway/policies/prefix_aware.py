"""prefix_aware: send a prompt where the least work is left to do, counting its cached prefix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.members import Member
from gateway.policies.backlog import Backlog, charge_queues
from gateway.policies.base import ParamReader, PickContext, Policy
from gateway.policies.cache_estimate import CacheSizer
from gateway.policies.columns import Columns, evicted
from gateway.policies.holders import cheapest_holder, drop_ended
from gateway.policies.homes import Homes, overloaded
from gateway.policies.kv_room import KvRooms
from gateway.policies.missed import MissedPrefixes
from gateway.policies.placement import Placement
from gateway.policies.prefix_index import Match, PrefixIndex
from gateway.policies.prefix_reports import PrefixReports
from gateway.policies.prefix_sends import PrefixSends
from gateway.policies.shared_sends import SharedSends
from gateway.policies.ticket import Ticket

# Converts token counts to index units; English text and code run 3.5-4.5 bytes a token with
# common tokenizers, and an estimate on the high side only makes the index forget a little late.
CHARS_PER_TOKEN = 4
# The index's first blocks hold at least this many tokens (more when engines' blocks are larger).
BLOCK_TOKENS = 32
# How fast the chance that a prefix new to this gateway is already cached at its home follows
# what answers show.
_SHARED_ALPHA = 0.05
# While more than this share of prefixes new to this gateway turn out cached at their place
# already (other gateways put them there), a new prefix's place is judged as they judge it.
_SHARED_PLACE = 0.1
# What a gateway that hears all takes the others' sends in usage reports to be (pick()).
_NOT_PLACED: Mapping[int, tuple[str, ...]] = {}


class PrefixAware(PrefixReports, PrefixSends, Policy, name="prefix_aware"):
    """Prefix-cache-aware routing by estimated work, after Dynamo's KV router (see
    docs/policies.md). For each candidate, in units of the index's first block size:

        cost = new units       (the prompt's blocks it does not hold: prefill it must do)
             + evicted units   (what those push out of a full cache: re-prefilled later;
                                a block sent there more than once, a hot shared prefix or
                                an earlier turn, costs hot_evict_weight, others
                                evict_weight; the one-off blocks are taken as the oldest)
             + queued units    (new units of our requests to it not prefilled yet, drained
                                at the member's prefill speed in the order sent)
             + active_weight x new units of our requests still in flight there
             + request_blocks x requests in flight (PickContext.loads)
             + stalled units   (how far the oldest of our requests there still without a
                                first byte is past twice the longest a prefill of its whole
                                prompt after our queue ahead of it could take: an engine
                                thrashing, queueing behind other gateways' work or stuck,
                                seen as it happens rather than when answers end)
             + room units      (the wait for KV room, at a member seen unable to run as much
                                prompt at once as ours running there and this one: kv_room.py)
             + spilled units   (a gateway alone, a prompt held elsewhere sent to a member of
                                unknown cache: as many as it brings, taken to evict as much)

    Queued and active leave out this prompt's own prefix: its prefill, under way there, is
    shared rather than repeated elsewhere.

    The cheapest member gets the request (ties: deeper match, then more recent holder, then in
    turn); a holder that costs less than any member could (the others' requests in flight
    alone) gets it without the others being costed. A prompt going where this gateway's index
    says nothing of it is cached (a new prefix, or one spilling from a busy holder) goes to its
    prefix's place among the members without it (the same member on every gateway, see
    placement.py) unless that costs more than the chance, learned, that another gateway put it
    there already is worth (or half a request's load, whichever is more). Each member's cache
    size and prefill speed are taken from its report and then learned from its answers
    (cache_estimate.py); the params are only where the learning starts."""

    def configure(self, params: ParamReader) -> None:
        self._explicit_block = "block_chars" in self.params
        block_chars = params.integer(
            "block_chars", BLOCK_TOKENS * CHARS_PER_TOKEN, min=8, max=65536
        )
        capacity_tokens = params.integer("member_capacity_tokens", 262144, min=1)
        self._index_args = {
            "max_blocks": params.integer("max_blocks", 131072, min=1),
            "max_prompt_blocks": params.integer("max_prompt_blocks", 128, min=1, max=256),
            "max_holders": params.integer("max_holders", 8, min=1, max=1024),
        }
        self._capacity_tokens = capacity_tokens
        self.request_blocks = params.number("request_blocks", 4.0, min=0.0)
        self.evict_weight = params.number("evict_weight", 1.0, min=0.0)
        self.hot_evict_weight = params.number("hot_evict_weight", 2.0, min=0.0)
        self.active_weight = params.number("active_weight", 0.5, min=0.0)
        # What holders.cheapest_holder weighs by, kept together (not a tuple per pick).
        self._holder_weights = (
            self.request_blocks,
            self.active_weight,
            self.evict_weight,
            self.hot_evict_weight,
        )
        self._prefill_rate = params.number("prefill_tokens_per_s", 8000.0, min=1.0)
        # Gateways routing with this controller (0: not known; on_gateways).
        self.gateways = 0
        # Whether this gateway hears every other gateway's sends as they happen (set by
        # gateway/pool_sends.py while its stream is up): it then sees every request in flight
        # and places and spills as a gateway alone does.
        self._hears_all = False
        self._build_index(block_chars)
        self.placement = Placement(capacity_tokens)
        # Chance that a prefix new to this gateway is already cached at its place.
        self.shared = 0.25
        # Where prefixes were found missing (missed.py): placement passes those members over.
        self.missed = MissedPrefixes()
        # With several gateways, each recurring prefix's home (the controller's, homes.py).
        self.homes = Homes()

    def _build_index(self, block_chars: int) -> None:
        self.index = PrefixIndex(
            block_chars=block_chars,
            member_blocks=max(1, self._capacity_tokens * CHARS_PER_TOKEN // block_chars),
            **self._index_args,
        )
        self.sizer = CacheSizer(self.index, CHARS_PER_TOKEN)
        self.sizer.rooms.alone = self.sees_all
        # What other gateways sent members lately (shared_sends.py), counted in this index.
        self.sends = SharedSends()
        # Backlogs point at the index's per-member records: a new index, new backlogs.
        self._backlog: dict[str, Backlog] = {}
        # Those with requests in flight (entries) as last seen.
        self._busy: dict[str, Backlog] = {}
        # What each member was seen unable to run at once (kv_room.py), in this index's units.
        self.kv_rooms = KvRooms()
        self._cols: Columns | None = None
        self.drain_blocks_per_s = self._prefill_rate * CHARS_PER_TOKEN / block_chars

    def on_gateways(self, count: int) -> None:
        self.gateways = count
        self.sizer.rooms.alone = self.sees_all

    @property
    def hears_all(self) -> bool:
        return self._hears_all

    @hears_all.setter
    def hears_all(self, value: bool) -> None:
        # Set on every send (gateway/pool_sends.py): only a change does anything.
        if value != self._hears_all:
            self._hears_all = value
            self.sizer.rooms.alone = self.sees_all

    @property
    def sees_all(self) -> bool:
        """Whether this gateway's index holds every send to its members, as an engine takes
        them in: it is alone, or hears the others' sends. A miss then bounds the member's room
        by what the index held (rough_room.py), and a spill onto a member of unknown cache is
        costed (Columns.spill_costs)."""
        return self.gateways <= 1 or self._hears_all

    @property
    def shares(self) -> bool:
        """Whether this gateway tells the others its sends as they happen (seen_sent): with
        several gateways, each sees every request in flight, as a gateway alone does."""
        return self.gateways > 1

    def on_snapshot(self, members: Sequence[Member]) -> None:
        """Members whose engine reports its KV cache are bounded by that (what an engine says
        of itself beats member_capacity_tokens, a guess that fits no engine); an index not yet
        used takes blocks a whole number of the engines' blocks long."""
        block = max((m.cache_block_size for m in members), default=0)
        if block > 0 and not self._explicit_block and not len(self.index):
            size = block * CHARS_PER_TOKEN
            chars = size * -(-BLOCK_TOKENS * CHARS_PER_TOKEN // size)
            if chars != self.index.block_chars:
                self._build_index(chars)
        sizer = self.sizer
        for m in members:
            if m.cache_tokens > 0:
                sizer.on_report(m.id, m.cache_tokens)
            sizer.on_shared(m.id, m.learned_cache_tokens)
        handed = [(m.id, prefix) for m in members for prefix in m.missed_prefixes]
        for mid, prefix in self.missed.told(handed):
            # Another gateway found it missing there: its first block forgotten (a prompt's
            # walk stops there).
            self.index.unhold(mid, (prefix,))
        sends = self.sends
        units_per_token = CHARS_PER_TOKEN / self.index.block_chars
        index = self.index
        now = self.clock.monotonic()
        if self.gateways > 1:
            self.homes.take(members, index, now)
        else:
            self.homes.clear()
        if sends.told(members, index.held_by, units_per_token, now, self._known_cap):
            self._count_foreign(m.id for m in members)
            for mid, units in sends.arrived.items():
                index.record(mid).sent += units
        # Answers are judged by the speed the gateways learned together (the controller's
        # median of theirs, this one's among them): one gateway's first samples can be far off.
        speeds = sorted(
            m.learned_prefill_s_per_token for m in members if m.learned_prefill_s_per_token > 0
        )
        if speeds:
            sizer.on_shared_speed(speeds[len(speeds) // 2])
        self.placement.update(members)

    def _home(self, prefix: int, ids: Sequence[str]) -> str:
        """The prefix's place among ids by rendezvous, passing over where it was found missing
        ("": none left)."""
        passed = self.missed.passes_over(prefix)
        free = [mid for mid in ids if mid not in passed] if passed else ids
        return free[self.placement.choose(prefix, free)] if free else ""

    def _known_cap(self, member_id: str) -> int:
        """The member's cap where reported or learned, in units (0: not known: what others
        sent there cannot be weighed against a cache of unknown size, and is left out)."""
        record = self.index.held_by.get(member_id)
        return record.cap if record is not None else 0

    def on_members(self, members: Sequence[Member]) -> None:
        keep = {m.id for m in members}
        self.index.forget(keep)
        self.sizer.forget(keep)
        self.kv_rooms.forget(keep)
        for gone in [m for m in self._backlog if m not in keep]:
            del self._backlog[gone]
            self._busy.pop(gone, None)
        self._cols = None
        self.placement.update(members)

    def began(self, ticket: object, ttft_s: float | None = None) -> None:
        if isinstance(ticket, Ticket):
            ticket.started = True
            backlog = self._backlog.get(ticket.member)
            if backlog is not None:
                backlog.began(ticket)
            if ttft_s is not None:
                sizer = self.sizer
                now = self.clock.monotonic()
                self.kv_rooms.answered(ticket, ttft_s, sizer.judged_s, sizer.floor_s or 0.0, now)
            if ttft_s is not None and not ticket.judged and self.sizer.timed(ticket.member):
                # Judged now, not a decode later: what its miss shows gone is not sent back
                # there meanwhile (seen: three requests of a group queued there to miss).
                self._judge(ticket, ttft_s, 0)

    def settle(self, ticket: object, ttft_s: float | None, cached_tokens: int) -> None:
        if not isinstance(ticket, Ticket):
            return
        if ticket.judged:
            if cached_tokens > 0:
                self.sizer.reports_cached(ticket.member)
            return
        self._judge(ticket, ttft_s, cached_tokens)

    def _judge(self, ticket: Ticket, ttft_s: float | None, cached_tokens: int) -> None:
        ticket.judged = True
        sizer = self.sizer
        hit = sizer.settle(ticket, ttft_s, cached_tokens)
        member = ticket.member
        if hit is not None and member not in sizer.reported:
            outcomes = sizer.outcomes.get(member)
            if outcomes is not None and outcomes.resized:
                self.placement.learn(member, sizer.cap_tokens(member))
        if ticket.presumed and hit is not None:
            self.shared += _SHARED_ALPHA * ((1.0 if hit else 0.0) - self.shared)
        for prefix in sizer.forgot:  # Shown gone by a miss, or waited for room.
            self.missed.note(prefix, member)

    def _columns(self, candidates: Sequence[Member], reported: Mapping[str, int]) -> Columns:
        """What pick() reads of each candidate that stays put between snapshots and usage
        reports: kept while the same tuple (the route's members, on the hot path) and the
        same report (or none) come back; a new index or member set drops it."""
        cols = self._cols
        if (
            cols is None
            or candidates is not cols.candidates
            or (reported is not cols.reported and (reported or cols.reported))
        ):
            cols = self._cols = Columns(
                candidates,
                reported,
                self.index,
                self.request_blocks,
                self.evict_weight,
                self.hot_evict_weight,
                self.sizer.rooms.rough,
            )
        return cols

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        index = self.index
        match = index.match(ctx.prefix_key)
        blocks = match.blocks
        depth = match.depth
        # The prompt's first block names its prefix; -1 for a prompt without blocks.
        prefix = match.key
        claims = self.sends.by_prefix
        if claims and prefix in claims and not self.hears_all:
            # Other gateways sent it there lately: held there as far as their prompt went
            # (ranked after this gateway's own holders). Not while this one hears all: its
            # index holds what they sent, and the reports' claims are up to 30 s old.
            for mid, units in claims[prefix]:
                if mid not in depth:
                    depth[mid] = (min(units, blocks), len(depth))
        cols = self._columns(candidates, ctx.reported_in_flight)
        rough = self.sizer.rooms.rough
        if rough and depth:
            self._past_room(depth, prefix, rough)
        now = self.clock.monotonic()
        # A homed prefix is held at its home only (homes.py).
        at_home = self.homes.at(prefix, cols.position, now)
        presumed_at = ""
        if at_home >= 0:
            presumed_at = self.homes.claim(prefix, cols.ids[at_home], depth, blocks)
            if not overloaded(ctx.loads(candidates), at_home):
                # Sent home as every gateway sends it, unless load there is far past the others'.
                return self._sent(candidates[at_home], match, ctx, bool(presumed_at), now)
        if depth:
            won = self._holder_wins(cols, match, ctx, now)
            if won >= 0:
                chosen_id = candidates[won].id
                return self._sent(candidates[won], match, ctx, chosen_id == presumed_at, now)
        per_request = self.request_blocks
        ids = cols.ids
        costs = cols.costs(blocks)
        in_flight = ctx.in_flight
        if len(in_flight) < len(ids):
            # Ours in flight are on a few members (the gateway's counts drop members at zero).
            position = cols.position
            for mid, n in in_flight.items():
                i = position.get(mid)
                if i is not None:
                    costs[i] += per_request * n
        else:
            own = in_flight.get
            costs = [c + per_request * own(mid, 0) for c, mid in zip(costs, ids, strict=True)]
        if depth or self._busy:
            self._adjust(cols, costs, match, ctx, now)
        if depth and cols.guessed and self.sees_all:
            # A gateway alone (or hearing all) spilling onto a member of unknown cache
            # (Columns.spill_costs).
            cols.spill_costs(costs, depth, self.evict_weight * blocks)
        best = min(costs)
        if blocks and not depth:
            chosen = -1  # A new prefix: placed below, among the members near the cheapest.
        elif costs.count(best) == 1:
            chosen = costs.index(best)
        else:
            # Ties: the deeper match, then the more recent holder, then in turn.
            no_match = (0, 0)
            tied = [i for i, c in enumerate(costs) if c == best]
            if depth:
                ranks = [depth.get(ids[i], no_match) for i in tied]
                top = max(held for held, _ in ranks)
                first = min(rank for held, rank in ranks if held == top)
                tied = [i for i, hr in zip(tied, ranks, strict=True) if hr == (top, first)]
            chosen = self.in_turn(tied)
        presumed = False
        if blocks and (not depth or ids[chosen] not in depth):
            # The request goes where nothing of it is cached (as far as this gateway knows):
            # a new prefix, or a busy one spilling. Every gateway picks alike among the members
            # that cost about as little: the prefix's place by rendezvous. Another gateway may
            # have put it at that place already (placed it new, or spilled it there too): worth
            # up to the chance of that (learned) x its size.
            limit = best + self._slack(blocks)
            near = [i for i, c in enumerate(costs) if c <= limit]
            placed = self.sends.placed if not self.hears_all else _NOT_PLACED
            if placed and not depth and self._busy:
                # Other gateways send (their sends of some prefix came lately): a prefix new
                # to this one goes to its place unless that costs more than about as little
                # leaving out our requests running there, as the others judge it (they count
                # each as one request in flight, not by its footprint), while new prefixes are
                # found cached at their place often enough, or the others sent this one there.
                # (Not to where another spilled it: onto a small cache that spill thrashes.)
                home = self._home(prefix, ids)
                backlog = self._busy.get(home)
                if backlog is not None and (
                    self.shared >= _SHARED_PLACE or home in placed.get(prefix, ())
                ):
                    i = cols.position[home]
                    if limit < costs[i] <= limit + backlog.active_cost:
                        near.append(i)
            if depth:
                near = [i for i in near if ids[i] not in depth]
            by_prefix = self.missed.by_prefix
            missed = by_prefix.get(prefix) if by_prefix else None
            if missed:
                kept = [i for i in near if ids[i] not in missed]
                if kept:
                    near = kept
            if near:
                chosen = near[self.placement.choose(prefix, [ids[i] for i in near])]
                if (
                    cols.guessed
                    and len(near) > 1
                    and not depth
                    and ((self.gateways <= 1 and not placed) or self.hears_all)
                ):
                    # Alone, while some cache is unknown: among the least filled (with others
                    # not heard, whose fills differ until told, rendezvous keeps them agreeing).
                    spread = cols.least_filled(near, chosen, 0.5 * blocks)
                    if spread is not None:
                        chosen = spread[self.placement.choose(prefix, [ids[i] for i in spread])]
            presumed = not depth
        presumed = presumed or ids[chosen] == presumed_at
        return self._sent(candidates[chosen], match, ctx, presumed, now)

    def _past_room(
        self, depth: dict[str, tuple[int, int]], prefix: int, rough: Mapping[str, float]
    ) -> None:
        """Drops from depth the members of unknown cache whose rough room (rough_room.py) the
        prompt's part there sits deeper than in their LRU (Held.reach): by what the member has
        shown, it is gone, and sending it back there misses."""
        index = self.index
        for mid in [m for m in depth if m in rough]:
            record = index.record(mid)
            if not record.cap and record.reach(prefix, depth[mid][0]) > rough[mid]:
                del depth[mid]

    def _slack(self, blocks: int) -> float:
        """How far over the cheapest a prompt may be placed (and queues are costed, _pruned):
        the learned chance another gateway placed it already x its size, or half a request.
        A gateway alone (no other known, none of their sends told) takes that chance as nil:
        nobody else places prompts, and a wider slack only let rendezvous pick a costlier
        member (shared prefixes on silent engines, virtual time, seeds 5-12: 13 of 16 within
        1.5x of the oracle, 16 of 16 without)."""
        alone = (self.gateways <= 1 and not self.sends.placed) or self.hears_all
        shared = 0.0 if alone else self.shared
        return max(shared * blocks, 0.5 * self.request_blocks)

    def _pruned(self, slack: float) -> float:
        """How far over some member's whole cost queues are costed (tests: all, to compare)."""
        return slack

    def _adjust(
        self, cols: Columns, costs: list[float], match: Match, ctx: PickContext, now: float
    ) -> None:
        """Adds to pick()'s first pass what it left out for the members that hold part of the
        prompt (what they hold, and evict less) or have our requests in flight (their queue,
        a stall: charge_queues); see the class's docstring."""
        depth = match.depth
        blocks = match.blocks
        position = cols.position
        if depth:
            evicted = self._evicted
            for mid, (held, _) in depth.items():
                i = position.get(mid)
                if i is not None:
                    # The first pass took the whole prompt as new there.
                    costs[i] += evicted(cols, i, blocks - held) - evicted(cols, i, blocks) - held
        if self._busy:
            charge_queues(
                self._busy,
                cols.ids,
                position,
                costs,
                ctx.in_flight,
                match.key,
                now,
                self.sizer.drain_rate(self.drain_blocks_per_s),
                self.active_weight,
                self._pruned(self._slack(blocks)),
            )
            if self.kv_rooms.short:
                rate = self.sizer.drain_rate(self.drain_blocks_per_s)
                self.kv_rooms.charge(self._busy, cols.position, costs, match, rate, now)

    def _holder_wins(self, cols: Columns, match: Match, ctx: PickContext, now: float) -> int:
        """The position of the one member holding part of the prompt whose whole cost is below
        what any other member could cost: it wins, whatever the others cost, and the pass over
        them is skipped (a long prompt whose prefix is held, most often). What any other could
        cost: the fewest of the others' requests in flight anywhere (cols.floor), and, when that
        is not enough, the least over members of those plus the least the whole prompt could
        evict there (Columns.least_cost); ours and their queues only add. -1: none such, or a
        tie."""
        rate = self.sizer.drain_rate(self.drain_blocks_per_s)
        weights = self._holder_weights
        in_flight = ctx.in_flight
        busy = self._busy
        won = cheapest_holder(cols, match, in_flight, busy, now, rate, cols.floor, weights)
        if won < 0:
            bound = cols.least_cost(match.blocks)
            if bound <= cols.floor:
                return -1
            won = cheapest_holder(cols, match, in_flight, busy, now, rate, bound, weights)
            if won < 0:
                return -1
        # When no holder wins, the full pass does this.
        drop_ended(busy, cols.position, in_flight, now, rate)
        return won

    def _evicted(self, cols: Columns, i: int, new: float) -> float:
        """What sending `new` units to candidate i evicts there, weighed (columns.evicted)."""
        return evicted(cols.records[i], new, self.evict_weight, self.hot_evict_weight, cols.room(i))
