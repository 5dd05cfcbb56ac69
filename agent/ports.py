"""Picks free ports for engines from the agent's configured range."""

from __future__ import annotations

import random
import socket

from llmpool.errors import UnavailableError


def parse_port_range(text: str) -> tuple[int, int]:
    """'20000-29999' -> (20000, 29999); ValueError with the reason otherwise."""
    low_text, sep, high_text = text.strip().partition("-")
    try:
        low, high = int(low_text), int(high_text if sep else low_text)
    except ValueError:
        raise ValueError(f"port range {text!r} is not LOW-HIGH, e.g. 20000-29999") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"port range {text!r} must satisfy 1 <= LOW <= HIGH <= 65535")
    return low, high


def port_is_free(host: str, port: int) -> bool:
    """True when a listener could bind host:port now (bind and release at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out ports in [low, high] that bind on host and that no replica of ours holds."""

    def __init__(self, host: str, low: int, high: int, rng: random.Random | None = None) -> None:
        self._host = host
        self._low = low
        self._high = high
        self._rng = rng or random.Random()
        self._held: set[int] = set()

    def acquire(self) -> int:
        size = self._high - self._low + 1
        # Random start so that restarts do not all race for the same low ports.
        start = self._rng.randrange(size)
        for offset in range(size):
            port = self._low + (start + offset) % size
            if port not in self._held and port_is_free(self._host, port):
                self._held.add(port)
                return port
        raise UnavailableError(
            f"no free port in {self._low}-{self._high} on {self._host}: widen --port-range"
        )

    def release(self, port: int) -> None:
        self._held.discard(port)

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)
