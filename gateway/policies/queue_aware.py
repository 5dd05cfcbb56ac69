"""queue_aware: waiting, running and KV cache use from agent reports, plus this gateway's picks."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext, Policy


class QueueAware(Policy, name="queue_aware"):
    """Lowest weighted cost of queue, running batch and KV cache use (llm-d's scorers, inverted).

    cost = queue_weight x queue / max queue + kv_weight x kv_usage
           + running_weight x running / max running,
    where queue is the member's waiting requests plus what this gateway sent it since the last
    snapshot (the engines have not reported those yet), and the maxima are over the candidates.
    A member that reports no KV use counts as 0 there. Ties go round robin."""

    def configure(self, params: ParamReader) -> None:
        self.queue_weight = params.number("queue_weight", 2.0, min=0.0)
        self.kv_weight = params.number("kv_weight", 2.0, min=0.0)
        self.running_weight = params.number("running_weight", 1.0, min=0.0)
        self._sent: dict[str, int] = {}
        self._next = 0

    def on_snapshot(self, members: Sequence[Member]) -> None:
        # The engines' fresh figures include what was sent before: start counting again.
        self._sent.clear()

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        sent = self._sent
        max_queue = 1.0
        max_running = 1.0
        for m in candidates:
            queue = m.waiting + sent.get(m.id, 0)
            if queue > max_queue:
                max_queue = queue
            if m.running > max_running:
                max_running = m.running
        qw = self.queue_weight / max_queue
        rw = self.running_weight / max_running
        kw = self.kv_weight
        best_cost = float("inf")
        tied: list[Member] = []
        for m in candidates:
            kv = m.kv_usage if m.kv_usage > 0 else 0.0
            cost = qw * (m.waiting + sent.get(m.id, 0)) + kw * kv + rw * m.running
            if cost < best_cost - 1e-9:
                best_cost, tied = cost, [m]
            elif cost <= best_cost + 1e-9:
                tied.append(m)
        choice = tied[self._next % len(tied)]
        self._next += 1
        sent[choice.id] = sent.get(choice.id, 0) + 1
        return choice
