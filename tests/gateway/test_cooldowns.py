"""Retry-After parsing and cooldown bookkeeping, on a fake clock."""

from __future__ import annotations

import email.utils

from gateway.cooldowns import MAX_COOLDOWN_S, Cooldowns, retry_after_s
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
