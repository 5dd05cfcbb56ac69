"""prefix_aware: send a prompt where the least work is left to do, counting its cached prefix."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence, Sized

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext, Policy
from gateway.policies.prefix_index import PrefixIndex

# Converts member_capacity_tokens to index blocks; English text and code run 3.5-4.5 characters
# a token with common tokenizers, and an estimate on the high side only makes the index forget
# a little late.
CHARS_PER_TOKEN = 4


class _Entry:
    __slots__ = ("blocks", "left", "prefix")

    def __init__(self, prefix: int, blocks: float) -> None:
        self.prefix = prefix
        self.blocks = blocks
        self.left = blocks


def _sub(by_prefix: dict[int, float], prefix: int, blocks: float) -> None:
    left = by_prefix.get(prefix, 0.0) - blocks
    if left > 1e-9:
        by_prefix[prefix] = left
    else:
        by_prefix.pop(prefix, None)


class Backlog:
    """This gateway's requests in flight to one member, oldest first: the prompt blocks each
    brought there (new to it: its KV footprint beyond what the member held) and how many of
    those are still to prefill. The member is assumed to prefill them in order at `rate`
    blocks a second; a request stays counted until it ends."""

    __slots__ = (
        "active",
        "active_by_prefix",
        "blocks_held",
        "drained",
        "entries",
        "last",
        "left",
        "left_by_prefix",
    )

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        # Leading entries whose prefill is estimated done.
        self.drained = 0
        self.left = 0.0
        self.left_by_prefix: dict[int, float] = {}
        self.active = 0.0
        self.active_by_prefix: dict[int, float] = {}
        self.last = 0.0
        # The member's blocks in the index (kept here to save a lookup per pick).
        self.blocks_held: Sized = ()

    def add(self, prefix: int, blocks: float, now: float) -> None:
        if self.drained == len(self.entries):
            self.last = now  # Nothing was waiting: the prefill starts now.
        self.entries.append(_Entry(prefix, blocks))
        self.left += blocks
        self.left_by_prefix[prefix] = self.left_by_prefix.get(prefix, 0.0) + blocks
        self.active += blocks
        self.active_by_prefix[prefix] = self.active_by_prefix.get(prefix, 0.0) + blocks

    def update(self, live: int, now: float, rate: float) -> None:
        """Drains what the member prefilled since the last update, then drops the requests
        that ended: `live` is this gateway's count in flight to it, and requests to one engine
        end roughly in the order they were sent."""
        entries = self.entries
        budget = (now - self.last) * rate
        self.last = now
        while self.drained < len(entries) and budget > 0:
            entry = entries[self.drained]
            used = entry.left if entry.left < budget else budget
            budget -= used
            self._drain(entry, used)
            if entry.left <= 1e-9:
                self.drained += 1
        while len(entries) > live:
            entry = entries.popleft()
            if self.drained:
                self.drained -= 1
            else:
                self._drain(entry, entry.left)
            self.active -= entry.blocks
            _sub(self.active_by_prefix, entry.prefix, entry.blocks)
        if not entries:
            self.left = self.active = 0.0
            self.left_by_prefix.clear()
            self.active_by_prefix.clear()

    def _drain(self, entry: _Entry, blocks: float) -> None:
        entry.left -= blocks
        self.left -= blocks
        _sub(self.left_by_prefix, entry.prefix, blocks)

    def cost(self, prefix: int, active_weight: float) -> float:
        """Blocks queued ahead of a request of this prefix, plus active_weight x the blocks
        its requests occupy; the prefix's own requests do not count (they share its blocks)."""
        return (self.left - self.left_by_prefix.get(prefix, 0.0)) + active_weight * (
            self.active - self.active_by_prefix.get(prefix, 0.0)
        )


class PrefixAware(Policy, name="prefix_aware"):
    """Prefix-cache-aware routing by estimated work, after Dynamo's KV router (see
    docs/policies.md). For each candidate:

        cost = new blocks      (the prompt's blocks it does not hold: prefill it must do)
             + evicted blocks  (what those push out of a full cache: re-prefilled later;
                                a block sent there more than once, a hot shared prefix or
                                an earlier turn, costs hot_evict_weight, others
                                evict_weight; the one-off blocks are taken as the oldest)
             + queued blocks   (new blocks of our requests to it not prefilled yet, drained
                                at prefill_tokens_per_s in the order sent)
             + active_weight x new blocks of our requests still in flight there
             + request_blocks x requests in flight (PickContext.loads)

    Queued and active leave out this prompt's own prefix: its prefill, under way there, is
    shared rather than repeated elsewhere.

    The cheapest member gets the request (ties: deeper match, then more recent holder, then in
    turn). So a hot prefix stays on its holder until the holder's queued work costs more than a
    re-prefill elsewhere, a prompt nobody holds goes to the least-loaded member with cache room,
    and the index forgets what each member's cache (member_capacity_tokens) cannot hold."""

    def configure(self, params: ParamReader) -> None:
        block_chars = params.integer("block_chars", 128, min=8, max=65536)
        capacity_tokens = params.integer("member_capacity_tokens", 262144, min=1)
        self.index = PrefixIndex(
            block_chars=block_chars,
            max_blocks=params.integer("max_blocks", 131072, min=1),
            max_prompt_blocks=params.integer("max_prompt_blocks", 1024, min=1),
            max_holders=params.integer("max_holders", 8, min=1, max=1024),
            member_blocks=max(1, capacity_tokens * CHARS_PER_TOKEN // block_chars),
        )
        self.request_blocks = params.number("request_blocks", 4.0, min=0.0)
        self.evict_weight = params.number("evict_weight", 1.0, min=0.0)
        self.hot_evict_weight = params.number("hot_evict_weight", 2.0, min=0.0)
        self.active_weight = params.number("active_weight", 0.5, min=0.0)
        prefill_rate = params.number("prefill_tokens_per_s", 8000.0, min=1.0)
        self.drain_blocks_per_s = prefill_rate * CHARS_PER_TOKEN / block_chars
        self._backlog: dict[str, Backlog] = {}

    def on_snapshot(self, members: Sequence[Member]) -> None:
        """Members whose engine reports its KV cache get an index bound of that size: what an
        engine says of itself beats member_capacity_tokens, a guess that fits no engine."""
        caps = self.index.caps
        size = self.index.block_chars
        for m in members:
            if m.cache_tokens > 0:
                caps[m.id] = max(1, m.cache_tokens * CHARS_PER_TOKEN // size)

    def on_members(self, members: Sequence[Member]) -> None:
        keep = {m.id for m in members}
        self.index.forget(keep)
        for gone in [m for m in self._backlog if m not in keep]:
            del self._backlog[gone]

    def backlog_blocks(self, member_id: str) -> float:
        """Blocks this gateway's requests to member_id have left to prefill, as last counted."""
        backlog = self._backlog.get(member_id)
        return backlog.left if backlog is not None else 0.0

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        text = ctx.prefix_key
        index = self.index
        match = index.match(text)
        blocks = match.blocks
        depth = match.depth
        # The prompt's first block names its prefix; -1 for a prompt without blocks.
        prefix = match.hashes[0] if match.hashes else -1
        own = ctx.in_flight
        loads = ctx.loads(candidates)
        backlogs = self._backlog
        per_request = self.request_blocks
        evict_weight = self.evict_weight
        hot_evict_weight = self.hot_evict_weight
        singles = index.singles
        active_weight = self.active_weight
        default_room = index.member_blocks or 0
        caps = index.caps
        now = self.clock.monotonic()
        rate = self.drain_blocks_per_s
        no_match = (0, 0)
        best = float("inf")
        best_held = 0
        best_rank = 0
        tied: list[int] = []
        best_new = blocks
        for i, m in enumerate(candidates):
            mid = m.id
            cost = per_request * loads[i]
            backlog = backlogs.get(mid)
            held, rank = depth.get(mid, no_match) if depth else no_match
            new = blocks - held
            if backlog is not None:
                entries = backlog.entries
                if entries:
                    mine = own.get(mid, 0)
                    # Draining more often than every millisecond changes nothing that matters.
                    if len(entries) > mine or now - backlog.last > 0.001:
                        backlog.update(mine, now, rate)
                    cost += backlog.cost(prefix, active_weight)
                room = caps.get(mid, default_room) if caps else default_room
                if new and room:
                    over = len(backlog.blocks_held) + new - room
                    if over > 0:
                        if over > new:
                            over = new
                        # LRU takes the oldest first: the one-off blocks, then hot ones.
                        hot = over - singles.get(mid, 0)
                        if hot > 0:
                            cost += evict_weight * (over - hot) + hot_evict_weight * hot
                        else:
                            cost += evict_weight * over
            cost += new
            # Ties: the deeper match, then the more recent holder, then in turn.
            if cost < best or (
                cost == best and (held > best_held or (held == best_held and rank < best_rank))
            ):
                best, best_held, best_rank, tied, best_new = cost, held, rank, [i], new
            elif cost == best and held == best_held and rank == best_rank:
                tied.append(i)
        choice = candidates[self.in_turn(tied)]
        backlog = backlogs.get(choice.id)
        if backlog is None:
            backlog = backlogs[choice.id] = Backlog()
        backlog.add(prefix, best_new, now)
        if blocks:
            index.insert(text, choice.id, match)
            if not backlog.blocks_held:
                backlog.blocks_held = index.held_by[choice.id]
        return choice
