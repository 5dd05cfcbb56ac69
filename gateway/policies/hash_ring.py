"""A consistent-hash ring with virtual nodes; stable across processes (blake2b, not hash())."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable, Iterator


def stable_hash(text: str) -> int:
    """64 bits of blake2b: every gateway maps a key to the same point."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Each member owns `vnodes` points; a key belongs to the first point clockwise from it.

    Adding or removing one of n members moves only the keys on its points, about 1/n."""

    def __init__(self, member_ids: Iterable[str], vnodes: int) -> None:
        self.vnodes = vnodes
        self.members = frozenset(member_ids)
        points = sorted((stable_hash(f"{m}#{v}"), m) for m in self.members for v in range(vnodes))
        self._points = [p for p, _ in points]
        self._owners = [m for _, m in points]

    def walk(self, key: str) -> Iterator[str]:
        """Distinct members in ring order from the key's point."""
        owners = self._owners
        if not owners:
            return
        start = bisect.bisect(self._points, stable_hash(key))
        seen: set[str] = set()
        total = len(owners)
        for step in range(total):
            owner = owners[(start + step) % total]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.members):
                    return

    def first(self, key: str, accept: Callable[[str], bool]) -> str | None:
        """The first member in ring order from the key's point that accept() takes."""
        for owner in self.walk(key):
            if accept(owner):
                return owner
        return None
