"""Routing bench client side: SSE content parsing and wall-to-simulated time conversion."""

from __future__ import annotations

import math

import pytest

from bench.routing.client import Outcome, SseText
from bench.routing.drive import collect
from bench.routing.workloads import BenchRequest


def test_sse_text_collects_content_across_split_reads() -> None:
    sse = SseText()
    role = b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
    tok = b'data: {"choices":[{"delta":{"content":" cache"}}]}\n\n'
    assert sse.feed(role + tok[:20]) == []
    assert sse.feed(tok[20:] + b"data: [DONE]\n\n") == [" cache"]
    assert sse.done


def test_collect_converts_to_simulated_seconds_and_counts_outcomes() -> None:
    reqs = [
        BenchRequest(0.0, "g0", (("user", "a"),), 2, " x y"),
        BenchRequest(2.0, "g1", (("user", "b"),), 2, " x y"),
        BenchRequest(4.0, "g1", (("user", "c"),), 2, " x y"),
    ]
    start, speedup = 100.0, 4.0
    good = Outcome(200, 100.1, 100.3, 2, " x y", True)  # sent at 100.0
    wrong = Outcome(200, 100.6, 100.7, 2, " x z", True)  # sent at 100.5
    late = Outcome(200, None, None, 0, "", False, "timeout")
    got = collect(reqs, [good, wrong, late], start, speedup)
    assert (got.ok, got.errors, got.unfinished, got.wrong_replies) == (2, 0, 1, 1)
    assert got.ttfts_s[:2] == pytest.approx([0.4, 0.4]) and math.isinf(got.ttfts_s[2])
    assert got.itls_s == pytest.approx([0.8, 0.4])
    assert got.tokens == 4 and got.span_s == pytest.approx(0.7 * 4)
