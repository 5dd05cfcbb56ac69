"""Prompt prefixes that members were found no longer to hold, and where not to place them again.

A prefix (its first block's hash) whose prediction missed at a member, or whose first request
there waited for room, was forgotten there by the index; placed afresh, its rendezvous place
would send it straight back to the member that could not keep it, every time until that
member's cap was learned (with several gateways each sees a part of a member's traffic, and
the cap comes late). So placement passes over the last few members a prefix missed at, while
others cost about as little. Each gateway reports its own misses with usage; the controller
hands every gateway the union, per member, for a minute (Member.missed_prefixes), and a
gateway handed one acts on it as on its own, once while it is handed out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container

# Prefixes remembered with the members they missed at.
PREFIXES = 4096
# Members remembered per prefix (the latest kept).
MEMBERS = 3
# A gateway's own misses kept per member for its next usage report.
TO_REPORT = 64


class MissedPrefixes:
    def __init__(self) -> None:
        # Prefix -> the members it missed at, latest last. Read by pick() (placement).
        self.by_prefix: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        # This gateway's own since its last report, per member.
        self._out: dict[str, list[int]] = {}
        # Those the controller hands out now, (member, prefix), acted on already.
        self._told: dict[tuple[str, int], None] = {}

    def note(self, prefix: int, member: str, own: bool = True) -> None:
        """prefix missed at member (found by this gateway when own)."""
        if own:
            mine = self._out.setdefault(member, [])
            if len(mine) < TO_REPORT:
                mine.append(prefix)
        by_prefix = self.by_prefix
        was = by_prefix.pop(prefix, ())
        by_prefix[prefix] = (*(m for m in was if m != member), member)[-MEMBERS:]
        if len(by_prefix) > PREFIXES:
            by_prefix.popitem(last=False)

    def passes_over(self, prefix: int) -> tuple[str, ...]:
        """The members placing this prefix afresh passes over."""
        return self.by_prefix.get(prefix, ())

    def pending(self, among: Container[int]) -> bool:
        """Whether this gateway found any of these missing since its last report."""
        return any(prefix in among for found in self._out.values() for prefix in found)

    def drain(self) -> dict[str, list[int]]:
        """This gateway's own misses since the last call, per member, for its usage report."""
        out, self._out = self._out, {}
        return out

    def told(self, handed: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """What the controller hands out now, (member, prefix): noted; returns those new since
        the last call (for the index to forget there). One that stops being handed out and
        comes again later (a new miss) is new again."""
        if not handed and not self._told:
            return []
        seen, self._told = self._told, dict.fromkeys(handed)
        fresh = [key for key in handed if key not in seen]
        for member, prefix in fresh:
            self.note(prefix, member, own=False)
        return fresh
