"""How much prompt a member can run at once, learned from prompts that waited for KV room.

An engine admits a prompt once its KV blocks fit beside those of the requests it is running
(vLLM, SGLang and the simulator alike); cached prefixes of ended requests are evicted to make
room, running ones are not. A prompt that does not fit waits for running requests to end, which
takes their decode: seconds, against the tens of milliseconds of a prefill. A member's prefix
cache bound (cache_estimate.py) says nothing of this, and a member whose engine is small holds
one long prompt at a time: a second sent there while the first decodes waits for the whole of
it (seen: 6,000-token unique prompts on an 8,192-token engine among larger ones, the slowest 16
of 320 at 8/s nearly all such waits there, with every policy but one that knew the sizes).

So, per member: a prompt that waited (time to first token past STALL_MARGIN times what it
would take alone: the prefill of its whole prompt and this gateway's queue ahead, or the
fastest answer any request had, whichever is more; with this gateway's other requests there
all answering and no other gateway's in flight) shows that the member cannot run its new units
beside those of ours running there; `short` keeps the least such total. While it holds, a
prompt that would bring ours running there to that total or past costs the wait such prompts
took there (averaged; in units at the member's prefill speed), on top of its queue. The bound
lapses TTL_S after the latest wait. (A prompt admitted at once at the bound dropped it, at
first: the request running beside it had often just ended, and the bound went every few
seconds.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.policies.backlog import Backlog
from gateway.policies.prefix_index import Match
from gateway.policies.ticket import Ticket

# A first byte this many times the prefill of the whole prompt and the queue ahead waited.
STALL_MARGIN = 2.0
# How far a new wait moves a member's average wait.
WAIT_ALPHA = 0.3
# Seconds a member's bound is kept after its latest wait.
TTL_S = 60.0


@dataclass(slots=True)
class _Short:
    units: float  # ours running there plus the prompt that waited: more than it can run
    wait_s: float  # how long such a prompt waited, on average
    seen_at: float  # monotonic seconds of the latest wait


class KvRooms:
    """Per member, the prompt units it was seen unable to run at once, and what that costs."""

    __slots__ = ("short",)

    def __init__(self) -> None:
        self.short: dict[str, _Short] = {}

    def answered(
        self, ticket: Ticket, ttft_s: float, unit_s: float | None, floor_s: float, now: float
    ) -> None:
        """A stream's first byte came ttft_s after it was sent; `unit_s`: seconds a unit of
        prompt takes to prefill (None: not learned yet); `floor_s`: the fastest answer seen."""
        if unit_s is None or ticket.running <= 0.0 or not ticket.clear:
            return  # Nothing of ours running beside it, or others' requests there unknown.
        member = ticket.member
        total = ticket.running + ticket.new
        # What it would have taken alone: its prefill and our queue ahead, or the fastest
        # answer any request had, whichever is more (with prompts all alike, the fastest is
        # one whole prefill: the two do not add up).
        alone = max(unit_s * (ticket.new + ticket.held + ticket.queued), floor_s)
        if ttft_s > STALL_MARGIN * alone:
            waited = ttft_s - alone
            short = self._live(member, now)
            if short is None:
                self.short[member] = _Short(total, waited, now)
            else:
                short.units = min(short.units, total)
                short.wait_s += WAIT_ALPHA * (waited - short.wait_s)
                short.seen_at = now

    def cost(self, member: str, running: float, new: float, rate: float, now: float) -> float:
        """What a prompt of `new` units costs at member for the room it may wait for, with
        `running` units of ours in flight there (units; `rate`: units a second it prefills)."""
        short = self._live(member, now)
        if short is None or running + new < short.units:
            return 0.0
        return short.wait_s * rate

    def charge(
        self,
        busy: Mapping[str, Backlog],
        position: Mapping[str, int],
        costs: list[float],
        match: Match,
        rate: float,
        now: float,
    ) -> None:
        """Adds to costs (per member, at `position`) the wait for room at the members with
        a bound and requests of ours in flight (`busy`), for the prompt `match` describes."""
        depth = match.depth
        for mid in list(self.short):
            backlog = busy.get(mid)
            i = position.get(mid)
            if backlog is None or i is None or costs[i] == float("inf"):
                continue
            new = match.blocks - (depth[mid][0] if mid in depth else 0)
            costs[i] += self.cost(mid, backlog.active, new, rate, now)

    def bound(self, member: str, now: float) -> float:
        """The units member was seen unable to run at once (0.0: none, or lapsed)."""
        short = self._live(member, now)
        return short.units if short is not None else 0.0

    def _live(self, member: str, now: float) -> _Short | None:
        """The member's bound, dropped once TTL_S passed without another wait."""
        short = self.short.get(member)
        if short is not None and now - short.seen_at > TTL_S:
            del self.short[member]
            return None
        return short

    def forget(self, keep: set[str]) -> None:
        for m in [m for m in self.short if m not in keep]:
            del self.short[m]
