"""Retry-After parsing and cooldown bookkeeping, on a fake clock."""

from __future__ import annotations

import datetime
import email.utils
from typing import Any

import pytest

from gateway.cooldowns import MAX_COOLDOWN_S, Cooldowns, reset_after_s, retry_after_s
from gateway.members import idle_member
from llmpool.clock import FakeClock


def test_retry_after_in_seconds_or_as_a_date_capped_and_garbage_ignored() -> None:
    now = 1_700_000_000.0
    assert retry_after_s("5", now) == 5.0
    assert retry_after_s(" 12 ", now) == 12.0
    assert retry_after_s(email.utils.formatdate(now + 42, usegmt=True), now) == 42.0
    assert retry_after_s("86400", now) == MAX_COOLDOWN_S
    for bad in (None, "", "0", "-3", "soon", "1e9", email.utils.formatdate(now - 5), "9" * 100):
        assert retry_after_s(bad, now) is None, bad


def test_cooled_members_are_left_out_until_their_time() -> None:
    clock = FakeClock()
    a, b = idle_member("a"), idle_member("b")
    cooldowns = Cooldowns(clock)
    both = (a, b)
    assert cooldowns.available(both) is both  # nothing cooling: the same tuple, no copy
    cooldowns.cool("a", 10)
    assert cooldowns.available(both) == (b,)
    cooldowns.cool("b", 3)
    assert cooldowns.available(both) == () and cooldowns.wait_s(both) == 3
    clock.advance(3)
    assert cooldowns.available(both) == (b,) and cooldowns.cooling() == 1
    clock.advance(7)
    assert cooldowns.available(both) == both and cooldowns.cooling() == 0


def test_rate_limit_reset_headers_when_a_429_has_no_retry_after() -> None:
    def headers(values: dict[str, str]) -> Any:
        return values.get

    now = 1_800_000_000.0
    # OpenAI: the exhausted limit's reset counts, not the sooner one of a limit with room.
    openai = {
        "x-ratelimit-remaining-requests": "12", "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s",
    }  # fmt: skip
    assert reset_after_s(headers(openai), now) == 300.0  # 6 min, capped at MAX_COOLDOWN_S
    assert reset_after_s(headers({"x-ratelimit-reset-requests": "20ms"}), now) == 0.02
    assert reset_after_s(headers({"x-ratelimit-reset-tokens": "1.5s"}), now) == 1.5
    # Anthropic: an RFC 3339 time.
    anthropic = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:02Z",
    }
    then = datetime.datetime(2027, 1, 15, 8, 0, 0, tzinfo=datetime.UTC).timestamp()
    assert reset_after_s(headers(anthropic), then) == pytest.approx(2.0)
    assert reset_after_s(headers({"x-ratelimit-reset-requests": "soon"}), now) is None
    assert reset_after_s(headers({}), now) is None
