"""A bounded LRU index of chained prompt-block hashes -> the members that hold them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass


@dataclass(slots=True)
class Match:
    """How far a prompt's leading blocks are held: member id -> (blocks matched, recency rank).

    Rank 0 is the member most recently sent the deepest block it matched."""

    blocks: int
    hashes: list[int]
    depth: dict[str, tuple[int, int]]


class PrefixIndex:
    """Block hash -> member ids holding that prefix, most recent first; at most max_blocks,
    and at most member_blocks per member.

    The text is cut into blocks of block_chars characters; block i's hash is hash((hash of
    block i-1, text of block i)), so one hash names the whole prefix up to its end and a lookup
    walks the blocks in order until one is missing. A prompt is inserted last block first, so
    its first blocks are the most recently used and LRU eviction takes the deepest blocks
    (the leaves) first, never a prefix under a block still held. Memory is bounded by
    construction: every insert evicts down to max_blocks, and each block keeps at most
    max_holders member ids.

    Each member also has its own LRU of at most member_blocks blocks (None: no per-member
    bound), mirroring an engine whose prefix cache evicts least recently used blocks: when a
    member is sent more than it can cache, the index forgets its oldest blocks, as the engine
    does, instead of claiming prefixes the engine no longer has.

    A member's block is "reused" once it was sent there a second time (a shared prefix, an
    earlier turn of a chat); `singles` counts the member's blocks sent there only once (a
    unique question, the newest turn), so a caller can tell a cache of hot shared prefixes
    from one of stale one-off tails."""

    def __init__(
        self,
        *,
        block_chars: int,
        max_blocks: int,
        max_prompt_blocks: int,
        max_holders: int,
        member_blocks: int | None = None,
    ) -> None:
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.max_prompt_blocks = max_prompt_blocks
        self.max_holders = max_holders
        self.member_blocks = member_blocks
        # Per member, a bound of its own (its engine reported its cache), over member_blocks.
        self.caps: dict[str, int] = {}
        self._blocks: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        # Per member: its blocks, least recently sent first -> reused. Read-only outside.
        self.held_by: dict[str, OrderedDict[int, bool]] = {}
        # Per member: how many of its blocks are not reused. Read-only outside.
        self.singles: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def held(self, member_id: str) -> int:
        """Blocks the index says member_id holds."""
        lru = self.held_by.get(member_id)
        return len(lru) if lru is not None else 0

    def block_count(self, text: str) -> int:
        return min(len(text) // self.block_chars, self.max_prompt_blocks)

    def match(self, text: str) -> Match:
        """Walks the prompt's blocks while some member holds them all; hashes only that far."""
        size = self.block_chars
        total = self.block_count(text)
        blocks = self._blocks
        hashes: list[int] = []
        depth: dict[str, tuple[int, int]] = {}
        h = 0
        alive: tuple[str, ...] = ()
        prev: tuple[str, ...] = ()
        i = 0
        for i in range(total):
            h = hash((h, text[i * size : (i + 1) * size]))
            hashes.append(h)
            holders = blocks.get(h)
            if holders is None:
                break
            if holders == alive:
                pass  # The common case: the same members hold this block too.
            elif i:
                still = tuple(m for m in holders if m in alive)
                if len(still) < len(alive):
                    for m in alive:
                        if m not in still:
                            depth[m] = (i, _rank(prev, m))
                if not still:
                    break
                alive = still
            else:
                alive = holders
            prev = holders
        else:
            i = total
        if alive:
            # Blocks 0..i-1 matched for whoever is still alive (i is where the walk stopped).
            for m in alive:
                if m not in depth:
                    depth[m] = (i, _rank(prev, m))
        return Match(blocks=total, hashes=hashes, depth=depth)

    def insert(self, text: str, member_id: str, match: Match) -> None:
        """Records that member_id was sent this prompt: it now holds every block of it."""
        hashes = match.hashes
        size = self.block_chars
        if len(hashes) < match.blocks:
            h = hashes[-1] if hashes else 0
            for i in range(len(hashes), match.blocks):
                h = hash((h, text[i * size : (i + 1) * size]))
                hashes.append(h)
        blocks = self._blocks
        held = self.held_by
        mine = held.get(member_id)
        if mine is None:
            mine = held[member_id] = OrderedDict()
        limit = self.max_holders
        get = blocks.get
        touch = blocks.move_to_end
        mine_get = mine.get
        touch_mine = mine.move_to_end
        singles = self.singles
        single = singles.get(member_id, 0)
        for h in reversed(hashes):
            holders = get(h)
            if holders is None:
                blocks[h] = (member_id,)
                mine[h] = False
                single += 1
                continue
            touch(h)
            if holders[0] != member_id:
                rest = tuple(m for m in holders if m != member_id)
                if len(rest) >= limit:
                    # The least recent holder drops out of this block.
                    self._unhold(rest[limit - 1], h)
                blocks[h] = (member_id, *rest[: limit - 1])
            reused = mine_get(h)
            if reused is None:
                mine[h] = False
                single += 1
            else:
                touch_mine(h)
                if not reused:
                    mine[h] = True
                    single -= 1
        cap = self.caps.get(member_id, self.member_blocks)
        if cap is not None:
            while len(mine) > cap:
                h, reused = mine.popitem(last=False)
                if not reused:
                    single -= 1
                self._drop(h, member_id)
        singles[member_id] = single
        while len(blocks) > self.max_blocks:
            h, holders = blocks.popitem(last=False)
            for m in holders:
                self._unhold(m, h)

    def _unhold(self, member_id: str, h: int) -> None:
        """member_id no longer holds block h (its entry in the block's holders is gone)."""
        lru = self.held_by.get(member_id)
        if lru is not None and lru.pop(h, True) is False:
            self.singles[member_id] -= 1

    def _drop(self, h: int, member_id: str) -> None:
        holders = self._blocks.get(h)
        if holders is None:
            return
        left = tuple(m for m in holders if m != member_id)
        if left:
            self._blocks[h] = left
        else:
            del self._blocks[h]

    def forget(self, keep: Container[str]) -> None:
        """Drops members not in keep; blocks no member holds any more go too."""
        for m in [m for m in self.held_by if m not in keep]:
            del self.held_by[m]
            self.singles.pop(m, None)
        for m in [m for m in self.caps if m not in keep]:
            del self.caps[m]
        for h in list(self._blocks):
            holders = self._blocks[h]
            left = tuple(m for m in holders if m in keep)
            if not left:
                del self._blocks[h]
            elif len(left) < len(holders):
                self._blocks[h] = left


def _rank(holders: tuple[str, ...], member_id: str) -> int:
    return holders.index(member_id)
