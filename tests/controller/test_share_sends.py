"""GatewayService.ShareSends over a real grpc.aio server, through gateways' ControllerLinks: a
send one gateway tells reaches the other at once and is counted there, its end is too, and
what a gateway told is dropped once it is gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from controller.convert import pool_from_proto
from controller.send_relay import MAX_HASHES, SendRelay, invalid
from controller.server import ControllerServer
from gateway.controller_link import ControllerLink
from gateway.metrics import GatewayMetrics
from gateway.policies import PickContext, PrefixAware
from gateway.pool_sends import PoolSends
from gateway.routing import RoutingTable
from gateway.usage import UsageTracker
from llmpool.backoff import Backoff
from llmpool.clock import SystemClock
from llmpool.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from tests.support import eventually

from .fake_agent import FakeAgent
from .test_integration import TEMPLATE, ready, target

GROUP = "a long shared system prompt for one group of chats " * 200


class Gw:
    def __init__(self, controller: ControllerServer, gid: str) -> None:
        self.table = RoutingTable()
        self.usage = UsageTracker()
        self.metrics = GatewayMetrics()
        self.sends = PoolSends(self.table, self.usage, SystemClock(), self.metrics)
        self.link = ControllerLink(
            target=target(controller), credentials=None, gateway_id=gid, table=self.table,
            usage=self.usage, metrics=self.metrics, sends=self.sends,
            backoff_factory=lambda: Backoff(base=0.05, cap=0.2),
        )  # fmt: skip

    def send(self, text: str) -> tuple[str, int]:
        """A pick for pool p, told as the relay tells it."""
        got = self.table.get("p")
        assert got is not None and isinstance(got.policy, PrefixAware)
        ctx = PickContext(
            model="p",
            payload={"prompt": text, "stream": True},
            in_flight=self.usage.in_flight,
            reported_in_flight=self.usage.reported_in_flight,
        )
        chosen = got.policy.pick(got.candidates, ctx).id
        self.usage.started(chosen, "p")
        return chosen, self.sends.sent("p", got.policy, chosen, ctx.ticket, True)


@pytest.fixture()
async def gateways(controller: ControllerServer) -> AsyncIterator[list[Gw]]:
    """Two gateways linked to the controller, which routes pool p (prefix_aware) to two
    replicas."""
    agent = FakeAgent(target(controller))
    await agent.connect()
    pool = types_pb2.Pool(name="p", replicas=2, template=TEMPLATE, policy="prefix_aware")
    await controller.parts.admin.create_pool(pool_from_proto(pool))
    starts = await eventually(lambda: len(agent.of("start")) == 2 and agent.of("start"))
    replicas = [ready(message.start.replica_id) for message in starts]

    async def keep_reporting() -> None:
        while True:
            agent.report(replicas)
            await asyncio.sleep(0.2)

    reporting = asyncio.create_task(keep_reporting())
    made = [Gw(controller, gid) for gid in ("gw-a", "gw-b")]
    for gw in made:
        await gw.link.start()

    def routed(gw: Gw) -> bool:
        got = gw.table.get("p")
        return (
            got is not None
            and len(got.candidates) == 2
            and isinstance(got.policy, PrefixAware)
            and got.policy.shares
            and gw.sends.live
        )

    try:
        await eventually(lambda: all(routed(gw) for gw in made), what="p shared by two gateways")
        # Both streams joined the relay (a send told before the other joined reaches no one).
        await eventually(lambda: len(controller.parts.send_relay) == 2, what="two streams")
        yield made
    finally:
        for gw in made:
            await gw.link.close()
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        await agent.close()


async def test_a_send_told_by_one_gateway_is_counted_by_the_other_until_it_ends(
    gateways: list[Gw],
) -> None:
    a, b = gateways
    chosen, number = a.send(GROUP + "first question")
    assert number
    await eventually(lambda: b.usage.in_flight.get(chosen) == 1, what="B counts A's send")
    assert a.usage.in_flight == {chosen: 1}  # A's own, never echoed back to it
    # B's next turn of the group follows A's send, which B's index now holds.
    again, _ = b.send(GROUP + "second question")
    assert again == chosen
    a.sends.first(number, 0.04)
    a.sends.ended(number, True, 0.04, 0)
    await eventually(lambda: chosen not in b.usage.in_flight or b.usage.in_flight[chosen] == 1)
    assert b.metrics.shared_sends.labels("heard")._value.get() == 1
    # A goes away: what it told B is dropped (here, nothing left of A's), and B's own stays.
    _, n2 = a.send(GROUP + "third question")
    await eventually(lambda: b.metrics.shared_sends.labels("heard")._value.get() == 2)
    assert n2
    await a.link.close()
    await eventually(lambda: sum(b.usage.in_flight.values()) == 1, what="A's sends dropped")


async def test_a_batch_past_its_bounds_ends_the_stream_with_invalid_argument(
    controller: ControllerServer,
) -> None:
    async with grpc.aio.insecure_channel(target(controller)) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        event = gateway_pb2.SendEvent(hashes=list(range(MAX_HASHES + 1)))
        call = stub.ShareSends(iter([gateway_pb2.SendBatch(events=[event])]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hashes" in (caught.value.details() or "")


async def test_the_relay_passes_batches_to_the_others_and_tells_them_of_one_gone() -> None:
    relay = SendRelay()
    a, b, c = relay.join("gw"), relay.join("gw"), relay.join("other")
    assert a.name != b.name  # one name per stream, whatever the gateways call themselves
    batch = gateway_pb2.SendBatch(events=[gateway_pb2.SendEvent(id=1, model="p")])
    relay.pass_on(a, batch)
    assert a.queue.empty()
    for other in (b, c):
        got = await other.next()
        assert got is not None and got.gateway_id == a.name and got.events[0].id == 1
    relay.leave(a)
    for other in (b, c):
        gone = await other.next()
        assert gone is not None and gone.gateway_id == a.name and not gone.events
    assert len(relay) == 2


def test_invalid_batches_are_named() -> None:
    assert invalid(gateway_pb2.SendBatch(events=[gateway_pb2.SendEvent()])) == ""
    too_many = gateway_pb2.SendBatch(events=[gateway_pb2.SendEvent()] * 1025)
    assert "events" in invalid(too_many)
    slow = gateway_pb2.SendBatch(events=[gateway_pb2.SendEvent(ttft_s=float("nan"))])
    assert "ttft_s" in invalid(slow)
    named = gateway_pb2.SendBatch(events=[gateway_pb2.SendEvent(model="x" * 300)])
    assert "names" in invalid(named)


async def test_a_listener_that_falls_behind_is_ended() -> None:
    relay = SendRelay()
    sender, slow = relay.join("a"), relay.join("b")
    batch = gateway_pb2.SendBatch(events=[gateway_pb2.SendEvent(id=1)])
    for _ in range(slow.queue.maxsize + 1):
        relay.pass_on(sender, batch)
    assert slow.overflowed and await slow.next() is None
