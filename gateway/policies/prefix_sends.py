"""What a send books in prefix_aware: this gateway's own (the pick's), and another gateway's
told as it happened (gateway/pool_sends.py): the ticket its answer is judged by, its place in
the member's queue, the index, and, for its own, the line of the next usage report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.members import Member
from gateway.policies.backlog import Backlog
from gateway.policies.base import PickContext
from gateway.policies.cache_estimate import CacheSizer
from gateway.policies.prefix_index import Match, PrefixIndex
from gateway.policies.shared_sends import STALE_S, SharedSends
from gateway.policies.ticket import Ticket
from llmpool.clock import Clock


class PrefixSends:
    """Mixed into PrefixAware."""

    # PrefixAware's, built when it is configured.
    clock: Clock
    index: PrefixIndex
    sizer: CacheSizer
    sends: SharedSends
    drain_blocks_per_s: float
    _backlog: dict[str, Backlog]
    _busy: dict[str, Backlog]

    def _count_foreign(self, member_ids: Iterable[str]) -> None:
        """The index takes these members' share of the others' sends as it now stands."""
        foreign = self.sends.foreign
        index = self.index
        for mid in member_ids:
            index.set_foreign(mid, foreign.get(mid, 0))

    def seen_sent(self, member: Member, hashes: Sequence[int], ctx: PickContext) -> Ticket | None:
        """Another gateway sent a prompt whose blocks hash to `hashes` to member (shared sends,
        gateway/pool_sends.py). This gateway counts it as it counts its own: in the index, in
        the member's queue, and judged by began() and settle() when its first byte and end are
        told (the sender's times). Nothing of it is reported: the sender reports it. None: a
        prompt without blocks, nothing to count."""
        if not hashes:
            return None
        match = self.index.match_hashes(hashes)
        if not match.blocks:
            return None
        ticket = self._booked(member, match, ctx, False, self.clock.monotonic())
        ticket.seen = True
        self.index.insert(member.id, match)
        return ticket

    def _sent(
        self, choice: Member, match: Match, ctx: PickContext, presumed: bool, now: float
    ) -> Member:
        ctx.ticket = self._booked(choice, match, ctx, presumed, now)
        if match.blocks:
            mid = choice.id
            self.index.insert(mid, match)
            sends = self.sends
            # The whole prompt, as the engine keeps it (the index's blocks end at the last whole
            # one, which for a long prompt of doubling blocks leaves up to a fifth out).
            sends.note(mid, match.key, -(-len(ctx.prefix_key) // self.index.block_chars))
            if (sends.by_prefix or sends.placed) and now - sends.told_at > STALE_S:
                self._count_foreign(sends.stale(now))
            if match.key in sends.by_prefix:
                # Now in this gateway's own count there.
                sends.dropped(mid, match.key)
                self._count_foreign((mid,))
        return choice

    def _booked(
        self, choice: Member, match: Match, ctx: PickContext, presumed: bool, now: float
    ) -> Ticket:
        """The ticket of a request sent to choice, queued in its backlog."""
        mid = choice.id
        held = match.depth.get(mid, (0, 0))[0] if match.depth else 0
        new = match.blocks - held
        backlog = self._backlog.get(mid)
        if backlog is None:
            backlog = self._backlog[mid] = Backlog(self.index.record(mid))
        elif backlog.entries:
            # pick() may have left it as of an earlier update: what is queued there now.
            backlog.update(
                ctx.in_flight.get(mid, 0), now, self.sizer.drain_rate(self.drain_blocks_per_s)
            )
        others = choice.in_flight - ctx.reported_in_flight.get(mid, 0) >= 0.5
        idle = not ctx.in_flight.get(mid, 0)
        # This gateway's requests there all answering already (or none).
        mine = idle or all(e.ticket is not None and e.ticket.started for e in backlog.entries)
        ticket = Ticket(
            mid,
            held,
            new,
            backlog.left,
            presumed,
            idle and not others,
            mine and not others,
            mine and others,
            now,
            match.hashes,
            reach=backlog.held.reach(match.key, held),
            running=backlog.active,
        )
        backlog.add(match.key, new, now, ticket if ctx.payload.get("stream") else None)
        self._busy[mid] = backlog
        return ticket
