"""GatewayService.AskHome over a real grpc.aio server, asked through gateways' ControllerLinks:
every gateway that asks for a long new prompt prefix's home gets the same member, and the
snapshots then carry it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from controller.convert import pool_from_proto
from controller.server import ControllerServer
from gateway.controller_link import ControllerLink
from gateway.home_asks import HomeAsks
from gateway.metrics import GatewayMetrics
from gateway.routing import RoutingTable
from gateway.usage import UsageTracker
from llmpool.backoff import Backoff
from llmpool.clock import SystemClock
from llmpool.v1 import types_pb2
from tests.support import eventually

from .fake_agent import FakeAgent
from .test_integration import TEMPLATE, ready, target

CACHE = 16_384


@pytest.fixture()
async def links(controller: ControllerServer) -> AsyncIterator[list[ControllerLink]]:
    """Two gateways' links to the controller, which routes pool p (prefix_aware) to two
    replicas whose engines report a 16k-token cache."""
    agent = FakeAgent(target(controller))
    await agent.connect()
    pool = types_pb2.Pool(name="p", replicas=2, template=TEMPLATE, policy="prefix_aware")
    await controller.parts.admin.create_pool(pool_from_proto(pool))
    starts = await eventually(lambda: len(agent.of("start")) == 2 and agent.of("start"))
    replicas = []
    for message in starts:
        status = ready(message.start.replica_id)
        status.cache_tokens = CACHE
        replicas.append(status)

    async def keep_reporting() -> None:
        # Within the test controller's one-second lease: the replicas stay routed.
        while True:
            agent.report(replicas)
            await asyncio.sleep(0.2)

    reporting = asyncio.create_task(keep_reporting())
    made = []
    for gid in ("gw-a", "gw-b"):
        link = ControllerLink(
            target=target(controller), credentials=None, gateway_id=gid, table=RoutingTable(),
            usage=UsageTracker(), metrics=GatewayMetrics(),
            backoff_factory=lambda: Backoff(base=0.05, cap=0.2),
        )  # fmt: skip
        await link.start()
        made.append(link)

    def routed() -> bool:
        route = controller.parts.publisher.routes.get("p")
        return (
            route is not None
            and route.gateways == 2
            and sum(m.healthy and m.cache_tokens == CACHE for m in route.members) == 2
        )

    try:
        await eventually(routed, what="p routed to two reporting replicas, two gateways")
        await eventually(lambda: all(link.ready() for link in made), what="links up")
        yield made
    finally:
        for link in made:
            await link.close()
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        await agent.close()


async def test_every_gateway_asking_gets_the_same_home_and_snapshots_carry_it(
    links: list[ControllerLink],
) -> None:
    a, b = links
    first = await a.ask_home("p", 7, 6000, 2.0)
    assert first.startswith("p-")
    assert await b.ask_home("p", 7, 6000, 2.0) == first
    # The next new prefix goes to the member that is less full with it: the other one.
    second = await b.ask_home("p", 8, 6000, 2.0)
    assert second.startswith("p-") and second != first

    def homes(link: ControllerLink) -> dict[int, str]:
        route = link._table.get("p")
        if route is None:
            return {}
        return {p: m.id for m in route.members for p in m.home_prefixes}

    # Rebuilds carry them to every gateway (each second at least).
    for link in links:
        await eventually(lambda link=link: homes(link) == {7: first, 8: second}, what="homes")


async def test_an_unknown_model_is_not_found_and_a_link_asks_through_home_asks(
    links: list[ControllerLink],
) -> None:
    a, _ = links
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await a.ask_home("nope", 7, 6000, 2.0)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    metrics = GatewayMetrics()
    asks = HomeAsks(a.ask_home, a.ready, SystemClock(), metrics, timeout_s=2.0)
    assert await asks.ask("nope", 7, 6000) == ""
    home = await asks.ask("p", 9, 6000)
    assert home.startswith("p-")
    assert metrics.home_asks.labels("none")._value.get() == 1
    assert metrics.home_asks.labels("homed")._value.get() == 1
    assert metrics.home_asks.labels("failed")._value.get() == 0
