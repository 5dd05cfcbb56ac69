"""A time-to-first-token forecast per member, for spilling on a pool's SLO: what the member's
prefill speed (prompt tokens per second) and its queue say a new request would wait.

The speed is learned from this gateway's streams: prompt tokens over the time from the try's
start to the first byte. Under load that time includes waiting in the engine's queue, so the
estimate follows a faster observation at once and a slower one only a little at a time: it
tracks the member's unloaded speed, and the queue (the waiting requests the last snapshot
reported, times the typical prompt) is added on top."""

from __future__ import annotations

from gateway.members import Member

# Characters per token for prompts no tokenizer has counted (the gateway never tokenizes).
CHARS_PER_TOKEN = 4
# How far a slower observation moves the speed estimate; a faster one replaces it.
_DOWN = 0.05
# Typical prompt size: an exponential average of what was seen.
_PROMPT_ALPHA = 0.2
# Members tracked at most (they come and go with snapshots).
_MAX_MEMBERS = 10_000


class TtftForecast:
    def __init__(self) -> None:
        # member id -> (prompt tokens per second, typical prompt tokens)
        self._seen: dict[str, tuple[float, float]] = {}

    def observe(self, member_id: str, prompt_tokens: int, ttft_s: float) -> None:
        """A stream of prompt_tokens whose first byte came ttft_s after its try began."""
        if prompt_tokens <= 0 or not ttft_s > 0:
            return
        speed = prompt_tokens / ttft_s
        known = self._seen.get(member_id)
        if known is None:
            if len(self._seen) >= _MAX_MEMBERS:
                self._seen.clear()
            self._seen[member_id] = (speed, float(prompt_tokens))
            return
        rate, typical = known
        rate = speed if speed > rate else rate + _DOWN * (speed - rate)
        typical += _PROMPT_ALPHA * (prompt_tokens - typical)
        self._seen[member_id] = (rate, typical)

    def predict_s(self, member: Member, prompt_tokens: int) -> float | None:
        """Seconds until the first token of a new request of prompt_tokens on member, or None
        before anything was learned about it."""
        known = self._seen.get(member.id)
        if known is None:
            return None
        rate, typical = known
        ahead = max(member.waiting, 0.0) * typical
        return (ahead + prompt_tokens) / rate

    def over_slo(self, members: tuple[Member, ...], prompt_tokens: int, slo_ms: float) -> bool:
        """True when every member with a forecast would miss slo_ms, and at least one has one
        (a pool nothing is known about yet is not judged)."""
        limit = slo_ms / 1000.0
        judged = False
        for member in members:
            forecast = self.predict_s(member, prompt_tokens)
            if forecast is None:
                continue
            if forecast <= limit:
                return False
            judged = True
        return judged
