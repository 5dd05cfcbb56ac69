"""Members that asked to be left alone: a 429 or 503 with Retry-After cools a member down on
this gateway for that long; picks leave it out meanwhile (the member said when to come back,
so there is nothing to probe). Other gateways learn it from the member themselves."""

from __future__ import annotations

import email.utils
import math

from gateway.members import Member
from llmpool.clock import Clock

# Longest cooldown honoured: a member's Retry-After cannot take it out for an hour.
MAX_COOLDOWN_S = 300.0
# Entries kept at most (members come and go with snapshots); expired ones go first.
_MAX_ENTRIES = 10_000


def retry_after_s(value: str | None, now_wall: float) -> float | None:
    """Seconds from a Retry-After value (delta-seconds or an HTTP date), at most
    MAX_COOLDOWN_S; None when absent, past or unreadable."""
    if not value or len(value) > 64:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now_wall
    if not seconds > 0:
        return None
    return min(seconds, MAX_COOLDOWN_S)


class Cooldowns:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def cool(self, member_id: str, seconds: float) -> None:
        now = self._clock.monotonic()
        if len(self._until) >= _MAX_ENTRIES:
            self._until = {k: t for k, t in self._until.items() if t > now}
            if len(self._until) >= _MAX_ENTRIES:
                return
        self._until[member_id] = max(self._until.get(member_id, 0.0), now + seconds)

    def available(self, members: tuple[Member, ...]) -> tuple[Member, ...]:
        """`members` without those cooling down (the same tuple when none is: the hot path)."""
        if not self._until:
            return members
        now = self._clock.monotonic()
        until = self._until
        kept = tuple(m for m in members if until.get(m.id, 0.0) <= now)
        if len(kept) == len(members) and all(t <= now for t in until.values()):
            until.clear()
        return kept

    def wait_s(self, members: tuple[Member, ...]) -> int:
        """Whole seconds until the first of `members` is available again (at least 1)."""
        now = self._clock.monotonic()
        soonest = min((self._until.get(m.id, now) for m in members), default=now)
        return max(1, math.ceil(soonest - now))

    def cooling_members(self) -> list[tuple[str, float]]:
        """(member id, seconds left) of members cooling down now."""
        now = self._clock.monotonic()
        return sorted((k, t - now) for k, t in self._until.items() if t > now)

    def cooling(self) -> int:
        now = self._clock.monotonic()
        return sum(1 for t in self._until.values() if t > now)
