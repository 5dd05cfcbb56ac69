"""The step cost model of a continuous-batching engine (coefficients from the Dynamo mocker)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    """Milliseconds of one engine step at speedup 1; defaults: the Dynamo mocker's fits."""

    prefill_quadratic_ms: float = 4.21e-7
    prefill_linear_ms: float = 1.518e-2
    prefill_const_ms: float = 16.5
    decode_quadratic_ms: float = -25.74
    decode_linear_ms: float = 54.01
    decode_const_ms: float = 5.74
    decode_min_ms: float = 1.0

    def prefill_ms(self, uncached_tokens: int) -> float:
        """Time to prefill T uncached prompt tokens of one step; 0 when none."""
        t = uncached_tokens
        if t <= 0:
            return 0.0
        return (
            self.prefill_quadratic_ms * t * t + self.prefill_linear_ms * t + self.prefill_const_ms
        )

    def decode_ms(self, kv_fill: float) -> float:
        """Time of one decode step of the running batch at KV fill ratio u in [0, 1]."""
        u = min(1.0, max(0.0, kv_fill))
        curve = self.decode_quadratic_ms * u * u + self.decode_linear_ms * u + self.decode_const_ms
        return max(self.decode_min_ms, curve)

    def step_ms(self, uncached_tokens: int, kv_fill: float, decoding: bool) -> float:
        """One step: prefill of this step's admissions plus one decode pass if any were running."""
        decode = self.decode_ms(kv_fill) if decoding else 0.0
        return self.prefill_ms(uncached_tokens) + decode
