"""A bounded LRU index of chained prompt-block hashes -> the members that hold them."""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from itertools import groupby, islice, repeat

from xxhash import xxh3_64_intdigest

from gateway.policies.block_hashes import MEMO_MIN_BLOCKS, BlockHasher, BlockLayout
from gateway.policies.held import UNBOUNDED, Held


@dataclass(slots=True)
class Match:
    """How far a prompt's leading blocks are held: member id -> (units matched, recency rank).

    Sizes are in units of the first blocks' size (block_chars); rank 0 is the member most
    recently sent the deepest block it matched."""

    blocks: int  # the prompt's units in whole blocks
    hashes: list[int]  # of its whole blocks
    depth: dict[str, tuple[int, int]]
    count: int = 0  # whole blocks in the prompt
    # Each block's holders when matched (None: none), and the index's epoch then.
    found: list[tuple[str, ...] | None] = field(default_factory=list)
    epoch: int = -1
    run: int = 0  # leading blocks with the same holders as the first (0: none holds it)

    @property
    def key(self) -> int:
        """The first block's hash, the same in every process: names the prompt's prefix group
        (-1 when the prompt is shorter than a block)."""
        return self.hashes[0] if self.hashes else -1


def _without(holders: tuple[str, ...], member_id: str) -> tuple[str, ...]:
    """holders less member_id (each member is in a block's holders once)."""
    try:
        i = holders.index(member_id)
    except ValueError:
        return holders
    return holders[:i] + holders[i + 1 :]


def _run(found: list[tuple[str, ...] | None]) -> int:
    """How many leading entries equal the first, if it is not None (in C when all up to the
    first None do)."""
    try:
        stop = found.index(None)
    except ValueError:
        stop = len(found)
    if not stop:
        return 0
    first = found[0]
    if found[:stop].count(first) == stop:
        return stop
    run = 1
    for holders in islice(found, 1, None):
        if holders != first:
            break
        run += 1
    return run


class PrefixIndex:
    """Block hash -> member ids holding that prefix, most recent first; at most max_blocks
    blocks, and per member at most its cap in units (the first blocks' size).

    The prompt (UTF-8) is cut into blocks (BlockLayout); block i's hash is xxh3 of its bytes
    seeded with block i-1's hash, so one hash names the whole prefix up to its end and a lookup
    walks the blocks in order until one is missing. A prompt is inserted last block first, so
    its first blocks are the most recently used and LRU eviction takes the deepest blocks
    (the leaves) first, never a prefix under a block still held. Memory is bounded by
    construction: an insert that takes the index past max_blocks makes the member holding the
    most forget its oldest blocks until it fits, and each block keeps at most max_holders
    member ids.

    Each member also has its own LRU bounded in units (its cap, else member_blocks; None: no
    bound), mirroring an engine whose prefix cache evicts least recently used blocks: when a
    member is sent more than it can cache, the index forgets its oldest blocks, as the engine
    does, instead of claiming prefixes the engine no longer has.

    A member's block is "reused" once it was sent there a second time (a shared prefix, an
    earlier turn of a chat); `singles` counts the member's units sent there only once (a
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
        self.layout = BlockLayout(block_chars, max_prompt_blocks)
        self.hasher = BlockHasher(self.layout.spans)
        # No order kept here: each member's own LRU (Held.blocks) says what goes first.
        self._blocks: dict[int, tuple[str, ...]] = {}
        # Per member: what it holds. Read-only outside.
        self.held_by: dict[str, Held] = {}
        # Moves on every change, so an insert knows whether its match's view is current.
        self.epoch = 0
        # Records whose units, singles or room changed since a caller last emptied this
        # (prefix_aware keeps its candidates' room left and singles in lists from them).
        self.changed: set[Held] = set()

    def __len__(self) -> int:
        return len(self._blocks)

    def held(self, member_id: str) -> int:
        """Units the index says member_id holds."""
        record = self.held_by.get(member_id)
        return record.units if record is not None else 0

    def singles(self, member_id: str) -> int:
        """Of those, the units sent there only once."""
        record = self.held_by.get(member_id)
        return record.singles if record is not None else 0

    def record(self, member_id: str) -> Held:
        record = self.held_by.get(member_id)
        if record is None:
            record = self.held_by[member_id] = Held(self.member_blocks or UNBOUNDED)
        return record

    def cap(self, member_id: str) -> int | None:
        """The units member_id may hold (None: unbounded)."""
        record = self.held_by.get(member_id)
        if record is not None and record.cap:
            return record.cap
        return self.member_blocks

    def set_cap(self, member_id: str, units: int) -> None:
        """Bounds member_id by units of its own (reported or learned), forgetting its oldest
        blocks beyond them."""
        record = self.record(member_id)
        record.cap = max(1, units)
        self._reroom(record)
        self.epoch += 1
        self.trim(record, member_id)

    def set_foreign(self, member_id: str, units: int) -> None:
        """Other gateways sent member_id `units` lately: the engine holds them besides ours,
        so the index keeps that much less of ours there (down to an eighth of its bound: the
        others' claims may be stale by up to the controller's 30 s, ours are known)."""
        record = self.record(member_id)
        if record.foreign == units:
            return
        record.foreign = max(0, units)
        self._reroom(record)
        self.epoch += 1
        if record.units > record.room:
            self.trim(record, member_id)

    def _reroom(self, record: Held) -> None:
        bound = record.cap or self.member_blocks or UNBOUNDED
        if bound >= UNBOUNDED or not record.foreign:
            record.room = bound
        else:
            record.room = max(bound // 8, bound - record.foreign, 1)
        self.changed.add(record)

    def block_count(self, text: str | bytes | memoryview) -> int:
        """Units of the prompt's whole blocks."""
        layout = self.layout
        data = text.encode() if isinstance(text, str) else text
        return layout.units_of(layout.count(len(data)))

    def first_key(self, data: bytes | memoryview) -> int:
        """The prompt's first block's hash (Match.key) without matching the rest: -1 when the
        prompt is shorter than a block."""
        end = self.layout.spans[0][1]
        return xxh3_64_intdigest(data[:end], 0) if len(data) >= end else -1

    def holds(self, key: int) -> bool:
        """Whether some member holds the block whose hash is key."""
        return key in self._blocks

    def match(self, text: str | bytes | memoryview) -> Match:
        """Hashes the prompt's blocks and finds, for each member holding its first ones, how
        far its blocks are held."""
        data = text.encode() if isinstance(text, str) else text
        layout = self.layout
        count = layout.count(len(data))
        # All blocks at once: the insert that follows a pick needs them anyway.
        hashes = self.hasher.hashes(data, count)
        found = list(map(self._blocks.get, hashes))
        if count >= MEMO_MIN_BLOCKS and found[MEMO_MIN_BLOCKS - 1] is not None:
            # A long prefix seen before: its hashes are worth remembering (unless they came
            # from the memo, and it holds all it may).
            try:
                seen = found.index(None)
            except ValueError:
                seen = count
            hit = self.hasher.hit
            if hit is None or not (hit.fixed or seen <= len(hit.hashes)):
                self.hasher.learn(data, hashes, seen)
        return self._matched(hashes, found)

    def match_hashes(self, hashes: Sequence[int]) -> Match:
        """match() of a prompt known by its blocks' hashes (another gateway's send, in this
        index's layout), up to as many blocks as a prompt here may have."""
        kept = list(hashes[: len(self.layout.units)])
        return self._matched(kept, list(map(self._blocks.get, kept)))

    def _matched(self, hashes: list[int], found: list[tuple[str, ...] | None]) -> Match:
        """The Match of a prompt whose blocks' hashes and holders are these."""
        layout = self.layout
        count = len(hashes)
        depth: dict[str, tuple[int, int]] = {}
        alive = found[0] if count else None
        run = _run(found)
        if alive and (run == count or found[run] is None):
            # The common case, checked in C: the same members hold every block held.
            matched = layout.units[run - 1]
            depth = {m: (matched, rank) for rank, m in enumerate(alive)}
        elif alive:
            # Where the holders change along the prompt (runs of equal holders, grouped in C: a
            # long prompt is ~100 blocks and a walk over them in Python cost ~35 us).
            units = layout.units
            prev = alive
            i = 0
            for holders, same in groupby(found):
                if holders is None:
                    break
                if holders != alive:
                    still = tuple(m for m in holders if m in alive)
                    if len(still) < len(alive):
                        matched = units[i - 1]
                        for m in alive:
                            if m not in still:
                                depth[m] = (matched, prev.index(m))
                    if not still:
                        alive = ()
                        break
                    alive = still
                prev = holders
                i += sum(1 for _ in same)
            if alive:
                # Blocks 0..i-1 matched for whoever is still alive (i is where the walk stopped).
                matched = units[i - 1]
                for m in alive:
                    if m not in depth:
                        depth[m] = (matched, prev.index(m))
        total = layout.units[count - 1] if count else 0
        return Match(
            blocks=total,
            hashes=hashes,
            depth=depth,
            count=count,
            found=found,
            epoch=self.epoch,
            run=run,
        )

    def insert(self, member_id: str, match: Match) -> None:
        """Records that member_id was sent the matched prompt: it now holds every block of it."""
        hashes = match.hashes
        weights = self.layout.weights
        blocks = self._blocks
        record = self.record(member_id)
        mine = record.blocks
        if match.epoch == self.epoch:
            found, run = match.found, match.run
        else:
            found = list(map(blocks.get, hashes))
            run = _run(found)
        self.epoch += 1
        limit = self.max_holders
        touch_mine = mine.move_to_end
        held = record.units
        single = record.singles
        count = len(hashes)
        # Blocks are taken last first (the deepest least recent); past the leading run of
        # blocks with the same holders, most often all new to the index (a new question, the
        # newest turn, a prompt never seen): those in bulk, in C, when there are more than a
        # few.
        if count - run > 4 and found[run:].count(None) == count - run:
            tail = hashes[run:]
            blocks.update(zip(tail, repeat((member_id,))))
            mine.update(zip(reversed(tail), reversed(weights[run:count]), strict=True))
            units = self.layout.units
            added = units[count - 1] - (units[run - 1] if run else 0)
            held += added
            single += added
        else:
            get = blocks.get
            for i in range(count - 1, run - 1, -1):
                h = hashes[i]
                holders = get(h)
                if holders is None:
                    blocks[h] = (member_id,)
                    w = weights[i]
                    mine[h] = w
                    held += w
                    single += w
                    continue
                if holders[0] != member_id:
                    rest = _without(holders, member_id)
                    if len(rest) >= limit:
                        # The least recent holder drops out of this block.
                        self._unhold(rest[limit - 1], h)
                    blocks[h] = (member_id, *rest[: limit - 1])
                had = mine.get(h)
                if had is None:
                    w = weights[i]
                    mine[h] = w
                    held += w
                    single += w
                else:
                    touch_mine(h)
                    if had > 0:
                        mine[h] = -had
                        single -= had
        if run:
            # The leading run (a long shared prefix is most of a prompt): one new holders
            # tuple for all of it, shared by its blocks.
            head = hashes[:run]
            first = found[0] or ()
            if first[0] != member_id:
                others = [m for m in first if m != member_id]
                if len(others) >= limit:
                    # The least recent holder drops out of these blocks.
                    dropped = others[limit - 1]
                    for h in head:
                        self._unhold(dropped, h)
                    del others[limit - 1 :]
                blocks.update(zip(head, repeat((member_id, *others))))
            if member_id in first and mine.get(head[-1], 0) < 0 and mine.get(head[0], 0) < 0:
                # Held there (holders and records agree), its first and deepest blocks reused:
                # the others are too. (The deepest alone is not enough: a member that lost the
                # first blocks, found missing or dropped as a least recent holder, and was sent
                # them again holds them as sent once under a reused tail.) Only their recency
                # changes: most recent last, first block last (LRU takes the deepest first).
                deque(map(touch_mine, reversed(head)), 0)
            elif not any(sent := list(map(mine.get, head, repeat(0)))):
                # None of them there (a prompt spilling to a member new to it): in bulk, in C,
                # as the tail's.
                mine.update(zip(reversed(head), reversed(weights[:run]), strict=True))
                added = self.layout.units[run - 1]
                held += added
                single += added
            elif max(sent) >= 0:
                # What the member has of them: < 0 reused, > 0 sent once, 0 none. (The loop
                # below is the tail's, inlined in both: as a shared helper it cost 2-3% of a
                # pick.)
                for i in range(run - 1, -1, -1):
                    h = head[i]
                    was = sent[i]
                    if not was:
                        w = weights[i]
                        mine[h] = w
                        held += w
                        single += w
                    else:
                        touch_mine(h)
                        if was > 0:
                            mine[h] = -was
                            single -= was
            else:
                deque(map(touch_mine, reversed(head)), 0)  # All reused already.
        record.sent += held - record.units
        if hashes:
            record.mark(hashes[0], match.blocks)
        record.units = held
        record.singles = single
        self.changed.add(record)
        if held > record.room:
            self.trim(record, member_id)
        if len(blocks) > self.max_blocks:
            self._shed()

    def _shed(self) -> None:
        """Down to max_blocks: the member holding the most blocks forgets its oldest, as its
        own LRU would (the deepest blocks of its least recent prompts first), until the index
        fits. A block goes once no member holds it."""
        blocks = self._blocks
        while len(blocks) > self.max_blocks:
            member_id, record = max(self.held_by.items(), key=lambda kv: len(kv[1].blocks))
            mine = record.blocks
            for _ in range(min(len(blocks) - self.max_blocks, len(mine))):
                h, w = mine.popitem(last=False)
                if w > 0:
                    record.singles -= w
                else:
                    w = -w
                record.units -= w
                self._drop(h, member_id)
            self.changed.add(record)

    def trim(self, record: Held, member_id: str) -> None:
        """Forgets the member's oldest blocks down to its cap."""
        cap = record.room
        mine = record.blocks
        held = record.units
        single = record.singles
        blocks = self._blocks
        pop = mine.popitem
        # A prompt's blocks mostly share one holders tuple (insert): what is left of it is
        # built once for them all, and shared as before.
        was: tuple[str, ...] = ()
        left: tuple[str, ...] = ()
        while held > cap and mine:
            h, w = pop(False)
            if w > 0:
                single -= w
            else:
                w = -w
            held -= w
            holders = blocks.get(h)
            if holders is not None:
                if len(holders) == 1:
                    del blocks[h]  # Its only holder (a one-off tail, most often).
                elif holders is was:
                    blocks[h] = left
                else:
                    was = holders
                    left = blocks[h] = _without(holders, member_id)
        record.units = held
        record.singles = single
        self.changed.add(record)

    def unhold(self, member_id: str, hashes: Sequence[int]) -> None:
        """member_id was found not to hold these blocks (a prompt's, as Match.hashes)."""
        record = self.held_by.get(member_id)
        if record is None:
            return
        self.epoch += 1
        for h in hashes:
            if h in record.blocks:
                self._unhold(member_id, h)
                self._drop(h, member_id)

    def _unhold(self, member_id: str, h: int) -> None:
        """member_id no longer holds block h (its entry in the block's holders is gone)."""
        record = self.held_by.get(member_id)
        if record is None:
            return
        w = record.blocks.pop(h, 0)
        if w > 0:
            record.singles -= w
            record.units -= w
        elif w < 0:
            record.units += w
        self.changed.add(record)

    def _drop(self, h: int, member_id: str) -> None:
        holders = self._blocks.get(h)
        if holders is None:
            return
        left = _without(holders, member_id)
        if left:
            self._blocks[h] = left
        else:
            del self._blocks[h]

    def forget(self, keep: Container[str]) -> None:
        """Drops members not in keep; blocks no member holds any more go too."""
        self.epoch += 1
        for m in [m for m in self.held_by if m not in keep]:
            del self.held_by[m]
        for h in list(self._blocks):
            holders = self._blocks[h]
            left = tuple(m for m in holders if m in keep)
            if not left:
                del self._blocks[h]
            elif len(left) < len(holders):
                self._blocks[h] = left
