"""Per-request accounting: in-flight counts, metrics, usage and the policy's observe, once.

A RequestAccount follows one request from arrival to its answer, whatever that is: a body, a
stream, an error, or a client that left. Each try at a member opens with sent() and closes with
try_failed() or the answer; the request closes exactly once, with answered(), stream_ended(),
failed() or abandoned(), and every later close is a no-op. What a request costs or counts
against (tokens, money, limits, spans) hangs on this object."""

from __future__ import annotations

import logging

from gateway.fairqueue import FairGate
from gateway.limits import Admission
from gateway.members import Member
from gateway.metrics import NO_BACKEND, UNKNOWN_MODEL, GatewayMetrics, ModelMetrics
from gateway.policies import Policy
from gateway.pool_sends import PoolSends
from gateway.routing import RoutingTable
from gateway.streaming import StreamOutcome
from gateway.tokens import NO_USAGE, TokenUsage
from gateway.ttft import CHARS_PER_TOKEN, TtftForecast
from gateway.usage import UsageTracker
from llmpool.clock import Clock

log = logging.getLogger(__name__)

# nginx's "client closed request": the client left before its answer.
CLIENT_CLOSED = 499


class Accounting:
    """What every request's account shares: usage counts, metrics, the clock, the table (whose
    models bound the metric labels). Built once at start-up."""

    def __init__(
        self,
        *,
        usage: UsageTracker,
        metrics: GatewayMetrics,
        clock: Clock,
        table: RoutingTable,
        ttft: TtftForecast | None = None,
        sends: PoolSends | None = None,
    ) -> None:
        # Tells the other gateways this one's sends as they happen (pool_sends.py).
        self.sends = sends
        # Learns members' prefill speed from streams (fallbacks on a TTFT SLO).
        self.ttft = ttft or TtftForecast()
        self.usage = usage
        self.metrics = metrics
        self.clock = clock
        self.table = table

    def open(self) -> RequestAccount:
        """The account of a request that arrives now."""
        return RequestAccount(self, self.clock.monotonic())


class RequestAccount:
    """One request's bookkeeping (see the module docstring)."""

    __slots__ = (
        "_admission",
        "_book",
        "_cost",
        "_finished",
        "_gate",
        "_member",
        "_mm",
        "_policy",
        "_sent_at",
        "_shared",
        "_tenant",
        "_ticket",
        "_tokens",
        "_trying",
        "model",
        "prompt_chars",
        "started_at",
    )

    def __init__(self, book: Accounting, started_at: float) -> None:
        self._book = book
        self.started_at = started_at
        # The pool the request is for, once known (after rules and splits, the target's).
        self.model: str | None = None
        self._mm: ModelMetrics | None = None
        self._policy: Policy | None = None
        # The member of the latest try, and whether that try is still open.
        self._member: Member | None = None
        self._ticket: object = None
        self._sent_at = 0.0
        # The number the other gateways were told the open try by (0: not told).
        self._shared = 0
        self._trying = False
        self._finished = False
        # What the latest try that ended with usage cost (the member's prices), US dollars.
        self._cost = 0.0
        # The request body's size: a prompt-length estimate where the member reports no usage.
        self.prompt_chars = 0
        # Its hold on limits and on a saturated pool's queue, given back when it closes.
        self._admission: Admission | None = None
        self._gate: FairGate | None = None
        self._tenant = ""
        self._tokens = 0

    @property
    def ttft_forecast(self) -> TtftForecast:
        return self._book.ttft

    @property
    def finished(self) -> bool:
        return self._finished

    def hold(self, admission: Admission | None, gate: FairGate | None, tenant: str = "") -> None:
        """The request was admitted by limits (admission) and holds a place in gate (as
        tenant's); both are settled when it closes."""
        self._admission = admission
        self._gate = gate
        self._tenant = tenant

    def begin(self, model: str, policy: Policy) -> None:
        """The request will go to a member of model's pool: it is in flight from now."""
        self.model = model
        self._policy = policy
        mm = self._mm = self._book.metrics.model(model)
        mm.in_flight.inc()

    def switch(self, model: str, policy: Policy) -> None:
        """The request moves on to another pool (a fallback): in flight there from now."""
        if self._mm is not None:
            self._mm.in_flight.dec()
        self.begin(model, policy)

    def sent(self, member: Member, ticket: object = None, stream: bool = False) -> None:
        """A try at member starts; ticket is what the policy's pick expected of it."""
        self._member = member
        self._ticket = ticket
        self._trying = True
        book = self._book
        self._sent_at = book.clock.monotonic()
        model = self._model()
        book.usage.started(member.id, model)
        if book.sends is not None and self._policy is not None:
            self._shared = book.sends.sent(model, self._policy, member.id, ticket, stream)

    def first_byte(self, answered: bool = True) -> None:
        """The open try's stream sent its first bytes (the member has begun answering; with
        answered False, the try ended without any)."""
        policy = self._policy
        if policy is not None and policy.settles and self._ticket is not None:
            since = self._book.clock.monotonic() - self._sent_at
            policy.began(self._ticket, since if answered else None)
            if answered and self._shared:
                sends = self._book.sends
                assert sends is not None
                sends.first(self._shared, since)

    def try_failed(self, error: str, detail: str = "") -> str:
        """The open try failed before an answer (the request may be retried elsewhere): it
        counts against the member, in usage and with the policy. `error` is a fixed phrase
        that clients may see; `detail` (addresses, exception text) goes to the log only.
        Returns what to tell the client should no other try succeed."""
        member = self._end_try(ok=False)
        elapsed = self._book.clock.monotonic() - self._sent_at
        policy = self._policy
        if policy is not None and policy.observes:
            policy.observe(member.id, elapsed, 0.0, 0, False)
        log.warning(
            "upstream try failed",
            extra={"model": self.model, "member": member.id, "error": error, "detail": detail},
        )
        return f"member {member.id} {error}"

    def answered(self, status: int, tokens: TokenUsage = NO_USAGE) -> None:
        """The open try's member answered with a whole body of this status."""
        if self._finished:
            return
        now = self._book.clock.monotonic()
        ok = status < 400
        member = self._end_try(ok=ok, now=now, tokens=tokens)
        self._count(member.id, status, tokens)
        policy = self._policy
        if ok and policy is not None:
            if policy.observes:
                # Not streamed: the whole answer's time stands for the time to first token.
                policy.observe(member.id, now - self._sent_at, 0.0, tokens.prompt, True)
            if policy.settles and self._ticket is not None:
                policy.settle(self._ticket, None, tokens.cached)
        self._close(now)

    def stream_ended(self, outcome: StreamOutcome) -> None:
        """The open try's stream ended: completed, broken upstream, or left by the client (not
        the member's fault)."""
        if self._finished:
            return
        now = self._book.clock.monotonic()
        mm = self._mm
        if mm is not None and outcome.ttft_s is not None:
            mm.ttft.observe(outcome.ttft_s)
        ok = outcome.error is None
        member = self._end_try(ok=ok, now=now, tokens=outcome.usage, ttft_s=outcome.ttft_s)
        if outcome.ttft_s is not None:
            # From the try's start, not the request's: retries and gateway time are not prefill.
            since_sent = outcome.ttft_s - (self._sent_at - self.started_at)
            prompt = outcome.usage.prompt or self.prompt_chars // CHARS_PER_TOKEN
            self._book.ttft.observe(member.id, prompt, since_sent)
        self._count(member.id, 200, outcome.usage)
        policy = self._policy
        if policy is not None:
            if policy.observes:
                observe_stream(policy, member.id, outcome, self.started_at, self._sent_at, now)
            if policy.settles and ok and self._ticket is not None and outcome.ttft_s is not None:
                ttft = outcome.ttft_s - (self._sent_at - self.started_at)
                policy.settle(self._ticket, ttft, outcome.usage.cached)
        self._close(now)

    def failed(self, status: int) -> None:
        """The gateway answers an error of its own: nothing to route to, every try failed, or
        something broke. Counted under the last member tried, else under none."""
        if self._finished:
            return
        if self._trying:
            self._end_try(ok=False)
        member = self._member
        self._count(member.id if member is not None else NO_BACKEND, status, NO_USAGE)
        self._close(self._book.clock.monotonic())

    def abandoned(self) -> None:
        """The client left (or the server cancelled the request) before an answer. A no-op for
        an account already finished, so callers may always end with it."""
        if self._finished:
            return
        member = self._member if self._trying else None
        if self._trying:
            self._end_try(ok=False)
        self._count(member.id if member is not None else NO_BACKEND, CLIENT_CLOSED, NO_USAGE)
        self._close(self._book.clock.monotonic())

    # ---- internals

    def _model(self) -> str:
        return self.model if self.model is not None else UNKNOWN_MODEL

    def _end_try(
        self,
        *,
        ok: bool,
        now: float | None = None,
        tokens: TokenUsage = NO_USAGE,
        ttft_s: float | None = None,
    ) -> Member:
        member = self._member
        assert member is not None and self._trying, "no try is open"
        self._trying = False
        # A try that ends has begun as far as the policy's wait is concerned (first byte or not).
        self.first_byte(answered=False)
        end = self._book.clock.monotonic() if now is None else now
        cost = self._cost = (
            member.cost_usd(tokens.prompt, tokens.cached, tokens.completion)
            if tokens is not NO_USAGE
            else 0.0
        )
        self._tokens = tokens.prompt + tokens.completion
        if self._shared:
            since = ttft_s - (self._sent_at - self.started_at) if ttft_s is not None else None
            sends = self._book.sends
            assert sends is not None
            sends.ended(self._shared, ok, since, tokens.cached)
            self._shared = 0
        self._book.usage.finished(
            member.id,
            self._model(),
            ok=ok,
            latency_s=end - self._sent_at,
            ttft_s=ttft_s,
            prompt_tokens=tokens.prompt,
            completion_tokens=tokens.completion,
            cached_tokens=tokens.cached,
            cost_usd=cost,
        )
        return member

    def _count(self, backend: str, status: int, tokens: TokenUsage) -> None:
        mm = self._mm
        if mm is None:
            # Not begun: label by the model only if the routing table knows it (bounded labels).
            model = self.model
            known = model is not None and model in self._book.table
            mm = self._book.metrics.model(model if known and model else UNKNOWN_MODEL)
        mm.requests(backend, status).inc()
        if tokens is NO_USAGE:
            return
        if tokens.prompt:
            mm.prompt_tokens.inc(tokens.prompt)
        if tokens.completion:
            mm.completion_tokens.inc(tokens.completion)
        if tokens.cached:
            mm.cached_tokens.inc(tokens.cached)
        if self._cost:
            mm.cost(backend).inc(self._cost)

    def _close(self, now: float) -> None:
        self._finished = True
        if self._gate is not None:
            self._gate.release(self._tenant)
            self._gate = None
        if self._admission is not None:
            self._admission.done(self._tokens, self._cost)
            self._admission = None
        mm = self._mm
        if mm is not None:
            mm.in_flight.dec()
            mm.duration.observe(now - self.started_at)


def observe_stream(
    policy: Policy,
    member_id: str,
    outcome: StreamOutcome,
    started_at: float,
    sent_at: float,
    now: float,
) -> None:
    """Tells the policy how a stream went: time to the first upstream chunk after sending, and
    time per output token after it when the usage says how many tokens came."""
    if outcome.ttft_s is None:
        if outcome.error is not None:
            policy.observe(member_id, now - sent_at, 0.0, 0, False)
        # No byte before the client left: nothing known about the member.
        return
    ttft = outcome.ttft_s - (sent_at - started_at)
    tokens = outcome.usage.completion
    tpot = (now - sent_at - ttft) / (tokens - 1) if tokens > 1 else 0.0
    policy.observe(member_id, ttft, tpot, outcome.usage.prompt, outcome.error is None)
