"""UsageTracker deltas and in-flight counts; token usage from JSON bodies and SSE tails."""

from __future__ import annotations

from gateway.tokens import StreamTail, TokenUsage, usage_from_json, usage_from_sse
from gateway.usage import UsageTracker


def test_in_flight_and_report_deltas() -> None:
    tracker = UsageTracker()
    tracker.started("a", "m")
    tracker.started("a", "m")
    tracker.started("b", "m")
    assert dict(tracker.in_flight) == {"a": 2, "b": 1}
    tracker.finished(
        "a", "m", ok=True, latency_s=0.2, ttft_s=0.05, prompt_tokens=3, completion_tokens=4
    )
    tracker.finished("b", "m", ok=False, latency_s=0.4)
    assert dict(tracker.in_flight) == {"a": 1}

    report = tracker.drain_report("gw")
    by_id = {m.member_id: m for m in report.members}
    assert report.gateway_id == "gw"
    a, b = by_id["a"], by_id["b"]
    assert (a.in_flight, a.requests, a.errors, a.prompt_tokens, a.completion_tokens) == (
        1,
        1,
        0,
        3,
        4,
    )
    assert abs(a.mean_latency_ms - 200) < 1e-6 and abs(a.mean_ttft_ms - 50) < 1e-6
    assert (b.in_flight, b.requests, b.errors) == (0, 1, 1)

    # Deltas reset; an idle member is reported at zero once, then dropped.
    second = {m.member_id: m for m in tracker.drain_report("gw").members}
    assert second["a"].requests == 0 and second["a"].in_flight == 1
    assert second["b"].requests == 0 and second["b"].in_flight == 0
    third = {m.member_id for m in tracker.drain_report("gw").members}
    assert third == {"a"}


def test_usage_from_json() -> None:
    assert usage_from_json(b'{"usage":{"prompt_tokens":2,"completion_tokens":5}}') == TokenUsage(
        2, 5
    )
    assert usage_from_json(b'{"usage":null}') == TokenUsage()
    assert usage_from_json(b"not json") == TokenUsage()


def test_usage_from_sse_takes_the_last_usage() -> None:
    text = (
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
        b'data: {"choices":[{"delta":{}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert usage_from_sse(text) == TokenUsage(9, 4)
    assert usage_from_sse(b'data: {"choices":[]}\n\ndata: [DONE]\n\n') == TokenUsage()


def test_stream_tail_is_bounded_and_keeps_the_end() -> None:
    tail = StreamTail(limit=10)
    for i in range(100):
        tail.add(b"%04d" % i)
    text = tail.text()
    assert text.endswith(b"0099") and 10 <= len(text) <= 14


def test_reported_in_flight_is_what_the_last_report_said() -> None:
    tracker = UsageTracker()
    tracker.started("a", "m")
    assert dict(tracker.reported_in_flight) == {}
    tracker.drain_report("gw")
    tracker.started("a", "m")
    assert dict(tracker.reported_in_flight) == {"a": 1}
    assert dict(tracker.in_flight) == {"a": 2}
    tracker.drain_report("gw")
    assert dict(tracker.reported_in_flight) == {"a": 2}
