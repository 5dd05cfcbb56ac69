"""Helpers for tests of prefix_aware's cache learning (tests/gateway/test_cache_estimate.py,
tests/gateway/test_rough_room.py): a sizer over a small index, prompts to fill it, a learned
speed, a policy."""

from __future__ import annotations

from gateway.policies import PolicyRegistry, PrefixAware
from gateway.policies.cache_estimate import FIRST_SAMPLES, CacheSizer
from gateway.policies.prefix_index import PrefixIndex
from gateway.policies.ticket import Ticket
from llmpool.clock import FakeClock


def sizer(member_blocks: int = 1000) -> CacheSizer:
    index = PrefixIndex(
        block_chars=128,
        max_blocks=100_000,
        max_prompt_blocks=1024,
        max_holders=8,
        member_blocks=member_blocks,
    )
    return CacheSizer(index, 4)


def fill(s: CacheSizer, member: str, units: int) -> str:
    """Makes the index hold up to `units` units on member, in 1 KB prompts (as many units as
    the layout's whole blocks in 1 KB make); returns the last prompt sent."""
    text = ""
    for n in range(units // s.index.block_count(b"x" * 1024)):
        text = (f"prompt {member} {n} " * 200)[:1024]
        s.index.insert(member, s.index.match(text))
    return text


def learn_speed(s: CacheSizer, unit_s: float = 0.001) -> None:
    """FIRST_SAMPLES expected misses of 100 units each, prefilled at unit_s a unit."""
    for _ in range(FIRST_SAMPLES):
        s.settle(Ticket("other", 0, 100, 0.0), 100 * unit_s, 0)
    assert s.unit_s == unit_s
    assert abs(s.token_s() - unit_s / 32) < 1e-12  # 128-byte units of 4-byte tokens


def policy() -> PrefixAware:
    built = PolicyRegistry(clock=FakeClock()).build("prefix_aware")
    assert isinstance(built, PrefixAware)
    return built
