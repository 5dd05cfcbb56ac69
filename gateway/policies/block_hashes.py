"""Where a prompt's blocks end, and their chained hashes, with a memo of the long prefixes
prompts share."""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Sequence

from xxhash import xxh3_64_intdigest

# Blocks double in size every this many: a 32k-token prompt is 32 blocks, not ~1,000, so a
# pick hashes and looks up a bounded number of them (bench/pick.py), while the position where
# two prompts part is still known to within a quarter of its depth. (Every 8: 56 blocks, an
# eighth; each block a pick touches is a few cache misses, and the 32k pick took 10% longer.)
BLOCKS_PER_SIZE = 4
# Prefix groups whose shared blocks are remembered: between half of this and all of it, each at
# most max_prompt_blocks hashes (~5 KB), so ~1.3 MB at most.
MEMO_PREFIXES = 256
# Shared prefixes shorter than this many blocks are hashed block by block: a memo saves a call
# a block and costs two.
MEMO_MIN_BLOCKS = 8


class BlockLayout:
    """Where a prompt's blocks end: block_chars bytes each for the first BLOCKS_PER_SIZE, then
    twice that, and so on. Fixed by position, so every prompt (and every gateway) cuts a shared
    prefix at the same places."""

    def __init__(self, block_chars: int, max_blocks: int) -> None:
        self.ends: list[int] = []
        self.units: list[int] = []  # units up to and including block i
        self.weights: list[int] = []
        self.spans: list[tuple[int, int]] = []  # (start, end) of block i
        end = units = 0
        for i in range(max_blocks):
            weight = 1 << (i // BLOCKS_PER_SIZE)
            self.spans.append((end, end + block_chars * weight))
            end += block_chars * weight
            units += weight
            self.ends.append(end)
            self.units.append(units)
            self.weights.append(weight)

    def count(self, size: int) -> int:
        """Whole blocks in size bytes."""
        return bisect_right(self.ends, size)

    def units_of(self, blocks: int) -> int:
        return self.units[blocks - 1] if blocks else 0


class _Shared:
    __slots__ = ("digest", "fixed", "hashes", "size")

    def __init__(self, size: int, digest: int, hashes: list[int]) -> None:
        self.size = size  # bytes the shared blocks span
        self.digest = digest  # of those bytes, seeded with this process's secret
        self.hashes = hashes
        # Once two prompts of the group part ways inside the memo it holds what they share and
        # never grows again (else chats under one system prompt would swap it every request).
        self.fixed = False


class BlockHasher:
    """Block i's hash is xxh3 of its bytes seeded with block i-1's (one hash names the prefix
    up to its end, the same in every gateway). Most long prompts begin with a prefix many
    share (a system prompt, a document, earlier turns): per first block, the memo keeps the
    hashes of the blocks its prompts were seen to share and one digest of their bytes, so a
    32k-token prompt costs two hash calls over that part instead of one per block (~100 us of
    calls and slices at 64 members, bench/pick.py). The digest is seeded with a secret drawn at
    start-up: a client cannot make a prompt pass for another's prefix without knowing it."""

    def __init__(self, spans: Sequence[tuple[int, int]]) -> None:
        self.spans = spans
        self._secret = int.from_bytes(os.urandom(8), "little")
        self._memo: dict[int, _Shared] = {}
        self._older: dict[int, _Shared] = {}
        # The memo entry the last hashes() took its leading hashes from (None: none).
        self.hit: _Shared | None = None

    def hashes(self, data: bytes | memoryview, count: int) -> list[int]:
        """The chained hashes of data's first `count` blocks."""
        spans = self.spans
        h = 0
        self.hit = None
        if count < MEMO_MIN_BLOCKS:
            return [(h := xxh3_64_intdigest(data[a:b], h)) for a, b in spans[:count]]
        end = spans[0][1]
        first = xxh3_64_intdigest(data[:end], 0)
        shared = self._memo.get(first) or self._older.get(first)
        if shared is not None:
            known = shared.hashes
            if len(known) <= count and (
                xxh3_64_intdigest(data[: shared.size], self._secret) == shared.digest
            ):
                h = known[-1]
                self.hit = shared
                return known + [
                    (h := xxh3_64_intdigest(data[a:b], h)) for a, b in spans[len(known) : count]
                ]
        h = first
        return [first] + [(h := xxh3_64_intdigest(data[a:b], h)) for a, b in spans[1:count]]

    def learn(self, data: bytes | memoryview, hashes: list[int], shared: int) -> None:
        """The prompt's first `shared` blocks were seen before (they are in the index):
        remembered for its prefix group if long enough; where the group's memo holds more
        than the prompt shares with it, the memo keeps only the shared part from then on."""
        if shared < MEMO_MIN_BLOCKS:
            return
        first = hashes[0]
        memo = self._memo.get(first) or self._older.get(first)
        fixed = False
        if memo is not None:
            known = memo.hashes
            if known == hashes[: len(known)]:
                if memo.fixed or shared <= len(known):
                    return  # Known already (or fixed at what its prompts share).
            else:
                shared = _common(known, hashes)
                fixed = True
        size = self.spans[shared - 1][1]
        entry = _Shared(size, xxh3_64_intdigest(data[:size], self._secret), hashes[:shared])
        entry.fixed = fixed
        self._older.pop(first, None)
        memo_now = self._memo
        memo_now[first] = entry
        if len(memo_now) >= MEMO_PREFIXES // 2:
            self._older = memo_now
            self._memo = {}


def _common(a: list[int], b: list[int]) -> int:
    """How many leading hashes a and b share."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
