"""Requests and tokens a minute, and budgets, as one gateway enforces its slice of them.

Every limited subject ("key/ID", "tenant/NAME", "pool/NAME") has a token bucket per gateway
filled at the rate of this gateway's slice (controller/quotas.py moves slices to where demand
is; a subject without a slice yet gets limit / gateways). A bucket holds at most one second of
its rate (at least one request), so however busy, a subject is admitted no faster than its
limit: in any minute at most the limit plus a second's worth. Tokens are only known once a
request ends, so its estimate (prompt bytes / 4 plus max_tokens) is taken when it is admitted
and the difference settled at the end; a bucket may go into debt, and admits nothing until it
is out of it.

Budgets: the controller sums what every gateway reports; this gateway adds what it spent since
the controller's last figure, and refuses a key or tenant at its budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import QuotaExceededError, RateLimitedError
from gateway.keys import Keyring, Principal
from gateway.metrics import GatewayMetrics
from llmpool.clock import Clock
from llmpool.v1 import gateway_pb2

# A bucket's depth, seconds of its rate.
BURST_S = 1.0
# Reports whose spend is kept until the controller acknowledges them.
_MAX_UNACKED = 600


class Bucket:
    """Tokens refill at rate per second up to capacity; level may go negative (debt)."""

    __slots__ = ("at", "capacity", "level", "rate")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * BURST_S)
        self.level = self.capacity
        self.at = now

    def refill(self, now: float) -> float:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
            self.at = now
        return self.level

    def set_rate(self, rate: float, now: float) -> None:
        self.refill(now)
        self.rate = rate
        self.capacity = max(1.0, rate * BURST_S)
        self.level = min(self.level, self.capacity)

    def wait_s(self, need: float) -> float:
        """Seconds until level reaches need."""
        if self.level >= need:
            return 0.0
        return math.inf if self.rate <= 0 else (need - self.level) / self.rate


@dataclass(slots=True)
class _Usage:
    requests: int = 0
    refused: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    tenant: str = ""


@dataclass(slots=True)
class Admission:
    """One admitted request's hold on its subjects' buckets: settled once it ends."""

    limiter: Limiter
    principal: Principal | None
    subjects: tuple[str, ...]
    estimate: float
    # Headers for the answer: x-ratelimit-* of the key's own limits.
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def done(self, tokens: int, cost_usd: float) -> None:
        self.limiter.settle(self, tokens, cost_usd)


class Limiter:
    def __init__(self, clock: Clock, keys: Keyring, metrics: GatewayMetrics) -> None:
        self._clock = clock
        self._keys = keys
        self._metrics = metrics
        self._slices: dict[str, tuple[float, float]] = {}
        self._gateways = 1
        self._spent: dict[str, float] = {}
        # Spent here and not yet in the controller's figures: since the last report, and in
        # each report it has not yet acknowledged (by sequence).
        self._spent_here: dict[str, float] = {}
        self._unacked: dict[int, dict[str, float]] = {}
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}
        self._usage: dict[str, _Usage] = {}

    @property
    def gateways(self) -> int:
        """Gateways sharing the limits, as the controller last said (1 until it has)."""
        return self._gateways

    def apply(self, quotas: gateway_pb2.Quotas) -> None:
        self._slices = {s: (q.rpm, q.tpm) for s, q in quotas.slices.items()}
        self._gateways = max(1, quotas.gateways)
        self._spent = dict(quotas.spent_usd)
        acked = quotas.acked_sequence
        self._unacked = {seq: spent for seq, spent in self._unacked.items() if seq > acked}

    def _rate(self, subject: str, rpm: float, tpm: float) -> tuple[float, float]:
        """This gateway's requests and tokens a minute of a subject limited to rpm and tpm."""
        found = self._slices.get(subject)
        if found is not None:
            return found
        return rpm / self._gateways, tpm / self._gateways

    def admit(
        self,
        principal: Principal | None,
        pool: str,
        pool_rpm: int,
        pool_tpm: int,
        estimate: float,
    ) -> Admission | None:
        """Takes the request from every subject's buckets, or raises 429 naming the first
        that is out; None when nothing limits or counts this request."""
        limited: list[tuple[str, float, float]] = []
        if principal is not None:
            self._check_budget(principal)
            if principal.rpm or principal.tpm:
                limited.append((principal.subject, principal.rpm, principal.tpm))
            tenant = self._keys.tenants.get(principal.tenant) if principal.tenant else None
            if tenant is not None and (tenant.rpm or tenant.tpm):
                limited.append((principal.tenant_subject, tenant.rpm, tenant.tpm))
        if pool_rpm or pool_tpm:
            limited.append(("pool/" + pool, pool_rpm, pool_tpm))
        if principal is None and not limited:
            return None
        now = self._clock.monotonic()
        for subject, _, _ in limited:
            self._count(subject).requests += 1
        for subject, rpm, tpm in limited:
            rate_rpm, rate_tpm = self._rate(subject, rpm, tpm)
            if rpm:
                bucket = self._bucket(self._requests, subject, rate_rpm / 60.0, now)
                if bucket.refill(now) < 1.0:
                    self._refuse(limited, subject, "requests", bucket.wait_s(1.0), rpm, tpm)
            if tpm:
                bucket = self._bucket(self._tokens, subject, rate_tpm / 60.0, now)
                if bucket.refill(now) <= 0.0:
                    self._refuse(limited, subject, "tokens", bucket.wait_s(1e-9), rpm, tpm)
        subjects = tuple(s for s, _, _ in limited)
        for subject, rpm, tpm in limited:
            if rpm:
                self._requests[subject].level -= 1.0
            if tpm:
                self._tokens[subject].level -= estimate
        if principal is not None:
            usage = self._count(principal.subject)
            usage.tenant = principal.tenant
            if not (principal.rpm or principal.tpm):
                usage.requests += 1
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if principal is not None and principal.rpm:
            left = self._requests[principal.subject].level * self._gateways
            headers = (
                (b"x-ratelimit-limit-requests", str(principal.rpm).encode()),
                (b"x-ratelimit-remaining-requests", str(max(int(left), 0)).encode()),
            )
        return Admission(self, principal, subjects, estimate, headers)

    def _bucket(self, buckets: dict[str, Bucket], subject: str, rate: float, now: float) -> Bucket:
        bucket = buckets.get(subject)
        if bucket is None:
            bucket = buckets[subject] = Bucket(rate, now)
        elif bucket.rate != rate:
            bucket.set_rate(rate, now)
        return bucket

    def _count(self, subject: str) -> _Usage:
        usage = self._usage.get(subject)
        if usage is None:
            usage = self._usage[subject] = _Usage()
        return usage

    def _refuse(
        self,
        limited: list[tuple[str, float, float]],
        subject: str,
        what: str,
        wait_s: float,
        rpm: float,
        tpm: float,
    ) -> None:
        # Refused as a whole: every subject it arrived at counts it refused.
        for counted, _, _ in limited:
            self._count(counted).refused += 1
        kind = subject.partition("/")[0]
        self._metrics.limited.labels(kind, what).inc()
        retry = max(1, math.ceil(min(wait_s, 60.0)))
        name = {"key": "this API key", "tenant": "your tenant", "pool": "this model"}[kind]
        limit = f"{rpm:g} requests" if what == "requests" else f"{tpm:g} tokens"
        headers = {
            "Retry-After": str(retry),
            "x-ratelimit-limit-requests": f"{rpm:g}" if rpm else "",
            "x-ratelimit-limit-tokens": f"{tpm:g}" if tpm else "",
            f"x-ratelimit-remaining-{what}": "0",
            f"x-ratelimit-reset-{what}": f"{retry}s",
        }
        raise RateLimitedError(
            f"Rate limit reached for {name}: {limit} per minute. Retry after {retry} s.",
            headers={k: v for k, v in headers.items() if v},
        )

    def _check_budget(self, principal: Principal) -> None:
        if principal.budget_usd:
            spent = self._spent_so_far(principal.subject)
            if spent >= principal.budget_usd:
                self._over_budget("key", "This API key", spent, principal.budget_usd)
        tenant = self._keys.tenants.get(principal.tenant) if principal.tenant else None
        if tenant is not None and tenant.budget_usd:
            spent = self._spent_so_far(principal.tenant_subject)
            if spent >= tenant.budget_usd:
                self._over_budget(
                    "tenant", f"Tenant {principal.tenant!r}", spent, tenant.budget_usd
                )

    def _spent_so_far(self, subject: str) -> float:
        total = self._spent.get(subject, 0.0) + self._spent_here.get(subject, 0.0)
        for spent in self._unacked.values():
            total += spent.get(subject, 0.0)
        return total

    def _over_budget(self, kind: str, who: str, spent: float, budget: float) -> None:
        self._metrics.limited.labels(kind, "budget").inc()
        raise QuotaExceededError(
            f"{who} has used its budget: ${spent:.2f} of ${budget:.2f} spent this period. "
            "Ask an administrator to raise it, or wait for the next period."
        )

    def settle(self, admission: Admission, tokens: int, cost_usd: float) -> None:
        """The request ended having used tokens and cost_usd: the token buckets are corrected
        from the estimate, and the key's usage and spend counted."""
        extra = tokens - admission.estimate
        for subject in admission.subjects:
            bucket = self._tokens.get(subject)
            if bucket is not None:
                bucket.level -= extra
            self._count(subject).tokens += tokens
        principal = admission.principal
        if principal is None:
            return
        usage = self._count(principal.subject)
        if principal.subject not in admission.subjects:
            usage.tokens += tokens
        if cost_usd > 0:
            usage.cost_usd += cost_usd
            here = self._spent_here
            here[principal.subject] = here.get(principal.subject, 0.0) + cost_usd
            if principal.tenant_subject:
                t = principal.tenant_subject
                here[t] = here.get(t, 0.0) + cost_usd

    def drain_report(self, sequence: int = 0) -> Mapping[str, gateway_pb2.SubjectUsage]:
        """What each subject saw since the last report (for the controller's slices, budgets
        and ledger); this report is the sequence-th."""
        if self._spent_here:
            self._unacked[sequence] = self._spent_here
            self._spent_here = {}
            if len(self._unacked) > _MAX_UNACKED:
                # A controller that acknowledges nothing (away): the oldest go, as they would
                # once it is back and has summed them.
                del self._unacked[min(self._unacked)]
        found = {
            subject: gateway_pb2.SubjectUsage(
                requests=u.requests,
                refused=u.refused,
                tokens=u.tokens,
                cost_usd=u.cost_usd,
                tenant=u.tenant,
            )
            for subject, u in self._usage.items()
        }
        self._usage = {}
        return found
