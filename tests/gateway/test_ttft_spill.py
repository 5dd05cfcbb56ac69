"""Spilling on a TTFT SLO: a forecast per member from its prefill speed and its queue; a pool
whose members would all miss the SLO hands the request to its fallback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.app import parts_of
from gateway.members import member_from_proto
from gateway.ttft import TtftForecast
from llmpool.v1 import gateway_pb2


def member(name: str, waiting: float = 0.0, url: str = "http://127.0.0.1:9") -> Any:
    return gateway_pb2.Member(id=name, url=url, healthy=True, waiting=waiting)


def test_forecast_follows_the_unloaded_speed_and_adds_the_queue() -> None:
    forecast = TtftForecast()
    m = member_from_proto(member("a", waiting=3), "m")
    assert forecast.predict_s(m, 100) is None  # nothing learned yet
    forecast.observe("a", 1000, 0.5)  # 2,000 tokens a second
    forecast.observe("a", 1000, 5.0)  # a queued one: slower, moves the speed only a little
    rate = 2000 + 0.05 * (200 - 2000)
    typical = 1000.0
    assert forecast.predict_s(m, 100) == pytest.approx((3 * typical + 100) / rate)
    forecast.observe("a", 1000, 0.25)  # faster: taken at once
    assert forecast.predict_s(m, 100) == pytest.approx((3 * typical + 100) / 4000)
    forecast.observe("a", 0, 1.0)  # no prompt, no lesson
    forecast.observe("a", 10, 0.0)
    idle = member_from_proto(member("a"), "m")
    assert forecast.predict_s(idle, 100) == pytest.approx(100 / 4000)


def test_over_slo_only_when_every_known_member_misses_it() -> None:
    forecast = TtftForecast()
    busy = member_from_proto(member("busy", waiting=20), "m")
    calm = member_from_proto(member("calm"), "m")
    unknown = member_from_proto(member("new"), "m")
    forecast.observe("busy", 1000, 1.0)
    forecast.observe("calm", 1000, 1.0)
    assert forecast.over_slo((busy,), 100, slo_ms=1000)
    assert not forecast.over_slo((busy, calm), 100, slo_ms=1000)
    assert not forecast.over_slo((unknown,), 100, slo_ms=1000)  # nothing known: not judged
    assert forecast.over_slo((busy, unknown), 100, slo_ms=1000)


async def test_a_pool_forecast_past_its_slo_spills_to_its_fallback(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    edge, cloud = await engines("edge-1"), await engines("cloud-1")

    def routes(waiting: float) -> list[Any]:
        local = [member("edge-1", waiting, edge.url)]
        return [
            kit.route("local", local, fallbacks=["cloud"], ttft_slo_ms=500),
            kit.route("cloud", [member("cloud-1", url=cloud.url)]),
        ]

    controller.full = kit.snapshot(1, routes(waiting=0))
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    chat = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    forecast = parts_of(gw.app).accounting.ttft
    # A stream with usage teaches the gateway the member's speed.
    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    resp = await http.post(gw.url + "/v1/chat/completions", json=stream)
    assert resp.status_code == 200
    edge_1 = parts_of(gw.app).table.get("local").members[0]  # type: ignore[union-attr]
    assert forecast.predict_s(edge_1, 10) is not None
    # Say earlier streams taught it this: edge-1 prefills 1,000 tokens a second.
    forecast._seen.clear()
    forecast.observe("edge-1", 1000, 1.0)
    resp = await http.post(gw.url + "/v1/chat/completions", json=chat)
    assert resp.headers["x-llmpool-pool"] == "local"
    controller.push(kit.snapshot(2, routes(waiting=8)))  # 8 x 1,000 tokens ahead: about 8 s
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 2, what="snapshot 2")
    resp = await http.post(gw.url + "/v1/chat/completions", json=chat)
    assert resp.headers["x-llmpool-pool"] == "cloud"
    page = (await http.get(gw.url + "/metrics")).text
    labels = {"spilled_from": "local", "model": "cloud", "reason": "ttft_slo"}
    assert kit.metric(page, "llmpool_gateway_spilled_requests_total", **labels) == 1
