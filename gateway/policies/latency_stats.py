"""Per-member EWMAs of TTFT and time per output token, decaying toward the pool's when stale."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.members import Member
from gateway.policies.base import ParamReader, Policy
from llmpool.clock import Clock


@dataclass(slots=True)
class _Ewma:
    ttft: float
    # Negative until a time per output token has been seen.
    tpot: float
    at: float


class LatencyStats:
    """EWMAs per member plus one over every observation (the neutral value stale ones decay to).

    A member not observed for a while (because it looked slow and was not picked) drifts back
    toward the pool's neutral value with the given half-life, so it gets tried again."""

    def __init__(
        self, clock: Clock, *, alpha: float, half_life_s: float, error_penalty_s: float
    ) -> None:
        self._clock = clock
        self._alpha = alpha
        self._half_life_s = half_life_s
        self._error_penalty_s = error_penalty_s
        self._members: dict[str, _Ewma] = {}
        self._neutral = _Ewma(ttft=-1.0, tpot=-1.0, at=0.0)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._members

    def observe(self, member_id: str, ttft_s: float, tpot_s: float, ok: bool) -> None:
        if not ok:
            # A failure is often fast (connection refused): count it as slow, not fast.
            ttft_s = max(ttft_s, self._error_penalty_s)
        now = self._clock.monotonic()
        stat = self._members.get(member_id)
        if stat is None:
            self._members[member_id] = _Ewma(ttft=ttft_s, tpot=tpot_s if tpot_s > 0 else -1, at=now)
        else:
            # Start from the decayed value, so an old sample does not weigh as if it were fresh.
            stat.ttft = self._update(
                self._decayed(stat.ttft, self._neutral.ttft, stat.at, now), ttft_s
            )
            if tpot_s > 0:
                stat.tpot = self._update(
                    self._decayed(stat.tpot, self._neutral.tpot, stat.at, now), tpot_s
                )
            stat.at = now
        neutral = self._neutral
        neutral.ttft = self._update(neutral.ttft, ttft_s)
        if tpot_s > 0:
            neutral.tpot = self._update(neutral.tpot, tpot_s)

    def _update(self, old: float, sample: float) -> float:
        if old < 0:
            return sample
        return old + self._alpha * (sample - old)

    def _decayed(self, value: float, neutral: float, at: float, now: float) -> float:
        if value < 0 or neutral < 0 or now <= at:
            return value
        weight: float = 0.5 ** ((now - at) / self._half_life_s)
        return neutral + (value - neutral) * weight

    def ttft(self, member_id: str, now: float | None = None) -> float | None:
        """The member's TTFT EWMA (decayed toward neutral); None if never observed."""
        stat = self._members.get(member_id)
        if stat is None:
            return None
        at = self._clock.monotonic() if now is None else now
        return self._decayed(stat.ttft, self._neutral.ttft, stat.at, at)

    def tpot(self, member_id: str) -> float:
        """The member's time per output token EWMA; the neutral one, or 0, if unknown."""
        stat = self._members.get(member_id)
        neutral = self._neutral.tpot
        if stat is None or stat.tpot < 0:
            return max(neutral, 0.0)
        return self._decayed(stat.tpot, neutral, stat.at, self._clock.monotonic())

    def keep_only(self, member_ids: Iterable[str]) -> None:
        keep = set(member_ids)
        self._members = {k: v for k, v in self._members.items() if k in keep}


class LatencyPolicy(Policy):
    """Base of policies that learn each member's latency from observe() (not registered)."""

    stats: LatencyStats

    def read_latency_params(self, params: ParamReader, half_life_s: float) -> None:
        """Builds self.stats from params alpha, half_life_s and error_penalty_s."""
        self.stats = LatencyStats(
            self.clock,
            alpha=params.number("alpha", 0.3, min=0.01, max=1.0),
            half_life_s=params.number("half_life_s", half_life_s, min=0.001),
            error_penalty_s=params.number("error_penalty_s", 5.0, min=0.0),
        )

    def observe(
        self, member_id: str, ttft_s: float, tpot_s: float, prompt_tokens: int, ok: bool
    ) -> None:
        self.stats.observe(member_id, ttft_s, tpot_s, ok)

    def on_members(self, members: Sequence[Member]) -> None:
        self.stats.keep_only(m.id for m in members)
