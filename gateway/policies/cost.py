"""cost: the cheapest member whose latency is within a bound, else the fastest."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext
from gateway.policies.latency_stats import LatencyPolicy


class Cost(LatencyPolicy, name="cost"):
    """Cheapest by input_weight x input price + output_weight x output price (per million
    tokens, from the snapshot) among members whose latency is at most max_latency_ms; if none
    qualifies, the fastest. Latency: EWMA of observed time to first byte, else the snapshot's
    latency_ms; a member with neither qualifies (it is tried). Ties: least loaded, in turn."""

    def configure(self, params: ParamReader) -> None:
        self.max_latency_ms = params.number("max_latency_ms", 10000.0, min=0.0)
        self.input_weight = params.number("input_weight", 1.0, min=0.0)
        self.output_weight = params.number("output_weight", 1.0, min=0.0)
        self.read_latency_params(params, half_life_s=60.0)

    def latency_ms(self, member: Member, now: float | None = None) -> float:
        seen = self.stats.ttft(member.id, now)
        return seen * 1000.0 if seen is not None else member.latency_ms

    def price(self, member: Member) -> float:
        return (
            self.input_weight * member.input_cost_per_mtok
            + self.output_weight * member.output_cost_per_mtok
        )

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        now = self.clock.monotonic()
        latency = [self.latency_ms(m, now) for m in candidates]
        ok = [i for i, ms in enumerate(latency) if ms <= self.max_latency_ms]
        if ok:
            prices = {i: self.price(candidates[i]) for i in ok}
            cheapest = min(prices.values())
            tied = [candidates[i] for i in ok if prices[i] <= cheapest + 1e-12]
        else:
            fastest = min(latency)
            tied = [candidates[i] for i, ms in enumerate(latency) if ms <= fastest]
        return self.least_loaded(tied, ctx)
