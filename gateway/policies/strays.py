"""Prefixes this gateway placed new where the other gateways did not: moved to their place once
the others' sends tell it.

Every gateway places a prefix new to it at the same member (placement.py) among those that cost
about as little, but "about as little" is each gateway's own view: one that meets a prompt group
first while its own request runs at the group's place sends it elsewhere, and its index then
keeps it there (a holder wins over a member it does not know to hold it). Nothing tells it of
the others' sends before the next usage reports (a second, on every gateway), and at start-up
every group is met first in that second. Where the others placed it at its rendezvous place and
not where this gateway put it, this gateway forgets its own copy (a member of unknown cache
only: elsewhere the others' sends are counted as held and cost decides), so its next request of
the group goes to the others' place: one copy of each group, not one per gateway (seen: static
backends, three gateways, a group put on the 8k-token engine beside another by one gateway,
the two thrashing there)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

# Prefixes remembered (the oldest are dropped first); each is a dict entry.
PREFIXES = 4096


class Strays:
    def __init__(self) -> None:
        # Prefix -> the member this gateway placed it at, new to it.
        self._at: dict[int, str] = {}

    def placed(self, prefix: int, member: str) -> None:
        """This gateway sent a prefix new to it to member."""
        at = self._at
        at.pop(prefix, None)
        at[prefix] = member
        if len(at) > PREFIXES:
            del at[next(iter(at))]

    def found(
        self,
        others: Mapping[int, tuple[str, ...]],
        home: Callable[[int], str],
        movable: Callable[[str], bool],
    ) -> list[tuple[str, int]]:
        """(member, prefix) this gateway placed where the other gateways did not, while they
        put it at its place (`home`, the rendezvous member); `others`: prefix -> the members
        the others sent it to lately. Each is returned once."""
        at = self._at
        out: list[tuple[str, int]] = []
        for prefix in others.keys() & at.keys():
            mine = at[prefix]
            there = others[prefix]
            if mine in there:
                del at[prefix]  # They sent it there too: agreed.
                continue
            place = home(prefix)
            if place != mine and place in there and movable(mine):
                out.append((mine, prefix))
                del at[prefix]
        return out
