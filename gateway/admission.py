"""What a request must pass before it is routed: its key may use the pool, its limits and
budgets have room (gateway/limits.py), and a saturated pool has a place for it in the fair
queue (gateway/fairqueue.py), where higher-priority keys go first and tenants take turns."""

from __future__ import annotations

import math

from gateway.accounting import RequestAccount
from gateway.bodies import token_estimate
from gateway.errors import GatewayError, ModelNotFoundError
from gateway.fairqueue import FairGate, Shed
from gateway.keys import Principal
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.parsing import ParsedRequest
from gateway.routing import Route

# Requests one pool's queue holds at most, and how long one waits there.
MAX_QUEUED = 1000
MAX_QUEUE_WAIT_S = 30.0


class OverloadedError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "overloaded"


def not_found(model: str) -> ModelNotFoundError:
    """What a key hears of a pool it may not use: the same as of one that does not exist."""
    return ModelNotFoundError(
        f"The model {model!r} does not exist here; GET /v1/models lists the models.",
        param="model",
    )


class Admitter:
    def __init__(self, limiter: Limiter, metrics: GatewayMetrics) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._gates: dict[str, FairGate] = {}

    def waiting(self) -> int:
        return sum(g.waiting for g in self._gates.values())

    async def admit(
        self,
        principal: Principal | None,
        route: Route,
        req: ParsedRequest,
        account: RequestAccount,
    ) -> tuple[tuple[bytes, bytes], ...]:
        """Takes the request into the pool's limits and queue, or raises what the client hears
        (429 for limits and budgets, 503 when shed). Returns the x-ratelimit-* headers of the
        key's own limits, for the answer."""
        admission = None
        if principal is not None or route.rpm or route.tpm:
            estimate = token_estimate(req)
            admission = self._limiter.admit(principal, route.model, route.rpm, route.tpm, estimate)
        gate = self._gate(route)
        account.hold(admission, None)
        said = admission.headers if admission is not None else ()
        if gate is None:
            return said
        # Turns are per tenant; a key without one takes turns as itself.
        tenant = (principal.tenant or principal.key_id) if principal is not None else ""
        priority = principal.priority if principal is not None else 0
        try:
            waited = await gate.acquire(tenant, priority)
        except Shed as shed:
            self._metrics.queued.labels(route.model, "shed").inc()
            raise OverloadedError(
                f"Model {route.model!r} is saturated and this request was not admitted "
                f"({shed.reason}); retry in {math.ceil(shed.retry_after_s)} s.",
                headers={"Retry-After": str(math.ceil(shed.retry_after_s))},
            ) from None
        if waited:
            self._metrics.queued.labels(route.model, "admitted").inc()
        account.hold(admission, gate, tenant)
        return said

    def _gate(self, route: Route) -> FairGate | None:
        """The pool's gate at its limit now: queue_per_member per healthy member, this
        gateway's share of it; None when the pool does not queue."""
        per_member = route.queue_per_member
        if per_member <= 0 or route.fallbacks:
            # Pools with fallbacks spill instead of queueing (gateway/fallbacks.py).
            return None
        members = len(route.candidates)
        limit = max(1, math.ceil(per_member * members / self._limiter.gateways)) if members else 0
        gate = self._gates.get(route.model)
        if gate is None:
            gate = self._gates[route.model] = FairGate(limit, MAX_QUEUED, MAX_QUEUE_WAIT_S)
        elif gate.limit != limit and limit > 0:
            gate.set_limit(limit)
        return gate if limit > 0 else None
