"""Members that asked to be left alone: a 429 or 503 with Retry-After cools a member down on
this gateway for that long; picks leave it out meanwhile (the member said when to come back,
so there is nothing to probe). Other gateways learn it from the member themselves."""

from __future__ import annotations

import datetime
import email.utils
import math
from collections.abc import Callable

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


# Rate-limit reset headers, as (remaining, reset) pairs: OpenAI's (reset as a duration such as
# "1s", "6m0s", "20ms") and Anthropic's (reset as an RFC 3339 time).
_RESET_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
)
_DURATION_UNITS = (("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0))


def _duration_s(text: str) -> float | None:
    """'6m0s', '1.5s', '20ms' -> seconds; None when unreadable (bounded, linear)."""
    if not text or len(text) > 32:
        return None
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            number += c
            i += 1
            continue
        for unit, scale in _DURATION_UNITS:
            if text.startswith(unit, i) and number:
                try:
                    total += float(number) * scale
                except ValueError:
                    return None
                number, i = "", i + len(unit)
                break
        else:
            return None
    return None if number else total


def reset_after_s(header: Callable[[str], str | None], now_wall: float) -> float | None:
    """Seconds until a rate limit that a 429 without Retry-After names resets: the limit with
    nothing remaining (or, when none says so, the soonest reset); at most MAX_COOLDOWN_S."""
    exhausted: list[float] = []
    others: list[float] = []
    for remaining_name, reset_name in _RESET_HEADERS:
        value = header(reset_name)
        if not value:
            continue
        seconds = _duration_s(value.strip())
        if seconds is None:
            seconds = retry_after_s(value, now_wall)  # an HTTP date...
            if seconds is None:
                seconds = _rfc3339_s(value.strip(), now_wall)  # ...or an RFC 3339 time
        if seconds is None or not seconds > 0:
            continue
        (exhausted if header(remaining_name) == "0" else others).append(seconds)
    found = exhausted or others
    return min(min(found), MAX_COOLDOWN_S) if found else None


def _rfc3339_s(text: str, now_wall: float) -> float | None:
    if len(text) > 64:
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp() - now_wall


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
