"""Sends told between gateways as they happen (gateway/pool_sends.py): each gateway counts the
others' requests as its own, in its prefix index, its queues and its in-flight counts."""

from __future__ import annotations

from gateway.metrics import GatewayMetrics
from gateway.policies import PickContext, PrefixAware
from gateway.policies.ticket import Ticket
from gateway.pool_sends import MAX_OUT, PoolSends
from gateway.routing import RoutingTable
from gateway.usage import UsageTracker
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2

from .conftest import member, route, snapshot

GROUP = "a long shared system prompt for one group of chats " * 200
MEMBERS = ["m0", "m1", "m2", "m3"]


class Gateway:
    """One gateway's table, usage counts and PoolSends, routing pool p with prefix_aware."""

    def __init__(self, gateways: int = 2) -> None:
        self.table = RoutingTable()
        members = [member(mid, f"http://127.0.0.1:{9000 + i}") for i, mid in enumerate(MEMBERS)]
        snap = snapshot(1, [route("p", members, "prefix_aware", gateways=gateways)])
        self.table.apply(snap)
        self.usage = UsageTracker()
        self.metrics = GatewayMetrics()
        self.sends = PoolSends(self.table, self.usage, FakeClock(), self.metrics)
        self.sends.live = True

    @property
    def policy(self) -> PrefixAware:
        got = self.table.get("p")
        assert got is not None and isinstance(got.policy, PrefixAware)
        return got.policy

    def pick(self, text: str) -> tuple[str, Ticket]:
        got = self.table.get("p")
        assert got is not None
        ctx = PickContext(
            model="p",
            payload={"prompt": text, "stream": True},
            in_flight=self.usage.in_flight,
            reported_in_flight=self.usage.reported_in_flight,
        )
        chosen = got.policy.pick(got.candidates, ctx).id
        assert isinstance(ctx.ticket, Ticket)
        return chosen, ctx.ticket

    def count(self, direction: str) -> float:
        return self.metrics.shared_sends.labels(direction)._value.get()


async def told(sender: Gateway, *receivers: Gateway, name: str = "gw-a#1") -> None:
    """What sender gathered, as the controller passes it on to receivers."""
    batch = await sender.sends.next_batch()
    batch.gateway_id = name
    for receiver in receivers:
        receiver.sends.told(batch)


async def test_another_gateways_send_is_counted_here_and_its_next_turn_follows_it() -> None:
    a, b = Gateway(), Gateway()
    chosen, ticket = a.pick(GROUP + "first question")
    number = a.sends.sent("p", a.policy, chosen, ticket, True)
    assert number and a.count("told") == 1
    await told(a, b)
    assert b.count("heard") == 1
    # In flight there as far as B's policies can tell; not in B's own usage report.
    assert b.usage.in_flight == {chosen: 1}
    report = b.usage.drain_report("gw-b")
    assert [m.member_id for m in report.members] == []
    # B never sent the group anywhere, yet its index holds it where A sent it: the next turn,
    # sent to B, goes there.
    assert b.policy.index.match(GROUP.encode()).depth.keys() == {chosen}
    again, _ = b.pick(GROUP + "second question")
    assert again == chosen
    # A's first byte, then its end: judged at B (the sender's times), and no longer in flight.
    a.sends.first(number, 0.05)
    a.sends.ended(number, True, 0.05, 0)
    await told(a, b)
    assert chosen not in b.usage.in_flight


async def test_a_seen_ticket_is_judged_but_never_reported_as_this_gateways_verdict() -> None:
    a, b = Gateway(), Gateway()
    chosen, ticket = a.pick(GROUP + "q")
    number = a.sends.sent("p", a.policy, chosen, ticket, True)
    await told(a, b)
    a.sends.first(number, 2.0)
    a.sends.ended(number, True, 2.0, 0)
    await told(a, b)
    assert b.policy.sizer.drain_verdicts() == {}


async def test_nothing_is_told_by_a_gateway_alone_while_down_or_past_the_bound() -> None:
    alone = Gateway(gateways=1)
    chosen, ticket = alone.pick(GROUP)
    assert alone.sends.sent("p", alone.policy, chosen, ticket, True) == 0
    a = Gateway()
    chosen, ticket = a.pick(GROUP)
    a.sends.live = False
    assert a.sends.sent("p", a.policy, chosen, ticket, True) == 0
    a.sends.live = True
    numbers = [a.sends.sent("p", a.policy, chosen, ticket, True) for _ in range(MAX_OUT + 5)]
    assert numbers.count(0) == 5
    # Ends still go out past the bound: the others' counts depend on them.
    a.sends.ended(numbers[0], False, None, 0)
    first = await a.sends.next_batch()
    assert len(first.events) == 1024 and first.events[0].kind == gateway_pb2.SendEvent.SENT


async def test_a_sender_gone_or_a_stream_reset_drops_what_was_told() -> None:
    a, b = Gateway(), Gateway()
    for i in range(3):
        chosen, ticket = a.pick(GROUP + f"question {i}")
        a.sends.sent("p", a.policy, chosen, ticket, True)
    await told(a, b)
    assert sum(b.usage.in_flight.values()) == 3
    b.sends.told(gateway_pb2.SendBatch(gateway_id="gw-a#1"))  # the controller: gw-a left
    assert sum(b.usage.in_flight.values()) == 0
    chosen, ticket = a.pick(GROUP + "again")
    a.sends.sent("p", a.policy, chosen, ticket, True)
    await told(a, b, name="gw-a#2")
    assert sum(b.usage.in_flight.values()) == 1
    b.sends.reset()
    assert sum(b.usage.in_flight.values()) == 0 and not b.sends.live


async def test_sends_for_pools_or_members_not_routed_here_are_dropped_not_counted() -> None:
    b = Gateway()
    event = gateway_pb2.SendEvent(
        kind=gateway_pb2.SendEvent.SENT, id=1, model="p", member_id="elsewhere", hashes=[1, 2]
    )
    b.sends.told(gateway_pb2.SendBatch(gateway_id="x#1", events=[event]))
    event.model, event.member_id, event.id = "nope", "m0", 2
    b.sends.told(gateway_pb2.SendBatch(gateway_id="x#1", events=[event]))
    assert b.count("dropped") == 2 and b.count("heard") == 0
    assert dict(b.usage.in_flight) == {}
    # An end for a request never counted changes nothing.
    end = gateway_pb2.SendEvent(kind=gateway_pb2.SendEvent.ENDED, id=1, ok=True)
    b.sends.told(gateway_pb2.SendBatch(gateway_id="x#1", events=[end]))
    assert dict(b.usage.in_flight) == {}


def test_usage_reports_name_only_this_gateways_requests_and_policies_read_all() -> None:
    usage = UsageTracker()
    usage.started("m0", "p")
    usage.seen_started("m0")
    usage.seen_started("m1")
    assert dict(usage.in_flight) == {"m0": 2, "m1": 1}
    report = usage.drain_report("gw")
    assert [(m.member_id, m.in_flight) for m in report.members] == [("m0", 1)]
    # What the policies count already, as the controller's aggregate will hold it.
    assert dict(usage.reported_in_flight) == {"m0": 2, "m1": 1}
    usage.seen_finished("m1")
    usage.finished("m0", "p", ok=True, latency_s=0.1)
    assert dict(usage.in_flight) == {"m0": 1}
