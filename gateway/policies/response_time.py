"""response_time: EWMA of TTFT and time per output token, power of two choices."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.members import Member
from gateway.policies.base import ParamReader, PickContext
from gateway.policies.latency_stats import LatencyPolicy


class ResponseTime(LatencyPolicy, name="response_time"):
    """Samples two candidates and takes the one with the lower expected response time.

    Expected time = (TTFT EWMA + output_tokens x TPOT EWMA) x (1 + requests in flight), so a
    fast member that is already busy does not take everything. Members never observed are
    tried first (least in flight among them), and stale EWMAs decay toward the pool's."""

    def configure(self, params: ParamReader) -> None:
        self.read_latency_params(params, half_life_s=30.0)
        self.output_tokens = params.number("output_tokens", 100.0, min=0.0)

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        stats = self.stats
        n = len(candidates)
        unseen = [m for m in candidates if m.id not in stats]
        if unseen:
            return self.least_loaded(unseen, ctx)
        if n == 1:
            return candidates[0]
        i = self.rng.randrange(n)
        j = self.rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        load_a, load_b = ctx.loads((a, b))
        score_a = self._expected(a) * (1 + load_a)
        score_b = self._expected(b) * (1 + load_b)
        return a if score_a <= score_b else b

    def _expected(self, member: Member) -> float:
        ttft = self.stats.ttft(member.id) or 0.0
        return ttft + self.output_tokens * self.stats.tpot(member.id)
