"""Where a request may go when its pool cannot serve it (pure): the pool's fallbacks in
order, and its members in the gateway's own zone before the others."""

from __future__ import annotations

from collections.abc import Callable

from gateway.members import Member
from gateway.routing import Route
from gateway.ttft import CHARS_PER_TOKEN, TtftForecast

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


def over_slo(route: Route, forecast: TtftForecast, prompt_chars: int) -> bool:
    """Every member of the pool is forecast to miss its TTFT SLO (a pool without one: never)."""
    if route.ttft_slo_ms <= 0 or not route.candidates:
        return False
    tokens = max(1, prompt_chars // CHARS_PER_TOKEN)
    return forecast.over_slo(route.candidates, tokens, route.ttft_slo_ms)


def saturated(route: Route, members: tuple[Member, ...] | None = None) -> bool:
    """Requests wait in the engines at or above the pool's bound per member (route's healthy
    members, or those given), as the last snapshot said; never for a pool without a bound."""
    bound = route.spill_waiting
    if members is None:
        members = route.candidates
    if bound <= 0 or not members:
        return False
    return sum(m.waiting for m in members) / len(members) >= bound


def zone_first(route: Route, available: tuple[Member, ...]) -> tuple[Member, ...]:
    """The members to pick from: those of available in this gateway's zone when the pool
    prefers it and they are neither all unavailable nor saturated; otherwise all of them."""
    if not route.local:
        return available
    if len(available) == len(route.candidates):
        local = route.local
    else:
        ids = {m.id for m in available}
        local = tuple(m for m in route.local if m.id in ids)
    if not local or saturated(route, local):
        return available
    return local
