"""One member's blocks in the prefix index: its own LRU, bounded like its engine's cache."""

from __future__ import annotations

from collections import OrderedDict

# The room of a member with no bound.
UNBOUNDED = 1 << 62
# Prefixes per member whose last send is remembered (for Held.reach): between half of this and
# all of it, at most ~100 KB a member; a prefix past it is one with no verdict on its depth.
LAST_SENT = 1024


class Held:
    """One member's blocks in the index, least recently sent first -> units (negative once
    reused), with their total, the units not reused, its own bound (0: member_blocks) and the
    bound in force (`room`: UNBOUNDED when none)."""

    __slots__ = ("blocks", "cap", "foreign", "last", "older", "room", "sent", "singles", "units")

    def __init__(self, room: int = UNBOUNDED) -> None:
        self.blocks: OrderedDict[int, int] = OrderedDict()
        self.units = 0
        self.singles = 0
        self.cap = 0
        self.room = room
        # Units other gateways sent there lately (shared_sends.py): taken off the room.
        self.foreign = 0
        # Units the member had to take in (sent there new to it, or found missing) so far, and
        # that count just after each prefix (first-block hash) was last sent there, with the
        # units of that prompt: the newest in `last`, the generation before in `older`. (Two
        # plain dicts: an OrderedDict bounded by popping its oldest rebuilds itself every few
        # hundred sends, a 15-50 us stall.)
        self.sent = 0
        self.last: dict[int, tuple[int, int]] = {}
        self.older: dict[int, tuple[int, int]] = {}

    def mark(self, key: int, units: int = 0) -> None:
        """Prefix `key` was just sent there, in a prompt of `units`."""
        last = self.last
        last[key] = (self.sent, units)
        if len(last) >= LAST_SENT // 2:
            self.older = last
            self.last = {}

    def took_again(self, key: int, units: int) -> None:
        """The member had lost `units` of prefix `key`'s prompt and prefilled them again: what
        it holds sits that much deeper, but not that prompt, which its engine took in just after
        its last send (counted from its mark, it would be twice as deep)."""
        self.sent += units
        for table in (self.last, self.older):
            mark = table.get(key)
            if mark is not None:
                table[key] = (mark[0] + units, mark[1])
                return

    def reach(self, key: int, held: int) -> int:
        """How deep in the member's LRU a prompt of prefix `key` holding `held` units there
        sits: what the member took in since that prefix was last sent, plus the held part
        (0: not known). An LRU cache of C units still holds the part if reach <= C."""
        if held <= 0:
            return 0
        last = self.last.get(key)
        if last is None:
            last = self.older.get(key)
        return self.sent - last[0] + held if last is not None else 0

    def deeper(self, reach: int, units: int, but: int) -> list[int]:
        """Prefixes still held there (their first block) whose prompt, as last sent, now sits
        at least `reach` deep in the member's LRU, the deepest first, as many as it takes to
        make `units` of them (the one that crosses included); `but` left out."""
        sent = self.sent
        blocks = self.blocks
        found: list[tuple[int, int, int]] = []
        newer = self.last
        for table in (newer, self.older):
            for key, (at, size) in table.items():
                if key == but or key not in blocks or (table is not newer and key in newer):
                    continue
                depth = sent - at + size
                if depth >= reach:
                    found.append((depth, key, size))
        found.sort(reverse=True)
        out: list[int] = []
        for _, key, size in found:
            if units <= 0:
                break
            out.append(key)
            units -= size
        return out
