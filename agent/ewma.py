"""Exponentially weighted moving average, for probe latency."""

from __future__ import annotations


class Ewma:
    """value is None until the first sample; then alpha * sample + (1 - alpha) * value."""

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self._alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> float:
        self.value = (
            sample if self.value is None else self._alpha * sample + (1 - self._alpha) * self.value
        )
        return self.value

    def reset(self) -> None:
        self.value = None
