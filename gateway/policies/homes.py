"""The controller's homes for prompt prefixes as a gateway follows them (Member.home_prefixes,
controller/prefix_homes.py): with several gateways, a homed prefix is taken as held at its home
and nowhere else, so that every gateway sends it there; load still spills it, as a prefix new
to the others. While the controller is away, its homes are followed for STALE_S, then each
gateway places as before.

A homed prefix goes to its home unless that member is overloaded: more requests in flight
than OVERLOAD times the other candidates' mean and SLACK more. Weighing load against what a spill
evicts was left to each gateway's cost model before, and with three gateways on four 16k-token
engines it spilled 6,000-token prompts onto members whose caches the controller had filled
with two other homes, each spill evicting one (docs/benchmarks.md, "Routing in virtual time").

Before the first send of a prompt of ASK_MIN_TOKENS or more whose prefix no gateway has sent
(none homed, none held here, none of the others' sends told), the gateway asks the controller
for its home (wants(); GatewayService.AskHome): every gateway that asks gets the same member,
where gateways placing a new prefix each by what it knows put it on up to one member each
before the first report (and three of eight groups on one of four equal engines in 96% of
draws). The answer is followed as a home until the snapshots carry it (ASKED_S at most).

Where long prompts' prefixes do not recur, the ask's round trip is all it costs: every request
of a pool of unique prompts waits one (2.5 ms median on real processes, three gateways on two
cores) for a home that no one follows. Its answer still matters: the controller's homes spread
unique prompts over the members by cache size, which each gateway placing by its own view does
not (p99 0.51 and 0.63 s against the asks' 0.29 s at 4/s, virtual time, seeds 5-8). So
once none of the last RECUR_WINDOW long prompts this gateway routed had a known prefix (homed,
held here, sent by another gateway: unique()), the gateway books its next home ahead
(HomeAsks) and a new prefix takes it at once. One known prefix in the window brings the waits
back."""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Mapping, Sequence

from gateway.members import Member
from gateway.policies.prefix_index import PrefixIndex
from gateway.policies.shared_sends import STALE_S

OVERLOAD = 2.0
SLACK = 2.0
# A prompt this long (tokens) whose prefix is new gets its home from the controller before it
# is sent: its prefill (100 ms and more) dwarfs the ask (about a millisecond), and shorter
# ones cost little to place twice.
ASK_MIN_TOKENS = 1000
# An answer is followed this long before the snapshots must carry it (they do within a second
# or two), and so many at most.
ASKED_S = 5.0
ASKED_MAX = 4096
# The long prompts whose prefixes' recurrence decides whether asks wait (unique()).
RECUR_WINDOW = 8


def overloaded(loads: Sequence[float], i: int) -> bool:
    """Whether member i's requests in flight are far past the other candidates' mean."""
    n = len(loads) - 1
    return n > 0 and loads[i] > OVERLOAD * (sum(loads) - loads[i]) / n + SLACK


class Homes:
    def __init__(self) -> None:
        # Prefix -> its home, as the latest snapshot told; and when that came.
        self.by_prefix: dict[int, str] = {}
        self.told_at = 0.0
        # Prefix -> its home as the controller answered an ask, and when (until snapshots
        # carry it).
        self.asked: dict[int, tuple[str, float]] = {}
        # Whether each of the last RECUR_WINDOW long prompts' prefixes was known (wants()).
        self._known: deque[bool] = deque(maxlen=RECUR_WINDOW)

    def take(self, members: Sequence[Member], index: PrefixIndex, now: float) -> None:
        """The snapshot's homes: a prefix homed somewhere new is forgotten everywhere else in
        the index (its copies there go cold as every gateway sends it home)."""
        told = {
            prefix: m.id
            for m in members
            if m.healthy and not m.draining
            for prefix in m.home_prefixes
        }
        self.told_at = now
        asked = self.asked
        if asked:
            for prefix, (home, at) in list(asked.items()):
                if prefix in told or now - at > ASKED_S:
                    del asked[prefix]
                else:
                    told[prefix] = home
        if told == self.by_prefix:
            return
        was = self.by_prefix
        for prefix, home in told.items():
            if was.get(prefix) != home:
                for mid in list(index.held_by):
                    if mid != home:
                        index.unhold(mid, (prefix,))
        self.by_prefix = told

    def clear(self) -> None:
        self.by_prefix = {}
        self.asked.clear()

    def wants(
        self,
        key: bytes | memoryview,
        candidates: Sequence[Member],
        index: PrefixIndex,
        sent: Container[int],
        chars_per_token: int,
    ) -> tuple[int, int] | None:
        """The prompt's prefix and tokens when it should be homed before it is sent: long,
        new to every gateway as far as this one knows (not homed, not in the index, not in
        the others' sends), in a pool whose every engine reports its cache (the controller
        homes nothing in others); else None. Counts whether the prefix was known (unique())."""
        if len(key) < ASK_MIN_TOKENS * chars_per_token:
            return None
        prefix = index.first_key(key)
        if prefix == -1:
            return None
        for m in candidates:
            if m.cache_tokens <= 0:
                return None
        known = prefix in self.by_prefix or index.holds(prefix) or prefix in sent
        self._known.append(known)
        return None if known else (prefix, len(key) // chars_per_token)

    def unique(self) -> bool:
        """Whether none of the last RECUR_WINDOW long prompts' prefixes was known (a pool of
        unique prompts: homes may be booked ahead, HomeAsks)."""
        return len(self._known) == RECUR_WINDOW and not any(self._known)

    def told(self, prefix: int, home: str, now: float) -> None:
        """The controller's answer to an ask: followed as a home from now on."""
        asked = self.asked
        if len(asked) >= ASKED_MAX:
            del asked[next(iter(asked))]
        asked[prefix] = (home, now)
        self.by_prefix[prefix] = home

    def at(self, prefix: int, position: Mapping[str, int], now: float) -> int:
        """The position of the prefix's home among the candidates (-1: none, or the controller
        has been away past STALE_S)."""
        home = self.by_prefix.get(prefix) if self.by_prefix else None
        if home is None or now - self.told_at > STALE_S:
            return -1
        return position.get(home, -1)

    def claim(self, prefix: int, home: str, depth: dict[str, tuple[int, int]], blocks: int) -> str:
        """Makes the prefix's home (one of the candidates: at()) its only holder in `depth` (as
        far as this gateway sent it there, else the whole prompt; nothing where this gateway
        asked for its home and has not sent it: new to every gateway then, its first send is a
        prefill of it all, which teaches the member's speed). Returns the home where this
        gateway sent nothing of it: its ticket is presumed there (a miss is the home's first
        fill, not a verdict on its cache); else ""."""
        unseen = home not in depth
        held = (0 if prefix in self.asked else blocks) if unseen else depth[home][0]
        depth.clear()
        if held:
            depth[home] = (held, 0)
        return home if unseen else ""
