"""Admission before routing: a request's limits are taken and held by its account, and a pool
that queues admits at most queue_per_member per candidate (this gateway's share) at once; the
rest wait their tenant's turn, are admitted as accounts close, or are shed with 503."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import orjson
import pytest

import gateway.admission
from gateway.accounting import Accounting, RequestAccount
from gateway.admission import Admitter, OverloadedError
from gateway.errors import RateLimitedError
from gateway.keys import Keyring, Principal
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.parsing import Endpoint, ParsedRequest, parse_request
from gateway.routing import Route, RoutingTable
from gateway.usage import UsageTracker
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2
from tests.support import eventually

MODEL = "llama"


def request(max_tokens: int = 1) -> ParsedRequest:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return parse_request(Endpoint.CHAT, orjson.dumps({**body, "max_tokens": max_tokens}))


@dataclass
class Gateway:
    """What admission needs of a gateway: keys, limits, metrics, accounts, a routing table."""

    clock: FakeClock = field(default_factory=FakeClock)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    def __post_init__(self) -> None:
        self.keys = Keyring("keys", self.clock, self.metrics)
        self.limiter = Limiter(self.clock, self.keys, self.metrics)
        self.admitter = Admitter(self.limiter, self.metrics)
        self.table = RoutingTable()
        self.accounting = Accounting(
            usage=UsageTracker(), metrics=self.metrics, clock=self.clock, table=self.table
        )

    def route(self, queue_per_member: int = 1, members: int = 2, **fields: object) -> Route:
        msg = gateway_pb2.ModelRoute(
            model=MODEL,
            policy="round_robin",
            members=[
                gateway_pb2.Member(id=f"m{i}", url=f"http://m{i}", weight=1, healthy=True)
                for i in range(members)
            ],
            max_in_flight_per_member=queue_per_member,
            **fields,  # type: ignore[arg-type]
        )
        self.table.apply(gateway_pb2.RoutingSnapshot(version=1, full=True, routes=[msg]))
        found = self.table.get(MODEL)
        assert found is not None
        return found

    def keys_of(self, *entries: gateway_pb2.KeyEntry) -> list[Principal]:
        self.keys.apply(gateway_pb2.KeyTable(keys=list(entries)))
        found = [self.keys.get(e.id) for e in entries]
        return [p for p in found if p is not None]

    async def admit(
        self, route: Route, principal: Principal | None = None, req: ParsedRequest | None = None
    ) -> RequestAccount:
        """Admits a request that must not wait; its account, to close when it is done."""
        account = self.accounting.open()
        await asyncio.wait_for(
            self.admitter.admit(principal, route, req or request(), account), 0.5
        )
        return account

    def waits(
        self, route: Route, principal: Principal | None = None
    ) -> tuple[asyncio.Task[None], RequestAccount]:
        """Starts a request's admission in a task (to wait in the queue) and its account."""
        account = self.accounting.open()
        task = asyncio.create_task(self.admitter.admit(principal, route, request(), account))
        return task, account

    async def queued(self, n: int) -> None:
        await eventually(lambda: self.admitter.waiting() == n, 5, f"{n} waiting")

    def counted(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "llmpool_gateway_queued_requests_total", {"model": MODEL, "outcome": outcome}
        )
        return value or 0.0


def key(key_id: str, **fields: object) -> gateway_pb2.KeyEntry:
    digest = hashlib.sha256(("s" * 43).encode()).digest()
    return gateway_pb2.KeyEntry(id=key_id, secret_sha256=digest, **fields)  # type: ignore[arg-type]


async def test_a_pool_that_does_not_queue_admits_everything_at_once() -> None:
    gw = Gateway()
    route = gw.route(queue_per_member=0, members=1)
    accounts = [await gw.admit(route) for _ in range(50)]
    assert gw.admitter.waiting() == 0
    assert gw.admitter._gates == {}
    for account in accounts:
        account.abandoned()


async def test_a_pool_with_fallbacks_spills_instead_of_queueing() -> None:
    gw = Gateway()
    route = gw.route(queue_per_member=1, members=1, fallbacks=["spare"])
    assert route.queue_per_member == 1 and route.fallbacks == ("spare",)
    for _ in range(10):
        await gw.admit(route)
    assert gw.admitter._gates == {}


async def test_a_pool_without_candidates_is_not_gated() -> None:
    gw = Gateway()
    route = gw.route(queue_per_member=1, members=0)
    for _ in range(10):
        await gw.admit(route)
    assert gw.admitter.waiting() == 0


async def test_requests_past_the_limit_wait_and_are_admitted_as_accounts_close() -> None:
    gw = Gateway()
    route = gw.route(queue_per_member=1, members=2)
    first = await gw.admit(route)
    second = await gw.admit(route)
    third, third_account = gw.waits(route)
    fourth, fourth_account = gw.waits(route)
    await gw.queued(2)
    assert not third.done() and not fourth.done()
    # The client of the first left: its place goes to the oldest waiter.
    first.abandoned()
    await asyncio.wait_for(third, 5)
    assert not fourth.done()
    assert gw.admitter.waiting() == 1
    # Closing twice gives back one place, not two.
    first.abandoned()
    assert gw.admitter.waiting() == 1
    # An error answer closes the account too.
    second.failed(502)
    await asyncio.wait_for(fourth, 5)
    assert gw.counted("admitted") == 2
    assert gw.counted("shed") == 0
    third_account.abandoned()
    fourth_account.abandoned()
    assert gw.admitter._gates[MODEL].admitted == 0


async def test_the_limit_is_this_gateways_share_of_queue_per_member_times_candidates() -> None:
    gw = Gateway()
    gw.limiter.apply(gateway_pb2.Quotas(gateways=2))
    route = gw.route(queue_per_member=1, members=2)
    first = await gw.admit(route)
    second, _ = gw.waits(route)
    await gw.queued(1)
    # Back to one gateway: the next request finds the limit at two, which admits the waiter
    # (and it waits behind it, the pool full again).
    gw.limiter.apply(gateway_pb2.Quotas(gateways=1))
    third, _ = gw.waits(route)
    await asyncio.wait_for(second, 5)
    await gw.queued(1)
    assert gw.admitter._gates[MODEL].limit == 2
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    first.abandoned()


async def test_the_limit_rounds_up_and_is_at_least_one() -> None:
    gw = Gateway()
    gw.limiter.apply(gateway_pb2.Quotas(gateways=3))
    route = gw.route(queue_per_member=1, members=1)
    await gw.admit(route)
    assert gw.admitter._gates[MODEL].limit == 1
    route = gw.route(queue_per_member=3, members=2)
    await gw.admit(route)
    assert gw.admitter._gates[MODEL].limit == 2


async def test_a_shed_request_is_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.admission, "MAX_QUEUED", 0)
    gw = Gateway()
    route = gw.route(queue_per_member=1, members=2)
    first = await gw.admit(route)
    await gw.admit(route)
    account = gw.accounting.open()
    with pytest.raises(OverloadedError) as caught:
        await gw.admitter.admit(None, route, request(), account)
    err = caught.value
    assert err.status == 503 and err.code == "overloaded"
    assert err.headers == {"Retry-After": "1"}
    assert repr(MODEL) in err.message and "queue full" in err.message
    assert gw.counted("shed") == 1
    # The shed request held no place: closing it frees none.
    account.failed(err.status)
    assert gw.admitter._gates[MODEL].admitted == 2
    first.abandoned()
    await gw.admit(route)


async def test_a_request_that_waits_too_long_is_shed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.admission, "MAX_QUEUE_WAIT_S", 0.01)
    gw = Gateway()
    route = gw.route(queue_per_member=1, members=1)
    await gw.admit(route)
    waiting, account = gw.waits(route)
    with pytest.raises(OverloadedError) as caught:
        await asyncio.wait_for(waiting, 5)
    assert "waited too long" in caught.value.message
    assert gw.counted("shed") == 1
    assert gw.admitter.waiting() == 0
    account.failed(503)


async def test_a_client_that_leaves_while_waiting_leaves_the_queue() -> None:
    gw = Gateway()
    route = gw.route(queue_per_member=1, members=1)
    first = await gw.admit(route)
    waiting, account = gw.waits(route)
    await gw.queued(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    account.abandoned()
    assert gw.admitter.waiting() == 0
    first.abandoned()
    assert gw.admitter._gates[MODEL].admitted == 0


async def test_keys_of_one_tenant_take_turns_together() -> None:
    gw = Gateway()
    a, b = gw.keys_of(key("00000000000a", tenant="acme"), key("00000000000b", tenant="acme"))
    route = gw.route(queue_per_member=1, members=1)
    await gw.admit(route, a)
    # The pool is full and acme has one in flight: acme's other key waits its turn.
    waiting, _ = gw.waits(route, b)
    await gw.queued(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_key_without_a_tenant_takes_turns_as_itself() -> None:
    gw = Gateway()
    a, b = gw.keys_of(key("00000000000a"), key("00000000000b"))
    route = gw.route(queue_per_member=1, members=1)
    await gw.admit(route, a)
    # The pool is full, but b is a tenant of its own with nothing in flight: it is admitted at
    # once from the reserve (it would wait were every key without a tenant one tenant "").
    await gw.admit(route, b)
    assert gw.admitter._gates[MODEL].admitted == 2
    # Not so a's second request.
    waiting, _ = gw.waits(route, a)
    await gw.queued(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_higher_priority_key_goes_first() -> None:
    gw = Gateway()
    low, high = gw.keys_of(
        key("00000000000a", tenant="acme", priority=0),
        key("00000000000b", tenant="acme", priority=5),
    )
    route = gw.route(queue_per_member=1, members=1)
    holder = await gw.admit(route, low)
    low_waits, _ = gw.waits(route, low)
    await gw.queued(1)
    high_waits, high_account = gw.waits(route, high)
    await gw.queued(2)
    holder.abandoned()
    await asyncio.wait_for(high_waits, 5)
    assert not low_waits.done()
    high_account.abandoned()
    await asyncio.wait_for(low_waits, 5)


async def test_a_rate_limited_request_is_refused_before_the_queue() -> None:
    gw = Gateway()
    route = gw.route(queue_per_member=1, members=1, rpm=60)
    await gw.admit(route)
    account = gw.accounting.open()
    with pytest.raises(RateLimitedError):
        await gw.admitter.admit(None, route, request(), account)
    assert gw.admitter.waiting() == 0
    assert gw.admitter._gates[MODEL].admitted == 1


async def test_the_accounts_close_settles_its_token_estimate() -> None:
    gw = Gateway()
    (limited,) = gw.keys_of(key("00000000000a", tpm=600))  # ten a second, a bucket of ten
    route = gw.route(queue_per_member=0)
    big = await gw.admit(route, limited, request(max_tokens=1000))
    account = gw.accounting.open()
    with pytest.raises(RateLimitedError):
        await gw.admitter.admit(limited, route, request(), account)
    # The big one ended without using anything: its estimate comes back to the bucket.
    big.abandoned()
    await gw.admit(route, limited)
