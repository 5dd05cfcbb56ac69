"""Prompt prefixes the other gateways sent each member lately: what its cache holds besides ours.

Each gateway's index counts only what it sent. With several gateways, a member's engine holds
what all of them sent: a gateway that spills a busy prefix, or places a new one, onto a member
the others filled already believes it has room there and thrashes it (seen: three gateways'
spills of three prompt groups landing on one 16k-token engine). So each gateway reports the
prefixes it sent each member (first-block hash and prompt size) with its usage; the controller
hands every gateway the union per member for 30 s, with how many gateways sent each
(Member.sent_prefixes); a gateway counts those that another gateway sent and its own index
does not hold there in that member's cache (its index keeps less of its own there, as the
engine's LRU would) and takes a prefix another gateway put on a member as held there (it
follows it rather than placing it a second time)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.members import Member
from gateway.policies.held import Held

# A gateway's own sends kept per member for its next usage report (the controller takes no
# more from a report's line).
TO_REPORT = 64
# The others' sends are dropped this long after the last snapshot that told them (twice the
# controller's SENT_TTL_S): while the controller is away each gateway goes on with its own.
STALE_S = 60.0
# A gateway's own reports are counted among a prefix's senders this long (the controller's
# SENT_TTL_S and some slack).
MINE_S = 35.0


class SharedSends:
    def __init__(self) -> None:
        # This gateway's own sends since its last report: member -> prefix -> prompt units;
        # and those reported lately: member -> prefix -> when.
        self._out: dict[str, dict[int, int]] = {}
        self._mine: dict[str, dict[int, float]] = {}
        # Prefix -> ((member, units), ...) the other gateways sent lately. Read by pick().
        self.by_prefix: dict[int, tuple[tuple[str, int], ...]] = {}
        # Per member, the others' units in its cache (what the index takes off its room).
        self.foreign: dict[str, int] = {}
        # Per member, the units of the others' prefixes new since the previous snapshot:
        # what the member took in besides ours (Held.sent, so that how deep a prefix sits in
        # its LRU counts the others' traffic too).
        self.arrived: dict[str, int] = {}
        self._seen: dict[str, tuple[tuple[int, ...], ...]] = {}
        self._claims: dict[str, dict[int, int]] = {}
        # Per member, every prefix another gateway sent there lately, claimed or not (a member
        # of unknown cap, or past half its cap); and prefix -> the members so sent it: where
        # the others put it, read by pick() when it places a prefix new to this gateway.
        self._others: dict[str, list[int]] = {}
        self.placed: dict[int, tuple[str, ...]] = {}
        self.told_at = 0.0

    def note(self, member: str, prefix: int, units: int) -> None:
        """This gateway sent member a prompt of `units` with this prefix."""
        mine = self._out.get(member)
        if mine is None:
            mine = self._out[member] = {}
        if prefix in mine or len(mine) < TO_REPORT:
            mine[prefix] = units

    def drain(self, now: float) -> dict[str, dict[int, int]]:
        """This gateway's sends since the last call, per member (prefix -> units)."""
        out, self._out = self._out, {}
        for member, sent in out.items():
            mine = self._mine.get(member)
            if mine is None:
                mine = self._mine[member] = {}
            for prefix in sent:
                mine.pop(prefix, None)
                mine[prefix] = now
            while mine and (len(mine) > 4 * TO_REPORT or now - next(iter(mine.values())) > MINE_S):
                del mine[next(iter(mine))]
        for member in [m for m, mine in self._mine.items() if not mine]:
            del self._mine[member]
        return out

    def told(
        self,
        members: Sequence[Member],
        records: dict[str, Held],
        units_per_token: float,
        now: float,
        bound: Callable[[str], int],
    ) -> bool:
        """Takes the controller's union of sends per member: those another gateway sent and
        this gateway's index does not hold there, the latest first, up to half the member's
        cap in units (`bound`, reported or learned): what a small cache took 30 s ago is gone,
        and claims it still holds it would send requests to miss there. Members of unknown
        cap get none (static backends before their caps are learned): 30 s of the others'
        sends weighed against a guess made the small ones look like holders of what they
        had long evicted. Returns whether anything changed."""
        self.told_at = now
        changed = False
        present = set()
        self.arrived = {}
        for m in members:
            mid = m.id
            present.add(mid)
            told = (m.sent_prefixes, m.sent_prefix_tokens, m.sent_prefix_senders)
            if self._seen.get(mid) == told:
                continue
            self._seen[mid] = told
            changed = True
            record = records.get(mid)
            mine = self._mine.get(mid, {})
            claims: dict[int, int] = {}
            prefixes, sizes, counts = told
            if len(counts) != len(prefixes):
                counts = (1,) * len(prefixes)  # A controller that does not count senders.
            room = bound(mid) // 2
            before = self._claims.get(mid, {})
            new = 0
            others: list[int] = []
            for prefix, tokens, senders in reversed(
                list(zip(prefixes, sizes, counts, strict=False))
            ):
                sent_at = mine.get(prefix)
                if sent_at is not None and now - sent_at <= MINE_S:
                    senders -= 1  # This gateway's own report among them.
                if senders < 1:
                    continue  # Nobody else's.
                others.append(prefix)
                if not room or (record is not None and prefix in record.blocks):
                    continue  # No claim on a cache of unknown size; or counted in ours.
                units = max(1, int(tokens * units_per_token))
                if prefix not in before:
                    new += units
                if units > room:
                    room = 0  # Older ones than this are gone too.
                    continue
                room -= units
                claims[prefix] = units
            if others:
                self._others[mid] = others
            else:
                self._others.pop(mid, None)
            if new:
                self.arrived[mid] = new
            if claims:
                self._claims[mid] = claims
            else:
                self._claims.pop(mid, None)
        for gone in [mid for mid in self._seen if mid not in present]:
            del self._seen[gone]
            self._claims.pop(gone, None)
            self._others.pop(gone, None)
            changed = True
        if changed:
            self.foreign = {mid: sum(c.values()) for mid, c in self._claims.items()}
            by_prefix: dict[int, list[tuple[str, int]]] = {}
            for mid, claims in self._claims.items():
                for prefix, units in claims.items():
                    by_prefix.setdefault(prefix, []).append((mid, units))
            self.by_prefix = {prefix: tuple(v) for prefix, v in by_prefix.items()}
            placed: dict[int, list[str]] = {}
            for mid, sent in self._others.items():
                for prefix in sent:
                    placed.setdefault(prefix, []).append(mid)
            self.placed = {prefix: tuple(v) for prefix, v in placed.items()}
        return changed

    def stale(self, now: float) -> list[str]:
        """Drops what the others sent if no snapshot told it for STALE_S; returns the members
        whose room it took."""
        if not (self._claims or self.placed) or now - self.told_at <= STALE_S:
            return []
        members = list(self._claims)
        self._claims.clear()
        self._seen.clear()
        self._others.clear()
        self.foreign = {}
        self.by_prefix = {}
        self.placed = {}
        return members

    def dropped(self, member: str, prefix: int) -> None:
        """This gateway sent the prefix there itself now: its own index counts it."""
        claims = self._claims.get(member)
        if claims is None or prefix not in claims:
            return
        units = claims.pop(prefix)
        self.foreign[member] = self.foreign.get(member, units) - units
        left = tuple(c for c in self.by_prefix.get(prefix, ()) if c[0] != member)
        if left:
            self.by_prefix[prefix] = left
        else:
            self.by_prefix.pop(prefix, None)
