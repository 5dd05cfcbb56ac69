"""How much a prompt cache holds, from where in its LRU prompts were found cached or missed.

Shared by the gateways (each over its own verdicts, gateway/policies/cache_estimate.py) and the
controller (over every gateway's together, controller/usage.py)."""

from __future__ import annotations

from collections.abc import Iterable

# The most a cap shrinks on one step (a quarter): one bad window cannot empty the index.
LEAST_KEPT = 0.75
# The misses past a depth that bound the cache there, outnumbering the hits there this many
# times: a busy host makes some hits look like misses at any depth, a cache too small misses
# nearly always past its size.
MISSES_TO_BOUND = 3
MISSES_PER_HIT_PAST = 2


def cap_bound(
    points: Iterable[tuple[int, bool]],
    misses_to_bound: int = MISSES_TO_BOUND,
    misses_per_hit_past: int = MISSES_PER_HIT_PAST,
) -> float | None:
    """The depth that best splits hits (at or above it) from misses (below), as the middle of
    the gap between the deepest hit and the shallowest miss on either side of it (with misses
    only, LEAST_KEPT of the shallowest: one step at a time); None while fewer than
    MISSES_TO_BOUND misses lie past it or they do not outnumber the hits there
    MISSES_PER_HIT_PAST times (a verdict may be wrong). Where two splits err as often, the
    deeper one: a cap too small wastes cache, but shrinking on noise empties it. `points`:
    (depth, hit), in any one unit. (`misses_to_bound` and `misses_per_hit_past`: those two
    numbers, for a rougher bound that takes less evidence.)"""
    ordered = sorted(points)
    errors = sum(1 for _, hit in ordered if hit)
    best, split = errors, 0
    for n, (_, hit) in enumerate(ordered, 1):
        errors += -1 if hit else 1
        if errors <= best:
            best, split = errors, n
    past = ordered[split:]
    misses = sum(1 for _, hit in past if not hit)
    if misses < misses_to_bound or misses < misses_per_hit_past * (len(past) - misses):
        return None
    if not split:
        # Misses only: the cache is smaller than the shallowest, by how much nothing says.
        return past[0][0] * LEAST_KEPT
    return (ordered[split - 1][0] + past[0][0]) / 2
