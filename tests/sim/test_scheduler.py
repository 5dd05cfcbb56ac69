"""The step loop: prefix hits lower TTFT, batch size and KV fill raise latency, KV full queues."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llmpool.errors import InvalidArgumentError
from llmpool.sim.scheduler import SeqState

SYSTEM = [f"s{i}" for i in range(256)]  # a long shared system prompt
Make = Callable[..., Any]


def words(tag: str, n: int) -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def test_shared_prefix_request_has_lower_ttft_than_a_cold_one(driver: Make) -> None:
    d = driver(kv_blocks=4096, block_size=16)
    cold = d.add([*SYSTEM, "q1"], max_tokens=4)
    d.run_until_idle()
    warm = d.add([*SYSTEM, "q2"], max_tokens=4)
    d.run_until_idle()
    assert cold.cached_tokens == 0
    assert warm.cached_tokens == 256
    # The engine's own accounting: only the one uncached token is prefilled.
    assert warm.ttft == pytest.approx(d.s.costs.prefill_ms(1) / 1000)
    assert cold.ttft == pytest.approx(d.s.costs.prefill_ms(257) / 1000)
    assert warm.ttft < cold.ttft


def test_unrelated_prompt_gets_no_hits(driver: Make) -> None:
    d = driver(block_size=16)
    d.add(SYSTEM, max_tokens=1)
    d.run_until_idle()
    other = d.add(words("o", 256), max_tokens=1)
    d.run_until_idle()
    assert other.cached_tokens == 0


def _mean_latency(driver: Make, batch: int) -> float:
    d = driver(kv_blocks=256, block_size=4, max_num_seqs=64)
    seqs = [d.add(words(f"p{n}-", 40), max_tokens=16) for n in range(batch)]
    d.run_until_idle()
    return float(sum(q.e2e for q in seqs) / len(seqs))


def test_latency_grows_with_batch_size(driver: Make) -> None:
    one, eight, many = (_mean_latency(driver, n) for n in (1, 8, 32))
    assert one < eight < many


def test_every_running_sequence_emits_one_token_per_step(driver: Make) -> None:
    d = driver()
    a = d.add(["a"] * 8, max_tokens=3)
    b = d.add(["b"] * 8, max_tokens=2)
    first = d.step()
    assert {(e.seq.seq_id, e.index) for e in first} == {(a.seq_id, 0), (b.seq_id, 0)}
    second = d.step()
    assert [e.finished for e in second if e.seq is b] == [True]
    assert b.state is SeqState.FINISHED and a.state is SeqState.RUNNING
    third = d.step()
    assert [(e.seq, e.index, e.finished) for e in third] == [(a, 2, True)]
    assert not d.s.has_work() and d.s.kv.used_blocks == 0


def test_first_step_is_prefill_only_later_steps_decode(driver: Make) -> None:
    d = driver()
    d.add(["a"] * 8, max_tokens=3)
    first = d.s.begin_step()
    assert first is not None
    assert first.duration_ms == pytest.approx(d.s.costs.prefill_ms(8))
    d.s.finish_step()
    second = d.s.begin_step()
    assert second is not None
    assert second.duration_ms == pytest.approx(d.s.costs.decode_ms(second.kv_fill))


def test_batch_limit_queues_the_rest(driver: Make) -> None:
    d = driver(max_num_seqs=2)
    seqs = [d.add([f"x{n}"] * 4, max_tokens=2) for n in range(3)]
    plan = d.s.begin_step()
    assert plan is not None and len(plan.batch) == 2
    assert len(d.s.waiting) == 1 and seqs[2].state is SeqState.WAITING


def test_kv_full_makes_requests_wait_until_blocks_free(driver: Make) -> None:
    d = driver(kv_blocks=10, block_size=4, max_num_seqs=8)
    # Each needs (12 prompt + 8 output) / 4 = 5 blocks: two fit, the third waits.
    seqs = [d.add(words(f"k{n}-", 12), max_tokens=8) for n in range(3)]
    plan = d.s.begin_step()
    assert plan is not None and len(plan.admitted) == 2
    assert d.s.kv.usage == pytest.approx(1.0)
    assert [q.state for q in seqs] == [SeqState.RUNNING, SeqState.RUNNING, SeqState.WAITING]
    d.s.finish_step()
    d.run_until_idle()
    assert seqs[2].state is SeqState.FINISHED
    assert seqs[2].admitted_at >= seqs[0].finished_at  # it waited for blocks to free


def test_decode_is_slower_when_kv_is_fuller(driver: Make) -> None:
    d = driver(kv_blocks=100, block_size=4, max_num_seqs=64)
    d.add(["a"] * 4, max_tokens=4)
    d.step()
    light = d.s.begin_step()
    d.s.finish_step()
    d.add(words("b", 200), max_tokens=4)
    d.step()
    heavy = d.s.begin_step()
    assert light is not None and heavy is not None and heavy.uncached_tokens == 0
    assert heavy.kv_fill > light.kv_fill
    assert heavy.duration_ms > light.duration_ms


def test_cancel_frees_blocks_at_once_and_drops_waiting(driver: Make) -> None:
    d = driver(kv_blocks=10, block_size=4)
    running = d.add(words("r", 12), max_tokens=8)
    queued = d.add(words("w", 36), max_tokens=4)
    d.s.begin_step()
    assert d.s.kv.used_blocks == 5 and queued.state is SeqState.WAITING
    d.s.cancel(running)  # mid-step: the client went away
    assert d.s.kv.used_blocks == 0 and running.state is SeqState.CANCELLED
    assert d.s.finish_step() == []  # the cancelled sequence emits nothing
    d.s.cancel(queued)
    assert not d.s.has_work()


def test_request_larger_than_the_whole_kv_is_rejected(driver: Make) -> None:
    d = driver(kv_blocks=4, block_size=4)
    with pytest.raises(InvalidArgumentError, match="KV cache"):
        d.add(["t"] * 15, max_tokens=2)
    d.add(["t"] * 14, max_tokens=2)  # exactly 16 tokens fits
