"""Which pools a request may go to, in order, when its own cannot serve it (pure)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.routing import Route

POOL_HEADER = "x-llmpool-pool"
POOL_HEADER_RAW = POOL_HEADER.encode()


def chain(route: Route, get: Callable[[str], Route | None]) -> list[Route]:
    """route, then its fallbacks that this gateway knows, in order (theirs not followed)."""
    found = [route]
    for name in route.fallbacks:
        target = get(name)
        if target is not None and target is not route:
            found.append(target)
    return found


def saturated(route: Route) -> bool:
    """Requests wait in the engines at or above the pool's bound per healthy member (as the
    last snapshot said); never for a pool without a bound."""
    bound = route.spill_waiting
    members = route.candidates
    if bound <= 0 or not members:
        return False
    return sum(m.waiting for m in members) / len(members) >= bound
