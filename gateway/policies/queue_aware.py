"""queue_aware: waiting, running and KV cache use from agent reports, plus this gateway's picks."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext, Policy


class QueueAware(Policy, name="queue_aware"):
    """Lowest weighted cost of queue, running batch and KV cache use (llm-d's scorers, inverted).

    cost = queue_weight x queue / max queue + kv_weight x kv_usage
           + running_weight x running / max running,
    the maxima over the candidates. The engines' figures are as old as their last report, while
    snapshots come on every load change in the pool, so a member's figures are corrected by this
    gateway's own in-flight change since they last changed: requests sent since then join the
    queue, requests finished since then leave the queue first, then the running batch. A
    member that reports no KV use counts as 0 there. Ties go in turn."""

    def configure(self, params: ParamReader) -> None:
        self.queue_weight = params.number("queue_weight", 2.0, min=0.0)
        self.kv_weight = params.number("kv_weight", 2.0, min=0.0)
        self.running_weight = params.number("running_weight", 1.0, min=0.0)
        # Per member: (waiting, running, kv_usage) as last seen, and this gateway's own in flight
        # when they were first seen (taken at the next pick: a snapshot carries no own counts).
        self._figures: dict[str, tuple[float, float, float]] = {}
        self._base: dict[str, int] = {}

    def on_members(self, members: Sequence[Member]) -> None:
        keep = {m.id for m in members}
        self._figures = {k: v for k, v in self._figures.items() if k in keep}
        self._base = {k: v for k, v in self._base.items() if k in keep}

    def on_snapshot(self, members: Sequence[Member]) -> None:
        # Only figures that changed are fresh: an unchanged member keeps its baseline, or every
        # snapshot caused by another member's report would forget what this gateway sent here.
        for m in members:
            figures = (m.waiting, m.running, m.kv_usage)
            if self._figures.get(m.id) != figures:
                self._figures[m.id] = figures
                self._base.pop(m.id, None)

    def _load(self, m: Member, own: int) -> tuple[float, float]:
        """(queue, running) of m, corrected by own in-flight change since its figures came."""
        base = self._base.get(m.id)
        if base is None:
            self._base[m.id] = base = own
        queue = m.waiting + (own - base)
        running = m.running
        if queue < 0:
            running = max(0.0, running + queue)
            queue = 0.0
        return queue, running

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        own = ctx.in_flight
        loads = [self._load(m, own.get(m.id, 0)) for m in candidates]
        max_queue = 1.0
        max_running = 1.0
        for queue, running in loads:
            if queue > max_queue:
                max_queue = queue
            if running > max_running:
                max_running = running
        qw = self.queue_weight / max_queue
        rw = self.running_weight / max_running
        kw = self.kv_weight
        best_cost = float("inf")
        tied: list[Member] = []
        for m, (queue, running) in zip(candidates, loads, strict=True):
            kv = m.kv_usage if m.kv_usage > 0 else 0.0
            cost = qw * queue + kw * kv + rw * running
            if cost < best_cost - 1e-9:
                best_cost, tied = cost, [m]
            elif cost <= best_cost + 1e-9:
                tied.append(m)
        return self.in_turn(tied)
