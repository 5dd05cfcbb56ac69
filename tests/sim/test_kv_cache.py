"""Prefix cache: hits on leading blocks, pinning while in use, LRU eviction once released."""

from __future__ import annotations

import pytest

from llmpool.sim.kv_cache import KvCache
from llmpool.sim.tokens import ChatMessage, block_hashes, render_chat, tokenize


def hashes(text: str, block_size: int = 4) -> list[bytes]:
    return block_hashes(tokenize(text), block_size, "sim")


def test_chain_hashes_share_leading_blocks_only() -> None:
    a = hashes("aaaa bbbb cccc dddd eeee ffff gggg hhhh")
    b = hashes("aaaa bbbb cccc dddd XXXX ffff gggg hhhh")
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]
    # A different seed (model) never shares blocks.
    assert block_hashes(tokenize("aaaa bbbb cccc dddd"), 4, "other")[0] != a[0]


def test_shared_system_prompt_is_a_shared_prefix() -> None:
    system = ChatMessage("system", "You are a careful assistant. " * 20)
    one = tokenize(render_chat([system, ChatMessage("user", "first question")]))
    two = tokenize(render_chat([system, ChatMessage("user", "another one")]))
    h1, h2 = block_hashes(one, 16, "m"), block_hashes(two, 16, "m")
    shared = sum(1 for x, y in zip(h1, h2, strict=False) if x == y)
    assert shared >= 5


def test_hits_pinning_and_release() -> None:
    kv = KvCache(10)
    h = [b"a", b"b", b"c"]
    first = kv.allocate(h, private_blocks=2)
    assert first.hit_blocks == 0 and kv.used_blocks == 5 and kv.usage == pytest.approx(0.5)
    second = kv.allocate([*h[:2], b"z"], private_blocks=1)
    assert second.hit_blocks == 2
    assert kv.used_blocks == 5 + 2  # a and b are shared: one physical block each
    kv.release(first)
    assert kv.used_blocks == 4 and kv.contains(b"c")  # a, b still pinned by the second
    kv.release(second)
    assert kv.used_blocks == 0 and kv.cached_blocks == 4  # a, b, c, z stay cached
    assert kv.prefix_hits([b"a", b"b", b"c"]) == 3


def test_lru_eviction_spares_pinned_and_recently_used_blocks() -> None:
    kv = KvCache(4)
    old = kv.allocate([b"old1", b"old2"], 0)
    kv.release(old)
    recent = kv.allocate([b"new1"], 0)
    kv.release(recent)
    pinned = kv.allocate([b"pin"], 0)
    assert kv.free_blocks == 0
    # Two new blocks: the two least recently used cached blocks go, old1 first.
    kv.allocate([b"x", b"y"], 0)
    assert not kv.contains(b"old1") and not kv.contains(b"old2")
    assert kv.contains(b"new1") and kv.contains(b"pin")
    assert pinned.hashes == (b"pin",)


def test_a_short_cache_cuts_a_prompts_tail_and_keeps_its_head() -> None:
    """As vLLM frees a finished request's blocks (reversed): the head still hits after a new
    prompt takes part of the room, where evicting the head first would lose it all."""
    kv = KvCache(4)
    kv.release(kv.allocate([b"h1", b"h2", b"h3"], 0))
    kv.allocate([b"n1", b"n2"], 0)
    assert kv.prefix_hits([b"h1", b"h2", b"h3"]) == 2
    assert not kv.contains(b"h3")


def test_full_cache_refuses_and_pinned_blocks_are_never_evicted() -> None:
    kv = KvCache(3)
    a = kv.allocate([b"a"], 2)
    assert not kv.can_allocate([b"b"], 0)
    with pytest.raises(MemoryError):
        kv.allocate([b"b"], 0)
    # Reusing a block already held needs no free space.
    assert kv.can_allocate([b"a"], 0)
    kv.release(a)
    assert kv.can_allocate([b"b"], 2)


def test_reviving_a_cached_block_does_not_count_it_as_free_space() -> None:
    kv = KvCache(2)
    kv.release(kv.allocate([b"a", b"b"], 0))
    # Pinning a and b leaves no room for a third block.
    assert not kv.can_allocate([b"a", b"b"], 1)
    assert kv.can_allocate([b"a", b"b"], 0)


def test_reset_prefix_cache_drops_cached_blocks_but_keeps_pinned_ones() -> None:
    kv = KvCache(8)
    done = kv.allocate([b"a", b"b"], 0)
    kv.release(done)
    running = kv.allocate([b"a", b"c"], 1)  # revives a, pins it
    assert kv.cached_blocks == 1  # b
    assert kv.reset_prefix_cache() == 1
    assert not kv.contains(b"b") and kv.contains(b"a") and kv.contains(b"c")
    assert kv.prefix_hits([b"a", b"b"]) == 1
    assert kv.used_blocks == 3 and kv.free_blocks == 5
    kv.release(running)
    assert kv.reset_prefix_cache() == 2
    assert kv.free_blocks == 8 and kv.prefix_hits([b"a"]) == 0


def test_metrics_say_the_cache_size_as_vllm_does() -> None:
    """The agent reads the simulator's cache and batch from /metrics as from vLLM's."""
    from prometheus_client import generate_latest

    from llmpool.engine_capacity import capacity_from_metrics
    from llmpool.sim.engine import Engine
    from llmpool.sim.settings import SimSettings

    engine = Engine(SimSettings(kv_blocks=512, block_size=16, max_num_seqs=8))
    text = generate_latest(engine.metrics.registry).decode()
    capacity = capacity_from_metrics("sim", text)
    assert (capacity.cache_tokens, capacity.block_size, capacity.max_running) == (8192, 16, 8)


def test_an_engine_that_says_nothing_of_its_cache() -> None:
    """--cache-info false: no cache_config_info, so nobody reading /metrics learns the size."""
    from prometheus_client import generate_latest

    from llmpool.engine_capacity import capacity_from_metrics
    from llmpool.sim.engine import Engine
    from llmpool.sim.settings import SimSettings

    engine = Engine(SimSettings(kv_blocks=512, block_size=16, cache_info=False))
    text = generate_latest(engine.metrics.registry).decode()
    assert "vllm:num_requests_running" in text
    assert not capacity_from_metrics("openai", text).known
