"""The per-request account: every way a request ends is counted once, in metrics, usage and the
policy's observe, and in-flight counts always come back to zero."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from gateway.accounting import CLIENT_CLOSED, Accounting, RequestAccount
from gateway.members import Member, idle_member
from gateway.metrics import GatewayMetrics
from gateway.policies import PickContext, Policy
from gateway.routing import RoutingTable
from gateway.streaming import StreamOutcome
from gateway.tokens import NO_USAGE, TokenUsage
from gateway.usage import UsageTracker
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2


class Recorder(Policy, name="recorder"):
    """Records observe() calls."""

    def configure(self, params: object) -> None:
        self.seen: list[tuple[str, float, float, int, bool]] = []

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        return candidates[0]

    def observe(
        self, member_id: str, ttft_s: float, tpot_s: float, prompt_tokens: int, ok: bool
    ) -> None:
        self.seen.append((member_id, ttft_s, tpot_s, prompt_tokens, ok))


@dataclass
class Book:
    clock: FakeClock = field(default_factory=FakeClock)
    usage: UsageTracker = field(default_factory=UsageTracker)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    table: RoutingTable = field(default_factory=RoutingTable)
    policy: Recorder = field(default_factory=Recorder)

    def __post_init__(self) -> None:
        route = gateway_pb2.ModelRoute(
            model="m", policy="round_robin", members=[gateway_pb2.Member(id="a", url="http://a")]
        )
        self.table.apply(gateway_pb2.RoutingSnapshot(version=1, full=True, routes=[route]))
        self.accounting = Accounting(
            usage=self.usage, metrics=self.metrics, clock=self.clock, table=self.table
        )

    def open(self, model: str | None = "m") -> RequestAccount:
        account = self.accounting.open()
        if model is not None:
            account.begin(model, self.policy)
        return account

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def requests(self, model: str, backend: str, status: int) -> float:
        return self.value(
            "llmpool_gateway_requests_total", model=model, backend=backend, status=str(status)
        )

    def in_flight(self, model: str = "m") -> float:
        return self.value("llmpool_gateway_in_flight_requests", model=model)

    def durations(self, model: str = "m") -> float:
        return self.value("llmpool_gateway_request_duration_seconds_count", model=model)

    def usage_report(self) -> dict[str, gateway_pb2.MemberUsage]:
        return {m.member_id: m for m in self.usage.drain_report("gw").members}


A, B = idle_member("a"), idle_member("b")


def test_a_body_is_counted_once_with_its_tokens_and_observed() -> None:
    book = Book()
    account = book.open()
    assert book.in_flight() == 1
    account.sent(A)
    assert dict(book.usage.in_flight) == {"a": 1}
    book.clock.advance(0.25)
    account.answered(200, TokenUsage(7, 3))
    assert account.finished and book.in_flight() == 0 and book.durations() == 1
    assert book.requests("m", "a", 200) == 1
    assert book.value("llmpool_gateway_tokens_total", model="m", kind="prompt") == 7
    assert book.value("llmpool_gateway_tokens_total", model="m", kind="completion") == 3
    assert book.policy.seen == [("a", 0.25, 0.0, 7, True)]
    usage = book.usage_report()["a"]
    assert (usage.in_flight, usage.requests, usage.errors, usage.prompt_tokens) == (0, 1, 0, 7)
    assert usage.mean_latency_ms == pytest.approx(250.0)
    # Whatever closes it again changes nothing.
    account.answered(200, TokenUsage(7, 3))
    account.failed(502)
    account.abandoned()
    account.stream_ended(StreamOutcome(True, False, 0.1, TokenUsage(1, 1), None))
    assert book.requests("m", "a", 200) == 1 and book.requests("m", "a", 502) == 0
    assert book.in_flight() == 0 and book.durations() == 1 and len(book.policy.seen) == 1


def test_an_upstream_error_body_counts_against_the_member_and_is_not_observed() -> None:
    book = Book()
    account = book.open()
    account.sent(A)
    account.answered(404)
    assert book.requests("m", "a", 404) == 1 and book.policy.seen == []
    assert book.usage_report()["a"].errors == 1


def test_a_failed_try_then_another_member_answers() -> None:
    book = Book()
    account = book.open()
    account.sent(A)
    book.clock.advance(0.5)
    assert account.try_failed("refused") == "member a refused"
    assert not account.finished and book.in_flight() == 1
    account.sent(B)
    account.answered(200)
    assert book.policy.seen[0] == ("a", 0.5, 0.0, 0, False)
    assert book.requests("m", "b", 200) == 1 and book.requests("m", "a", 200) == 0
    report = book.usage_report()
    assert (report["a"].requests, report["a"].errors) == (1, 1)
    assert (report["b"].requests, report["b"].errors) == (1, 0)
    assert book.in_flight() == 0


def test_every_try_failed_counts_the_gateways_502_under_the_last_member() -> None:
    book = Book()
    account = book.open()
    for member in (A, B):
        account.sent(member)
        account.try_failed("HTTP 500")
    account.failed(502)
    assert book.requests("m", "b", 502) == 1 and book.requests("m", "a", 502) == 0
    assert book.in_flight() == 0 and book.durations() == 1
    assert dict(book.usage.in_flight) == {}


def test_errors_before_any_member_are_labelled_by_a_known_model_only() -> None:
    book = Book()
    unknown = book.open(model=None)
    unknown.model = "attacker-chosen-name"
    unknown.failed(404)
    assert book.requests("unknown", "none", 404) == 1
    names = {s.labels.get("model") for f in book.metrics.registry.collect() for s in f.samples}
    assert "attacker-chosen-name" not in names
    known = book.open(model=None)
    known.model = "m"
    known.failed(503)
    assert book.requests("m", "none", 503) == 1
    # Never in flight, so no duration either.
    assert book.in_flight() == 0 and book.durations() == 0


def test_an_unexpected_error_mid_try_closes_the_try_and_the_request() -> None:
    book = Book()
    account = book.open()
    account.sent(A)
    account.failed(500)
    assert book.requests("m", "a", 500) == 1
    assert dict(book.usage.in_flight) == {} and book.usage_report()["a"].errors == 1
    assert book.in_flight() == 0 and book.policy.seen == []


def test_a_client_that_leaves_mid_try_is_499_and_not_the_members_fault() -> None:
    book = Book()
    account = book.open()
    account.sent(A)
    account.abandoned()
    assert book.requests("m", "a", CLIENT_CLOSED) == 1
    assert dict(book.usage.in_flight) == {} and book.policy.seen == []
    assert book.in_flight() == 0 and book.durations() == 1
    # One that leaves before its body arrived is counted too, under no model.
    early = book.open(model=None)
    early.abandoned()
    assert book.requests("unknown", "none", CLIENT_CLOSED) == 1


def test_a_stream_is_counted_when_it_ends_with_its_ttft_usage_and_tpot() -> None:
    book = Book()
    account = book.open()
    book.clock.advance(0.1)  # parsing and picking
    account.sent(A)
    book.clock.advance(2.0)
    # First chunk 0.5 s after the request arrived; 5 tokens in 2 s after sending.
    account.stream_ended(StreamOutcome(True, False, 0.5, TokenUsage(11, 5), None))
    assert book.requests("m", "a", 200) == 1
    assert book.value("llmpool_gateway_time_to_first_token_seconds_count", model="m") == 1
    member, ttft, tpot, prompt, ok = book.policy.seen[0]
    assert (member, prompt, ok) == ("a", 11, True)
    assert ttft == pytest.approx(0.4) and tpot == pytest.approx((2.0 - 0.4) / 4)
    assert book.usage_report()["a"].mean_ttft_ms == pytest.approx(500.0)
    assert book.in_flight() == 0


def test_a_broken_stream_counts_as_an_error_of_the_member() -> None:
    book = Book()
    account = book.open()
    account.sent(A)
    account.stream_ended(StreamOutcome(False, False, 0.2, NO_USAGE, "reset by peer"))
    assert book.usage_report()["a"].errors == 1
    assert book.policy.seen[0][4] is False
    assert book.in_flight() == 0


class Settler(Policy, name="settler"):
    """Records began() and settle() calls."""

    def configure(self, params: object) -> None:
        self.began_with: list[object] = []
        self.began_after: list[float | None] = []
        self.settled: list[tuple[object, float | None, int]] = []

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        return candidates[0]

    def began(self, ticket: object, ttft_s: float | None = None) -> None:
        self.began_with.append(ticket)
        self.began_after.append(ttft_s)

    def settle(self, ticket: object, ttft_s: float | None, cached_tokens: int) -> None:
        self.settled.append((ticket, ttft_s, cached_tokens))


def test_the_policy_hears_when_each_try_begins_and_how_it_went() -> None:
    book = Book()
    policy = Settler()
    assert policy.settles
    # A stream: begun at its first byte, and again (harmlessly) when the try ends.
    account = book.accounting.open()
    account.begin("m", policy)
    account.sent(A, "ticket-1")
    assert policy.began_with == []
    book.clock.advance(0.125)
    account.first_byte()
    # With the time from sending to it (the policy may judge the try by it there and then).
    assert policy.began_with == ["ticket-1"] and policy.began_after == [0.125]
    book.clock.advance(0.125)
    usage = TokenUsage(prompt=100, completion=5, cached=64)
    account.stream_ended(StreamOutcome(True, False, 0.25, usage, None))
    assert policy.settled == [("ticket-1", 0.25, 64)]
    # A try that fails before any byte still ends its wait (and teaches nothing).
    account = book.accounting.open()
    account.begin("m", policy)
    account.sent(B, "ticket-2")
    account.try_failed("refused the connection")
    assert policy.began_with[-1] == "ticket-2" and len(policy.settled) == 1
    assert policy.began_after[-1] is None
    account.failed(502)
