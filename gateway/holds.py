"""Requests held for a pool with no member yet (scaled to zero): they wait, bounded in number
and time, for a snapshot that brings one, and their count asks the autoscaler for a replica."""

from __future__ import annotations

import asyncio
import math

from gateway.errors import ModelNotFoundError, NoHealthyMemberError
from gateway.metrics import GatewayMetrics
from gateway.routing import Route, RoutingTable


class Holds:
    def __init__(self, table: RoutingTable, metrics: GatewayMetrics, max_held: int = 1000) -> None:
        self._table = table
        self._metrics = metrics
        self._max_held = max_held
        self._held: dict[str, int] = {}
        self._total = 0

    def counts(self) -> dict[str, int]:
        """Requests held now, per model (for usage reports)."""
        return dict(self._held)

    def total(self) -> int:
        return self._total

    async def wait(self, route: Route) -> Route:
        """route as soon as a snapshot gives it a member to pick; NoHealthyMemberError with
        Retry-After when route.hold_s passes first or too many requests are held already."""
        model = route.model
        if self._total >= self._max_held:
            self._metrics.held_requests.labels(model, "full").inc()
            raise NoHealthyMemberError(
                f"Model {model!r} has no replica running and {self._total} requests already "
                "wait for one on this gateway; retry shortly.",
                headers={"Retry-After": str(max(1, math.ceil(route.hold_s / 4)))},
            )
        self._held[model] = self._held.get(model, 0) + 1
        self._total += 1
        try:
            async with asyncio.timeout(route.hold_s):
                while True:
                    await self._table.next_change()
                    current = self._table.get(model)
                    if current is None:
                        raise ModelNotFoundError(
                            f"The model {model!r} was removed while this request waited for it.",
                            param="model",
                        )
                    if current.candidates:
                        self._metrics.held_requests.labels(model, "served").inc()
                        return current
        except TimeoutError:
            self._metrics.held_requests.labels(model, "timeout").inc()
            raise NoHealthyMemberError(
                f"No replica of model {model!r} became ready within {route.hold_s:g} s while "
                "this request waited; retry shortly.",
                headers={"Retry-After": "5"},
            ) from None
        finally:
            self._total -= 1
            left = self._held[model] - 1
            if left:
                self._held[model] = left
            else:
                del self._held[model]
