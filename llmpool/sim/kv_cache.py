"""A paged KV cache with prefix caching: pinned blocks in use, LRU eviction of finished ones
(tail blocks first)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Allocation:
    """The blocks one sequence holds: hashed prompt blocks (shareable) and private blocks."""

    hashes: tuple[bytes, ...]
    private_blocks: int
    hit_blocks: int

    @property
    def blocks(self) -> int:
        return len(self.hashes) + self.private_blocks


class KvCache:
    """Fixed number of blocks. Hashed blocks are shared by reference count; at zero they stay
    cached (evictable, least recently used first) until a new block needs their space."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks <= 0:
            raise ValueError("capacity_blocks must be positive")
        self.capacity = capacity_blocks
        self._refs: dict[bytes, int] = {}
        self._evictable: OrderedDict[bytes, None] = OrderedDict()
        self._used = 0  # distinct blocks with a reference: pinned hashed blocks plus private ones

    @property
    def used_blocks(self) -> int:
        return self._used

    @property
    def cached_blocks(self) -> int:
        """Blocks that hold a reusable prefix but no running sequence (evictable)."""
        return len(self._evictable)

    @property
    def free_blocks(self) -> int:
        """Blocks never written or already evicted."""
        return self.capacity - self._used - len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use by running sequences (vLLM's kv_cache_usage_perc)."""
        return self._used / self.capacity

    def contains(self, block_hash: bytes) -> bool:
        return block_hash in self._refs

    def prefix_hits(self, hashes: Sequence[bytes]) -> int:
        """How many leading blocks of a prompt are cached (in use or evictable)."""
        hits = 0
        for h in hashes:
            if h not in self._refs:
                break
            hits += 1
        return hits

    def can_allocate(self, hashes: Sequence[bytes], private_blocks: int) -> bool:
        new = private_blocks
        revived = 0  # evictable blocks this allocation pins: they stop being evictable space
        for h in hashes:
            refs = self._refs.get(h)
            if refs is None:
                new += 1
            elif refs == 0:
                revived += 1
        return new <= self.free_blocks + len(self._evictable) - revived

    def allocate(self, hashes: Sequence[bytes], private_blocks: int) -> Allocation:
        """Pins cached blocks, writes new ones (evicting LRU cached blocks as needed)."""
        if not self.can_allocate(hashes, private_blocks):
            raise MemoryError("KV cache has too few free blocks")
        hits = self.prefix_hits(hashes)
        # Pin first so that eviction below cannot take a block this sequence reuses.
        for h in hashes:
            refs = self._refs.get(h)
            if refs is not None:
                if refs == 0:
                    del self._evictable[h]
                    self._used += 1  # a shared block is one physical block, counted once
                self._refs[h] = refs + 1
        for h in hashes:
            if h not in self._refs:
                self._take_block()
                self._refs[h] = 1
                self._used += 1
        for _ in range(private_blocks):
            self._take_block()
            self._used += 1
        return Allocation(tuple(hashes), private_blocks, hits)

    def release(self, allocation: Allocation) -> None:
        """Unpins a sequence's blocks; hashed ones stay cached as most recently used, the
        prompt's last block nearest eviction and its first block last, as vLLM frees them
        (reversed, "so that the tail blocks are evicted first") and SGLang's radix cache evicts
        leaves first: a cache that runs short cuts the tails of the prompts it holds, and
        their heads still hit."""
        for h in reversed(allocation.hashes):
            refs = self._refs[h] - 1
            self._refs[h] = refs
            if refs == 0:
                self._evictable[h] = None
                self._used -= 1
        self._used -= allocation.private_blocks

    def reset_prefix_cache(self) -> int:
        """Forgets every cached block no running sequence holds; returns how many it dropped.
        Blocks in use stay: they are part of running sequences, not a cache."""
        dropped = len(self._evictable)
        for h in self._evictable:
            del self._refs[h]
        self._evictable.clear()
        return dropped

    def _take_block(self) -> None:
        if self.free_blocks > 0:
            return
        oldest, _ = self._evictable.popitem(last=False)
        del self._refs[oldest]
