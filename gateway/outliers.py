"""Passive health: members that keep failing are ejected from this gateway's picks for a while.

A member is ejected after `consecutive` failures in a row, or when at least half of its last
tries within a window failed (with enough tries to tell). The ejection lasts base_s, doubling
with each ejection in a row up to MAX_EJECTION_S. When it ends the member is half-open: one
request goes through as a probe (others keep away while it runs); a success brings it back, a
failure ejects it again for longer. What failed is the gateway's own view: an engine the agent
thinks healthy but that times out or answers 5xx here is out of this gateway's rotation within
`consecutive` tries, without waiting for the controller.

Members of one pool share its settings; ids are unique across pools (backend or replica ids)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.members import Member
from llmpool.clock import Clock

MAX_EJECTION_S = 300.0
# Error-ratio rule: at least this many tries within the window, and this share failed.
_RATIO_WINDOW_S = 10.0
_RATIO_MIN_TRIES = 20
_RATIO = 0.5
# Members tracked at most; those with nothing to remember go first.
_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class EjectionSettings:
    """A pool's outlier-ejection settings (Pool.eject_after_failures, Pool.eject_base_s)."""

    consecutive: int = 5
    base_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.consecutive > 0


DEFAULT_EJECTION = EjectionSettings()


class _Health:
    __slots__ = (
        "consecutive",
        "ejected_until",
        "ejections",
        "failures",
        "probing",
        "tries",
        "window_start",
    )

    def __init__(self, now: float) -> None:
        self.consecutive = 0
        # Ejections in a row (each doubles the next); back to 0 after a healthy spell.
        self.ejections = 0
        self.ejected_until = 0.0
        # Half-open: a probe request is out; nobody else is sent until it answers.
        self.probing = False
        self.tries = 0
        self.failures = 0
        self.window_start = now


@dataclass(frozen=True, slots=True)
class Ejected:
    member_id: str
    seconds_left: float
    ejections: int


class Outliers:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._health: dict[str, _Health] = {}
        # Members currently ejected or half-open: picks filter only while this is non-empty.
        self._out: set[str] = set()

    def available(self, members: tuple[Member, ...]) -> tuple[Member, ...]:
        """`members` without ejected ones and half-open ones whose probe is out (the same tuple
        when nothing is out: the hot path). Ejected members whose time is up become half-open
        and stay in. When every member is out, all of them are kept (panic: a member that may
        have healed beats refusing the request)."""
        out = self._out
        if not out:
            return members
        now = self._clock.monotonic()
        health = self._health
        kept = []
        for m in members:
            h = health.get(m.id) if m.id in out else None
            if h is None or (h.ejected_until <= now and not h.probing):
                kept.append(m)
        return tuple(kept) if kept else members

    def picked(self, member_id: str) -> bool:
        """Call when a request goes to the member: True when it is that member's probe."""
        if member_id not in self._out:
            return False
        h = self._health[member_id]
        if h.ejected_until <= self._clock.monotonic() and not h.probing:
            h.probing = True
            return True
        return False

    def released(self, member_id: str) -> None:
        """The member's try ended telling nothing about its health (the client left, or it
        asked to wait with Retry-After): a probe goes back, for the next request to make."""
        h = self._health.get(member_id)
        if h is not None:
            h.probing = False

    def success(self, member_id: str) -> None:
        h = self._health.get(member_id)
        if h is None:
            return
        h.consecutive = 0
        now = self._clock.monotonic()
        self._count(h, now, failed=False)
        if member_id in self._out and h.ejected_until <= now:
            # The probe (or a request that was out before the ejection) came back well.
            h.probing = False
            self._out.discard(member_id)
        elif h.ejections and now - h.ejected_until > MAX_EJECTION_S:
            h.ejections = 0

    def failure(self, member_id: str, settings: EjectionSettings) -> bool:
        """Counts a failed try; True when it ejected the member."""
        if not settings.enabled:
            return False
        now = self._clock.monotonic()
        h = self._health.get(member_id)
        if h is None:
            if len(self._health) >= _MAX_ENTRIES:
                self._forget_idle(now)
            h = self._health[member_id] = _Health(now)
        h.consecutive += 1
        self._count(h, now, failed=True)
        if member_id in self._out:
            if h.probing or h.ejected_until <= now:
                self._eject(member_id, h, now, settings)
                return True
            return False  # a request sent before the ejection: already out
        ratio_bad = h.tries >= _RATIO_MIN_TRIES and h.failures >= _RATIO * h.tries
        if h.consecutive >= settings.consecutive or ratio_bad:
            self._eject(member_id, h, now, settings)
            return True
        return False

    def ejected(self) -> Iterator[Ejected]:
        now = self._clock.monotonic()
        for member_id in sorted(self._out):
            h = self._health[member_id]
            yield Ejected(member_id, max(0.0, h.ejected_until - now), h.ejections)

    def is_out(self, member_id: str) -> bool:
        return member_id in self._out

    def _eject(self, member_id: str, h: _Health, now: float, settings: EjectionSettings) -> None:
        h.ejections += 1
        h.probing = False
        h.consecutive = 0
        h.tries = h.failures = 0
        h.window_start = now
        h.ejected_until = now + min(MAX_EJECTION_S, settings.base_s * 2 ** (h.ejections - 1))
        self._out.add(member_id)

    @staticmethod
    def _count(h: _Health, now: float, failed: bool) -> None:
        if now - h.window_start > _RATIO_WINDOW_S:
            h.tries = h.failures = 0
            h.window_start = now
        h.tries += 1
        if failed:
            h.failures += 1

    def _forget_idle(self, now: float) -> None:
        self._health = {
            k: h for k, h in self._health.items() if k in self._out or h.consecutive or h.ejections
        }
