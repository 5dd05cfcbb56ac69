"""One gateway's requests in flight to one member, as prefix_aware counts their prefill."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from gateway.policies.held import Held
from gateway.policies.ticket import Ticket

# A member's cost once it is out of a pick.
_OUT = float("inf")


class _Entry:
    __slots__ = ("blocks", "left", "prefix", "ticket")

    def __init__(self, prefix: int, blocks: float, ticket: Ticket | None) -> None:
        self.prefix = prefix
        self.blocks = blocks
        self.left = blocks
        # A stream's ticket (None: a whole answer, whose first byte says nothing of prefill).
        self.ticket = ticket


def _sub(by_prefix: dict[int, float], prefix: int, blocks: float) -> None:
    left = by_prefix.get(prefix, 0.0) - blocks
    if left > 1e-9:
        by_prefix[prefix] = left
    else:
        by_prefix.pop(prefix, None)


class Backlog:
    """This gateway's requests in flight to one member, oldest first: the prompt blocks each
    brought there (new to it: its KV footprint beyond what the member held) and how many of
    those are still to prefill. The member is assumed to prefill them in order at `rate`
    blocks a second; a request stays counted until it ends. `waiting` holds the tickets of
    the streams among them not yet begun (no first byte), oldest first (a whole answer's
    first byte comes after its decode: it says nothing of a stall)."""

    __slots__ = (
        "active",
        "active_by_prefix",
        "active_cost",
        "drained",
        "entries",
        "held",
        "last",
        "left",
        "left_by_prefix",
        "waiting",
    )

    def __init__(self, held: Held) -> None:
        # What the member holds in the index (kept here to save lookups per pick).
        self.held = held
        self.entries: deque[_Entry] = deque()
        # Leading entries whose prefill is estimated done.
        self.drained = 0
        self.left = 0.0
        self.left_by_prefix: dict[int, float] = {}
        self.active = 0.0
        self.active_by_prefix: dict[int, float] = {}
        # cost()'s running-requests term (active_weight x units), as last computed: pick()
        # computes it for every busy member before it places a prompt.
        self.active_cost = 0.0
        self.last = 0.0
        self.waiting: deque[Ticket] = deque()

    def add(self, prefix: int, blocks: float, now: float, ticket: Ticket | None) -> None:
        if self.drained == len(self.entries):
            self.last = now  # Nothing was waiting: the prefill starts now.
        self.entries.append(_Entry(prefix, blocks, ticket))
        if ticket is not None:
            self.waiting.append(ticket)
        self.left += blocks
        self.left_by_prefix[prefix] = self.left_by_prefix.get(prefix, 0.0) + blocks
        self.active += blocks
        self.active_by_prefix[prefix] = self.active_by_prefix.get(prefix, 0.0) + blocks

    def began(self, ticket: Ticket) -> None:
        """A stream sent there answered: its prefill is done, whatever the rate said (one that
        was slower than the rate stays counted until it ends, as before; one faster, most often
        before the rate is learned, no longer holds up the prompts placed after it). Those
        sent before it are left to the rate: an engine that batches prefills may answer a
        short prompt before a long one sent earlier."""
        entries = self.entries
        for k in range(self.drained, len(entries)):
            entry = entries[k]
            if entry.ticket is ticket:
                if entry.left > 0.0:
                    self._drain(entry, entry.left)
                if k == self.drained:
                    self.drained += 1
                return

    def update(self, live: int, now: float, rate: float) -> None:
        """Drains what the member prefilled since the last update, then drops the requests
        that ended: `live` is this gateway's count in flight to it, and requests to one engine
        end roughly in the order they were sent."""
        entries = self.entries
        budget = (now - self.last) * rate
        self.last = now
        while self.drained < len(entries) and budget > 0:
            entry = entries[self.drained]
            used = entry.left if entry.left < budget else budget
            budget -= used
            self._drain(entry, used)
            if entry.left <= 1e-9:
                self.drained += 1
        while len(entries) > live:
            entry = entries.popleft()
            if self.drained:
                self.drained -= 1
            else:
                self._drain(entry, entry.left)
            self.active -= entry.blocks
            _sub(self.active_by_prefix, entry.prefix, entry.blocks)
        if not entries:
            self.left = self.active = 0.0
            self.left_by_prefix.clear()
            self.active_by_prefix.clear()
            self.waiting.clear()

    def cost(self, mine: int, prefix: int, now: float, rate: float, active_weight: float) -> float:
        """What these requests add to a prompt's cost at the member (prefix_aware.py): queued
        units ahead, active_weight x units held by running requests (both leaving out this
        prompt's own prefix: its prefill there is shared), and a stall past what the queue
        explains. `mine`: our requests in flight there now. -1: none left there."""
        entries = self.entries
        if len(entries) > mine or prefix in self.active_by_prefix:
            # Requests ended, or this prompt's prefix is among ours there: exactly.
            self.update(mine, now, rate)
            if not entries:
                return -1.0
            self.active_cost = active_weight * (
                self.active - self.active_by_prefix.get(prefix, 0.0)
            )
            cost = (self.left - self.left_by_prefix.get(prefix, 0.0)) + self.active_cost
        else:
            # The same sum without walking the queue: it drains in order, so what is left is
            # what was left less what the member prefilled since (update() would get the same;
            # prefix_aware runs it before adding).
            left = self.left - (now - self.last) * rate
            self.active_cost = active_weight * self.active
            cost = (left if left > 0.0 else 0.0) + self.active_cost
        waiting = self.waiting
        while waiting and waiting[0].started:
            waiting.popleft()
        if waiting:
            t = waiting[0]
            stalled = (now - t.sent_at) * rate - 2 * (t.new + t.held + t.queued)
            if stalled > 0:
                cost += stalled
        return cost

    def _drain(self, entry: _Entry, blocks: float) -> None:
        entry.left -= blocks
        self.left -= blocks
        _sub(self.left_by_prefix, entry.prefix, blocks)


def charge_queues(
    busy: dict[str, Backlog],
    ids: Sequence[str],
    position: Mapping[str, int],
    costs: list[float],
    in_flight: Mapping[str, int],
    prefix: int,
    now: float,
    rate: float,
    active_weight: float,
    slack: float,
) -> None:
    """Adds to costs (per member, in the order of ids) what our requests in flight there add
    (Backlog.cost), and drops from `busy` the members with none left. Queues only add: a
    member already costing more than `slack` over some member's whole cost is out (its cost
    set to infinity) without its queue being costed (a long prompt's eviction often sets
    members that far apart); requests that ended there still leave its queue now, as
    Backlog.cost would drop them (a queue drains in order: updated later, what ended would
    take up prefill time as if still ahead)."""
    own = in_flight.get
    idle: list[str] = []
    # A bound above the best: the cheapest member so far, with its queue.
    cheapest = costs.index(min(costs))
    first = ids[cheapest]
    backlog = busy.get(first)
    if backlog is not None:
        cost = backlog.cost(own(first, 0), prefix, now, rate, active_weight)
        if cost < 0.0:
            idle.append(first)
        else:
            costs[cheapest] += cost
    cutoff = costs[cheapest] + slack
    for mid, backlog in busy.items():
        i = position.get(mid)
        if i is None or i == cheapest:
            continue
        mine = own(mid, 0)
        if costs[i] > cutoff:
            costs[i] = _OUT
            if len(backlog.entries) > mine:
                backlog.update(mine, now, rate)
                if not backlog.entries:
                    idle.append(mid)
            continue
        cost = backlog.cost(mine, prefix, now, rate, active_weight)
        if cost < 0.0:
            idle.append(mid)
        else:
            costs[i] += cost
    for mid in idle:
        del busy[mid]
