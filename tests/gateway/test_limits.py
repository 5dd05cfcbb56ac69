"""Rate limits and budgets at one gateway: token buckets of one second's depth refilled at this
gateway's slice of each limit, 429s that say who ran out and when to retry, tokens estimated at
admission and corrected at the end, budgets from the controller's figure plus spend it has not
yet acknowledged, and the usage report the controller slices from."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import pytest

import gateway.limits
from gateway.errors import QuotaExceededError, RateLimitedError
from gateway.keys import Keyring, Principal
from gateway.limits import Admission, Bucket, Limiter
from gateway.metrics import GatewayMetrics
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2, types_pb2

POOL = "llama"


def key_entry(key_id: str, **fields: object) -> gateway_pb2.KeyEntry:
    digest = hashlib.sha256(("s" * 43).encode()).digest()
    return gateway_pb2.KeyEntry(id=key_id, secret_sha256=digest, **fields)  # type: ignore[arg-type]


@dataclass
class Setup:
    """A limiter with its keyring on a fake clock; keys and tenants as the controller sends."""

    clock: FakeClock = field(default_factory=FakeClock)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    def __post_init__(self) -> None:
        self.keys = Keyring("keys", self.clock, self.metrics)
        self.limiter = Limiter(self.clock, self.keys, self.metrics)

    def table(
        self, *entries: gateway_pb2.KeyEntry, tenants: tuple[types_pb2.Tenant, ...] = ()
    ) -> list[Principal]:
        self.keys.apply(gateway_pb2.KeyTable(keys=list(entries), tenants=list(tenants)))
        found = [self.keys.get(e.id) for e in entries]
        assert all(p is not None for p in found)
        return [p for p in found if p is not None]

    def key(self, key_id: str = "000000000001", **fields: object) -> Principal:
        return self.table(key_entry(key_id, **fields))[0]

    def admit(
        self,
        principal: Principal | None,
        pool: str = POOL,
        pool_rpm: int = 0,
        pool_tpm: int = 0,
        estimate: float = 10.0,
    ) -> Admission | None:
        return self.limiter.admit(principal, pool, pool_rpm, pool_tpm, estimate)

    def admitted(
        self, principal: Principal | None, pool: str = POOL, pool_rpm: int = 0, pool_tpm: int = 0
    ) -> bool:
        """Whether the request was admitted (429 for a rate limit: False)."""
        try:
            self.admit(principal, pool, pool_rpm, pool_tpm)
        except RateLimitedError:
            return False
        return True

    def hammer(self, principal: Principal | None, seconds: float) -> list[float]:
        """Three requests every eighth of a second for `seconds`: when each admitted one came
        (an eighth is exact in binary, so time does not drift)."""
        start = self.clock.monotonic()
        times: list[float] = []
        for _ in range(int(seconds * 8) + 1):
            for _ in range(3):
                if self.admitted(principal):
                    times.append(self.clock.monotonic() - start)
            self.clock.advance(0.125)
        return times

    def limited(self, subject: str, limit: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "llmpool_gateway_limited_requests_total", {"subject": subject, "limit": limit}
        )
        return value or 0.0


def test_a_bucket_holds_one_second_of_its_rate_and_at_least_one() -> None:
    assert Bucket(10.0, 0.0).capacity == 10.0
    assert Bucket(1.0, 0.0).capacity == 1.0
    slow = Bucket(0.25, 0.0)
    assert slow.capacity == 1.0
    assert slow.level == 1.0  # starts full


def test_a_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = Bucket(2.0, 100.0)
    bucket.level = 0.0
    assert bucket.refill(100.25) == pytest.approx(0.5)
    assert bucket.refill(100.75) == pytest.approx(1.5)
    assert bucket.refill(500.0) == 2.0
    # Time going backwards (or standing still) adds nothing.
    bucket.level = 0.0
    assert bucket.refill(499.0) == 0.0


def test_a_bucket_in_debt_says_how_long_until_it_has_enough() -> None:
    bucket = Bucket(2.0, 0.0)
    assert bucket.wait_s(1.0) == 0.0
    bucket.level = -3.0
    assert bucket.wait_s(1.0) == pytest.approx(2.0)
    assert bucket.refill(1.0) == pytest.approx(-1.0)
    assert Bucket(0.0, 0.0).wait_s(2.0) == float("inf")


def test_a_new_rate_keeps_the_level_within_the_new_capacity() -> None:
    bucket = Bucket(10.0, 0.0)
    bucket.set_rate(2.0, 0.0)
    assert (bucket.rate, bucket.capacity, bucket.level) == (2.0, 2.0, 2.0)
    bucket.level = 0.0
    # The time before the change refills at the old rate.
    bucket.set_rate(20.0, 0.1)
    assert bucket.level == pytest.approx(0.2)
    assert bucket.capacity == 20.0


def test_nothing_limited_and_no_key_is_not_counted_at_all() -> None:
    s = Setup()
    assert s.admit(None) is None
    assert s.limiter.drain_report() == {}


def test_a_key_at_60_rpm_gets_one_at_once_then_one_a_second() -> None:
    s = Setup()
    key = s.key(rpm=60)
    times = s.hammer(key, 60.0)
    # 60 a minute plus the one-second burst, however hard it is hammered.
    assert abs(len(times) - 61) <= 1
    assert times[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1.0 - 1e-9


def test_two_gateways_without_a_slice_each_admit_half_the_rate() -> None:
    s = Setup()
    key = s.key(rpm=60)
    s.limiter.apply(gateway_pb2.Quotas(gateways=2))
    assert s.limiter.gateways == 2
    # Half of 60 a minute, plus the burst (one second of half a request: at least one).
    assert abs(len(s.hammer(key, 60.0)) - 31) <= 1


def test_a_slice_sets_this_gateways_rate_whatever_the_share() -> None:
    s = Setup()
    key = s.key(rpm=60)
    s.limiter.apply(
        gateway_pb2.Quotas(gateways=2, slices={key.subject: gateway_pb2.QuotaSlice(rpm=120)})
    )
    # 120 a minute here, and a burst of one second of it (two).
    assert abs(len(s.hammer(key, 60.0)) - 122) <= 1


def test_gateways_is_one_until_the_controller_says_and_never_zero() -> None:
    s = Setup()
    assert s.limiter.gateways == 1
    s.limiter.apply(gateway_pb2.Quotas(gateways=0))
    assert s.limiter.gateways == 1
    key = s.key(rpm=60)
    assert abs(len(s.hammer(key, 10.0)) - 11) <= 1


def test_a_429_says_which_limit_and_when_to_retry() -> None:
    s = Setup()
    key = s.key(rpm=60, tpm=6000)
    admission = s.admit(key)
    assert admission is not None
    headers = dict(admission.headers)
    assert headers[b"x-ratelimit-limit-requests"] == b"60"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    with pytest.raises(RateLimitedError) as caught:
        s.admit(key)
    err = caught.value
    assert err.status == 429
    assert "this API key" in err.message and "60 requests per minute" in err.message
    assert int(err.headers["Retry-After"]) >= 1
    assert err.headers["x-ratelimit-limit-requests"] == "60"
    assert err.headers["x-ratelimit-limit-tokens"] == "6000"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == err.headers["Retry-After"] + "s"
    assert s.limited("key", "requests") == 1


def test_retry_after_is_when_the_bucket_has_a_request_again() -> None:
    s = Setup()
    key = s.key(rpm=6)  # one every ten seconds
    s.admit(key)
    s.clock.advance(2.5)
    with pytest.raises(RateLimitedError) as caught:
        s.admit(key)
    assert caught.value.headers["Retry-After"] == "8"
    s.clock.advance(7.4)
    assert not s.admitted(key)
    s.clock.advance(0.2)
    assert s.admitted(key)


def test_a_pool_limit_applies_to_requests_without_a_key() -> None:
    s = Setup()
    admission = s.admit(None, pool_rpm=60)
    assert admission is not None
    assert admission.subjects == ("pool/" + POOL,)
    # No key: no x-ratelimit headers of a key's own.
    assert admission.headers == ()
    with pytest.raises(RateLimitedError) as caught:
        s.admit(None, pool_rpm=60)
    assert "this model" in caught.value.message
    assert s.limited("pool", "requests") == 1
    # Another pool has its own bucket.
    assert s.admitted(None, pool="other", pool_rpm=60)
    s.clock.advance(1.0)
    assert s.admitted(None, pool_rpm=60)


def test_a_tenant_limit_applies_across_the_tenants_keys() -> None:
    s = Setup()
    a, b, outsider = s.table(
        key_entry("00000000000a", tenant="acme"),
        key_entry("00000000000b", tenant="acme"),
        key_entry("00000000000c", tenant="globex"),
        tenants=(types_pb2.Tenant(name="acme", rpm=60),),
    )
    assert s.admitted(a)
    with pytest.raises(RateLimitedError) as caught:
        s.admit(b)
    assert "your tenant" in caught.value.message
    assert caught.value.headers["x-ratelimit-limit-requests"] == "60"
    assert s.limited("tenant", "requests") == 1
    # Another tenant (without limits) is not held back by this one.
    assert s.admitted(outsider)
    s.clock.advance(1.0)
    assert s.admitted(b)
    assert not s.admitted(a)


def test_a_refused_request_takes_nothing_from_the_buckets_it_passed() -> None:
    s = Setup()
    key = s.key(rpm=120)  # a bucket of two
    assert s.admitted(key, pool_rpm=60)
    # The key has one left; the pool has none and refuses the request as a whole.
    with pytest.raises(RateLimitedError) as caught:
        s.admit(key, pool_rpm=60)
    assert "this model" in caught.value.message
    # So the key still has its one for another pool.
    admission = s.admit(key, pool="other")
    assert admission is not None
    assert dict(admission.headers)[b"x-ratelimit-remaining-requests"] == b"0"
    assert not s.admitted(key, pool="other")


def test_tokens_are_estimated_at_admission_and_settled_at_the_end() -> None:
    s = Setup()
    key = s.key(tpm=600)  # ten tokens a second, a bucket of ten
    first = s.admit(key, estimate=4.0)
    assert first is not None
    # Six left: admitted, though it may use more than is left (a bucket may go into debt).
    second = s.admit(key, estimate=50.0)
    assert second is not None
    with pytest.raises(RateLimitedError) as caught:
        s.admit(key, estimate=1.0)
    assert "600 tokens per minute" in caught.value.message
    assert caught.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert caught.value.headers["Retry-After"] == "5"  # 44 in debt at 10 a second
    assert s.limited("key", "tokens") == 1
    # The second used 4 of its 50, the first 24 of its 4: 10 - 4 - 24 = -18.
    second.done(4, 0.0)
    first.done(24, 0.0)
    s.clock.advance(1.7)
    assert not s.admitted(key)  # -18 + 17 = -1
    s.clock.advance(0.2)
    assert s.admitted(key)  # +1 > 0


def test_the_tpm_bucket_of_a_pool_is_settled_too() -> None:
    s = Setup()
    admission = s.admit(None, pool_tpm=60, estimate=1.0)  # one a second, a bucket of one
    assert admission is not None
    admission.done(31, 0.0)
    s.clock.advance(29.0)
    assert not s.admitted(None, pool_tpm=60)
    s.clock.advance(2.0)
    assert s.admitted(None, pool_tpm=60)


def test_the_report_counts_requests_refusals_and_tokens_per_subject_then_empties() -> None:
    s = Setup()
    key, quiet = s.table(
        key_entry("00000000000a", tenant="acme", rpm=60),
        key_entry("00000000000b", tenant="acme"),
        tenants=(types_pb2.Tenant(name="acme", rpm=600),),
    )
    first = s.admit(key, pool_rpm=6000)
    assert first is not None
    assert first.subjects == (key.subject, "tenant/acme", "pool/" + POOL)
    # Refused by the key: counted refused at every subject it arrived at.
    assert not s.admitted(key, pool_rpm=6000)
    q = s.admit(quiet, pool_rpm=6000)
    assert q is not None
    first.done(100, 0.25)
    q.done(7, 0.0)
    report = s.limiter.drain_report()
    assert set(report) == {key.subject, quiet.subject, "tenant/acme", "pool/" + POOL}
    k = report[key.subject]
    assert (k.requests, k.refused, k.tokens, k.cost_usd, k.tenant) == (2, 1, 100, 0.25, "acme")
    t = report["tenant/acme"]
    assert (t.requests, t.refused, t.tokens) == (3, 1, 107)
    p = report["pool/" + POOL]
    assert (p.requests, p.refused, p.tokens) == (3, 1, 107)
    # A key without limits of its own counts what it was admitted for, for the ledger.
    qr = report[quiet.subject]
    assert (qr.requests, qr.refused, qr.tokens, qr.tenant) == (1, 0, 7, "acme")
    assert s.limiter.drain_report() == {}


def test_a_key_refused_by_its_pool_is_not_counted_admitted() -> None:
    s = Setup()
    limited, unlimited = s.table(key_entry("00000000000a", rpm=600), key_entry("00000000000b"))
    assert s.admitted(None, pool_rpm=60)
    assert not s.admitted(limited, pool_rpm=60)
    assert not s.admitted(unlimited, pool_rpm=60)
    report = s.limiter.drain_report()
    # The controller's ledger takes requests - refused as admitted: none for either key.
    for subject in (limited.subject, unlimited.subject):
        u = report.get(subject, gateway_pb2.SubjectUsage())
        assert u.requests - u.refused == 0
    assert (report["pool/" + POOL].requests, report["pool/" + POOL].refused) == (3, 2)


def test_a_key_at_its_budget_is_refused_from_the_controllers_figure_plus_local_spend() -> None:
    s = Setup()
    key = s.key(budget_usd=10.0)
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 9.5}))
    admission = s.admit(key)
    assert admission is not None
    admission.done(1000, 0.4)  # 9.9: still under
    again = s.admit(key)
    assert again is not None
    again.done(1000, 0.1)  # 10.0: at the budget
    with pytest.raises(QuotaExceededError) as caught:
        s.admit(key)
    err = caught.value
    assert err.status == 429 and err.code == "insufficient_quota"
    assert "budget" in err.message and "This API key" in err.message
    assert "$10.00 of $10.00" in err.message
    assert s.limited("key", "budget") == 1
    # A new figure that does not yet include this gateway's spend leaves it counted.
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 9.5}))
    with pytest.raises(QuotaExceededError):
        s.admit(key)


def test_local_spend_counts_until_the_controller_acknowledges_its_report() -> None:
    s = Setup()
    key = s.key(budget_usd=10.0)
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 9.0}))
    admission = s.admit(key)
    assert admission is not None
    admission.done(10, 1.0)
    assert s.limiter.drain_report(1)[key.subject].cost_usd == 1.0
    # Reported as the first, but the controller's figure is from before it: still counted.
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 9.0}, acked_sequence=0))
    with pytest.raises(QuotaExceededError):
        s.admit(key)
    # The controller has summed report 1 into its figure: the local copy goes (not twice).
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 9.5}, acked_sequence=1))
    admission = s.admit(key)
    assert admission is not None
    # Spend since the last report counts whatever the controller acknowledges.
    admission.done(10, 0.5)
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 9.5}, acked_sequence=1))
    with pytest.raises(QuotaExceededError):
        s.admit(key)
    # Reported as the second and acknowledged with a figure that includes it: over.
    s.limiter.drain_report(2)
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 10.0}, acked_sequence=2))
    with pytest.raises(QuotaExceededError):
        s.admit(key)
    # A new period (the controller's figure back to nothing): admitted again.
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 0.0}, acked_sequence=2))
    assert s.admit(key) is not None


def test_unacknowledged_spend_is_bounded_oldest_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway.limits, "_MAX_UNACKED", 2)
    s = Setup()
    key = s.key(budget_usd=10.0)
    for sequence, cost in enumerate((6.0, 3.0, 0.5), start=1):
        admission = s.admit(key)
        assert admission is not None
        admission.done(1, cost)
        s.limiter.drain_report(sequence)
    # Kept: 3.0 + 0.5 of the last two reports; the 6.0 of the first was let go.
    assert s.admit(key) is not None
    admission = s.admit(key)
    assert admission is not None
    admission.done(1, 6.5)
    with pytest.raises(QuotaExceededError) as caught:
        s.admit(key)
    assert "$10.00 of $10.00" in caught.value.message


def test_a_tenant_budget_is_shared_by_its_keys() -> None:
    s = Setup()
    a, b = s.table(
        key_entry("00000000000a", tenant="acme"),
        key_entry("00000000000b", tenant="acme"),
        tenants=(types_pb2.Tenant(name="acme", budget_usd=1.0),),
    )
    admission = s.admit(a)
    assert admission is not None
    admission.done(10, 1.25)
    with pytest.raises(QuotaExceededError) as caught:
        s.admit(b)
    assert "Tenant 'acme'" in caught.value.message and "budget" in caught.value.message
    assert s.limited("tenant", "budget") == 1
    report = s.limiter.drain_report()
    assert report[a.subject].cost_usd == 1.25
    # Refused for the budget before anything was counted against it.
    assert b.subject not in report


def test_no_budget_means_no_limit_on_spend() -> None:
    s = Setup()
    key = s.key()
    s.limiter.apply(gateway_pb2.Quotas(spent_usd={key.subject: 1e9}))
    admission = s.admit(key)
    assert admission is not None
    admission.done(1, 1e6)
    assert s.admit(key) is not None


def test_a_key_without_limits_is_admitted_and_counted() -> None:
    s = Setup()
    key = s.key(tenant="acme")
    admission = s.admit(key)
    assert admission is not None
    assert admission.subjects == ()
    assert admission.headers == ()
    admission.done(12, 0.5)
    u = s.limiter.drain_report()[key.subject]
    assert (u.requests, u.refused, u.tokens, u.cost_usd, u.tenant) == (1, 0, 12, 0.5, "acme")


def test_a_changed_limit_applies_to_the_existing_bucket() -> None:
    s = Setup()
    key = s.key(rpm=600)
    assert len(s.hammer(key, 0.0)) == 3  # a bucket of ten, three tried
    s.clock.advance(10.0)
    key = s.key(rpm=60)
    assert len(s.hammer(key, 0.0)) == 1
