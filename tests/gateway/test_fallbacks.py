"""Fallback pools: a pool that cannot serve (no member, every member failed before the first
byte) or is saturated hands the request to the next; the answer names the pool that served."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.app import parts_of
from llmpool.v1 import gateway_pb2

CHAT = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def member(name: str, url: str, waiting: float = 0.0) -> gateway_pb2.Member:
    return gateway_pb2.Member(id=name, url=url, healthy=True, waiting=waiting)


async def start(kit: Any, controller: Any, gateway_factory: Any, routes: list[Any]) -> Any:
    controller.full = kit.snapshot(1, routes)
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    return gw


def spilled(page: str, kit: Any, reason: str) -> float:
    labels = {"spilled_from": "local", "model": "cloud", "reason": reason}
    return float(kit.metric(page, "llmpool_gateway_spilled_requests_total", **labels))


@pytest.mark.parametrize("stream", [False, True])
async def test_no_member_and_failing_members_spill_to_the_next_pool(
    stream: bool, kit: Any, engines: Any, controller: Any, gateway_factory: Any,
    http: httpx.AsyncClient,
) -> None:  # fmt: skip
    bad, cloud = await engines("bad"), await engines("cloud-1")
    bad.status = 500
    local = kit.route("local", [], fallbacks=["cloud"])
    gw = await start(
        kit,
        controller,
        gateway_factory,
        [local, kit.route("cloud", [member("cloud-1", cloud.url)])],
    )
    resp = await http.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": stream})
    assert resp.status_code == 200 and resp.headers["x-llmpool-pool"] == "cloud"
    assert cloud.requests[-1]["model"] == "cloud"
    controller.push(kit.snapshot(2, [
        kit.route("local", [member("bad", bad.url)], fallbacks=["cloud"]),
        kit.route("cloud", [member("cloud-1", cloud.url)]),
    ]))  # fmt: skip
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 2, what="snapshot 2")
    resp = await http.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": stream})
    assert resp.status_code == 200 and resp.headers["x-llmpool-pool"] == "cloud"
    assert len(bad.requests) >= 1
    page = (await http.get(gw.url + "/metrics")).text
    assert spilled(page, kit, "no_member") == 1 and spilled(page, kit, "failed") == 1
    # The request moved from pool to pool; nothing stays in flight on either.
    for pool in ("local", "cloud"):
        assert f'llmpool_gateway_in_flight_requests{{model="{pool}"}} 0.0' in page


async def test_a_saturated_pool_spills_and_a_calm_one_serves(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    edge, cloud = await engines("edge-1"), await engines("cloud-1")

    def local(waiting: float) -> Any:
        edge_1 = member("edge-1", edge.url, waiting=waiting)
        return kit.route("local", [edge_1], fallbacks=["cloud"], spill_waiting=4)

    routes = [local(1), kit.route("cloud", [member("cloud-1", cloud.url, waiting=50)])]
    gw = await start(kit, controller, gateway_factory, routes)
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert (
        resp.headers["x-llmpool-pool"] == "local" and resp.headers["x-llmpool-member"] == "edge-1"
    )
    controller.push(kit.snapshot(2, [local(6), routes[1]]))
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 2, what="snapshot 2")
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
    # The last pool serves however busy it is: there is nowhere further to go.
    assert resp.headers["x-llmpool-pool"] == "cloud"
    page = (await http.get(gw.url + "/metrics")).text
    assert spilled(page, kit, "saturated") == 1


async def test_when_every_pool_fails_the_client_gets_the_last_error(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    bad = await engines("bad")
    bad.status = 500
    routes = [
        kit.route("local", [], fallbacks=["cloud"]),
        kit.route("cloud", [member("bad", bad.url)]),
    ]
    gw = await start(kit, controller, gateway_factory, routes)
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502 and "cloud" in resp.json()["error"]["message"]
