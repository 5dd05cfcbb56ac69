"""prefix_aware's fast path: a member holding part of the prompt whose whole cost is below what
any other member could cost gets it without the others being costed (a long prompt whose
prefix is held, most often)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.policies.backlog import Backlog
from gateway.policies.columns import Columns, evicted
from gateway.policies.prefix_index import Match


def cheapest_holder(
    cols: Columns,
    match: Match,
    in_flight: Mapping[str, int],
    busy: dict[str, Backlog],
    now: float,
    rate: float,
    below: float,
    weights: tuple[float, float, float, float],
) -> int:
    """The position of the one holder whose whole cost (prefix_aware.py) is below `below` and
    every other holder's (-1: none, or a tie); `rate`: the members' drain rate, units a
    second; weights: request_blocks, active_weight, evict_weight, hot_evict_weight. Drops from
    `busy` the holders with none of our requests left."""
    per_request, active_weight, evict, hot = weights
    position = cols.position
    base = cols.base
    records = cols.records
    own = in_flight.get
    blocks = match.blocks
    key = match.key
    best = below
    won = -1
    for mid, (held, _) in match.depth.items():
        i = position.get(mid)
        if i is None or base[i] - held > best:
            continue  # Costs more than the best so far (or than any other could).
        mine = own(mid, 0)
        cost = (
            base[i]
            + per_request * mine
            + evicted(records[i], blocks - held, evict, hot, cols.room(i))
            - held
        )
        backlog = busy.get(mid)
        if backlog is not None and cost < best:
            queued = backlog.cost(mine, key, now, rate, active_weight)
            if queued < 0.0:
                del busy[mid]
            else:
                cost += queued
        if cost < best:
            best, won = cost, i
        elif cost == best:
            won = -1  # A tie: broken by the full pass's rules.
    return won


def drop_ended(
    busy: dict[str, Backlog],
    position: Mapping[str, int],
    in_flight: Mapping[str, int],
    now: float,
    rate: float,
) -> None:
    """Takes the requests that ended out of the candidates' queues, as the full pass does (a
    queue updated only now and then would drain what ended as if still ahead of the rest),
    and drops the members with none left from `busy`."""
    own = in_flight.get
    idle: list[str] = []
    for mid, queue in busy.items():
        mine = own(mid, 0)
        if len(queue.entries) > mine and mid in position:
            queue.update(mine, now, rate)
            if not queue.entries:
                idle.append(mid)
    for mid in idle:
        del busy[mid]
