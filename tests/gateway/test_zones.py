"""Zones: a gateway with --zone sends a pool that prefers it to members in its zone first, and
across zones when those are saturated or fail."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.app import parts_of
from llmpool.v1 import gateway_pb2

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def member(name: str, url: str, zone: str, waiting: float = 0.0) -> gateway_pb2.Member:
    return gateway_pb2.Member(id=name, url=url, healthy=True, zone=zone, waiting=waiting)


async def served_by(gw: Any, http: httpx.AsyncClient, n: int) -> list[str]:
    members = []
    for _ in range(n):
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200
        members.append(resp.headers["x-llmpool-member"])
    return members


async def test_members_in_the_gateways_zone_go_first(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    edge, cloud = await engines("edge-1"), await engines("cloud-1")

    def route(edge_waiting: float = 0.0, prefer: bool = True) -> Any:
        members = [
            member("edge-1", edge.url, "edge", edge_waiting),
            member("cloud-1", cloud.url, "cloud"),
        ]
        return kit.route("m1", members, prefer_zone=prefer, spill_waiting=4)

    controller.full = kit.snapshot(1, [route()])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}", zone="edge")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    assert set(await served_by(gw, http, 6)) == {"edge-1"}

    # Saturated: the request may cross zones, and the pool's policy picks among all members.
    controller.push(kit.snapshot(2, [route(edge_waiting=9)]))
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 2, what="snapshot 2")
    assert "cloud-1" in await served_by(gw, http, 4)

    controller.push(kit.snapshot(3, [route(prefer=False)]))  # no preference: both
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 3, what="snapshot 3")
    assert set(await served_by(gw, http, 6)) == {"edge-1", "cloud-1"}

    controller.push(kit.snapshot(4, [route()]))
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 4, what="snapshot 4")
    edge.status = 500  # the zone's member fails: the retry crosses zones
    assert set(await served_by(gw, http, 3)) == {"cloud-1"}


async def test_a_gateway_without_a_zone_has_no_preference(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    edge, cloud = await engines("edge-1"), await engines("cloud-1")
    members = [member("edge-1", edge.url, "edge"), member("cloud-1", cloud.url, "cloud")]
    controller.full = kit.snapshot(1, [kit.route("m1", members, prefer_zone=True)])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    assert set(await served_by(gw, http, 6)) == {"edge-1", "cloud-1"}
