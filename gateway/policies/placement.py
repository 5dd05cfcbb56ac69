"""Where a prefix goes when no member this gateway knows of holds it: the same member on every
gateway, so that N gateways do not put one prompt prefix on N members.

Weighted rendezvous hashing: each member scores a prefix by xxh3 of its id seeded with the
prefix's first-block hash (both the same in every process), weighted by the cache it reports
(all gateways read the same reports from the controller), else by the cache gateways learned
it has (the controller hands that to all alike), else by the cache this gateway learned it
has; learned sizes rounded down to a power of two so that gateways that learned about the same
weigh alike. A member of no kind weighs as the median report where others report, else as the
policy's starting guess (member_capacity_tokens): nothing has shown it smaller, and weighing it
as the median of those learned small would send new prefixes back to a member found thrashing
(seen: three gateways kept three sessions on an 8k-token engine whose cap they had learned at
4k, because the others, unlearned, weighed the same). The highest score wins. Among
members that cost about the same, every gateway so picks the same one for a new prefix, and
the same one to spill a busy prefix to. (A gateway alone first narrows a new prefix's choice to
the least filled of them while caches are unknown: Columns.least_filled.) Adding or removing
one member moves only the prefixes it wins or won."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from itertools import repeat

from xxhash import xxh3_64_intdigest

from gateway.members import Member

_SCALE = 1.0 / (float(1 << 64) + 1.0)


class Placement:
    def __init__(self, default_tokens: int = 0) -> None:
        # What a member nothing is known of is taken to cache (0: weigh it as the median).
        self._default = _rounded(default_tokens)
        self._weights: dict[str, float] = {}
        self._ids: dict[str, bytes] = {}
        self._shape: tuple[tuple[str, int, int], ...] = ()
        self._learned: dict[str, int] = {}
        # Every weight is 1: the highest hash wins, no logarithms needed.
        self._uniform = True

    def update(self, members: Sequence[Member]) -> None:
        """Takes the members' reported caches as weights when they changed."""
        shape = tuple(
            sorted(
                (m.id, max(m.cache_tokens, 0), _rounded(m.learned_cache_tokens)) for m in members
            )
        )
        if shape == self._shape:
            return
        self._shape = shape
        self._ids = {mid: mid.encode() for mid, _, _ in shape}
        for gone in [m for m in self._learned if m not in self._ids]:
            del self._learned[gone]
        self._reweigh()

    def learn(self, member_id: str, cache_tokens: int) -> None:
        """What this gateway learned member_id caches (used while it reports nothing)."""
        size = _rounded(cache_tokens)
        if self._learned.get(member_id, 0) != size:
            self._learned[member_id] = size
            self._reweigh()

    def _reweigh(self) -> None:
        learned = self._learned
        reports = [c for _, c, _ in self._shape if c > 0]
        unknown = int(statistics.median(reports)) if reports else self._default
        sizes = {
            mid: c or shared or learned.get(mid, 0) or unknown for mid, c, shared in self._shape
        }
        known = [c for c in sizes.values() if c > 0]
        typical = statistics.median(known) if known else 0
        self._weights = {mid: (c / typical if c and typical else 1.0) for mid, c in sizes.items()}
        self._uniform = all(w == 1.0 for w in self._weights.values())

    def choose(self, key: int, ids: Sequence[str]) -> int:
        """The position in ids (not empty) of the member the prefix belongs to."""
        if len(ids) == 1:
            return 0
        seed = key & 0xFFFFFFFFFFFFFFFF
        raw = self._ids
        try:
            names = list(map(raw.__getitem__, ids))
        except KeyError:
            names = [raw.get(mid) or mid.encode() for mid in ids]
        # Each member's claim on the prefix: highest wins.
        claims: list[float] = list(map(xxh3_64_intdigest, names, repeat(seed)))
        if not self._uniform:
            weight = self._weights.get
            log = math.log
            claims = [
                log((h + 1) * _SCALE) / weight(mid, 1.0) for h, mid in zip(claims, ids, strict=True)
            ]
        return claims.index(max(claims))


def _rounded(cache_tokens: int) -> int:
    """Down to a power of two (0 stays 0)."""
    return 1 << (cache_tokens.bit_length() - 1) if cache_tokens > 0 else 0
