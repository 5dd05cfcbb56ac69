"""Requests for a pool scaled to zero wait at the gateway (bounded, timed) for its first member,
and the gateway tells the controller how many wait."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from gateway.app import parts_of


def _held(gw: Any) -> int:
    holds = parts_of(gw.app).relay._holds
    assert holds is not None
    return holds.total()


CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


async def test_a_held_request_is_served_by_the_first_member_to_arrive(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    engine = await engines("first")
    controller.full = kit.snapshot(1, [kit.route("m1", [], hold_s=30.0)])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    asks = [
        asyncio.create_task(
            client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
        )
        for _ in range(3)
    ]

    def held() -> Any:
        last = controller.reports[-1] if controller.reports else None
        return last is not None and dict(last.held) == {"m1": 3}

    await kit.wait_until(held, what="the held requests reported to the controller")
    assert not any(t.done() for t in asks)
    controller.push(kit.snapshot(2, [kit.route("m1", [kit.member("first", engine.url)])]))
    answers = await asyncio.wait_for(asyncio.gather(*asks), 10)
    assert [a.choices[0].message.content for a in answers] == [
        answers[0].choices[0].message.content
    ] * 3
    assert len(engine.requests) == 3
    await kit.wait_until(
        lambda: controller.reports and not controller.reports[-1].held, what="held cleared"
    )
    page = (await http.get(gw.url + "/metrics")).text
    assert (
        kit.metric(page, "llmpool_gateway_held_requests_total", model="m1", outcome="served") == 3
    )
    assert kit.metric(page, "llmpool_gateway_requests_held") == 0


async def test_a_hold_ends_with_503_and_retry_after_when_no_member_comes(
    kit: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    controller.full = kit.snapshot(1, [kit.route("m1", [], hold_s=0.3)])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5"
    error = resp.json()["error"]
    assert error["code"] == "no_healthy_backend" and "0.3 s" in error["message"]
    page = (await http.get(gw.url + "/metrics")).text
    assert (
        kit.metric(page, "llmpool_gateway_held_requests_total", model="m1", outcome="timeout") == 1
    )


async def test_holds_are_bounded_and_a_pool_without_hold_answers_at_once(
    kit: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    controller.full = kit.snapshot(1, [kit.route("m1", [], hold_s=30.0), kit.route("m2", [])])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}", max_held_requests=2)
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    waiting = [
        asyncio.create_task(http.post(gw.url + "/v1/chat/completions", json=CHAT)) for _ in range(2)
    ]
    await kit.wait_until(lambda: _held(gw) == 2, what="two held")
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 503 and "already wait" in resp.json()["error"]["message"]
    plain = await http.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "m2"})
    assert plain.status_code == 503 and plain.headers["retry-after"] == "1"
    # A client that gives up frees its place.
    for task in waiting:
        task.cancel()
    await kit.wait_until(lambda: _held(gw) == 0, what="released")


@pytest.mark.parametrize("removed", [True, False])
async def test_a_held_request_learns_when_its_model_goes(
    removed: bool, kit: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    controller.full = kit.snapshot(1, [kit.route("m1", [], hold_s=30.0)])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    task = asyncio.create_task(http.post(gw.url + "/v1/chat/completions", json=CHAT))
    await kit.wait_until(lambda: _held(gw) == 1, what="held")
    if removed:
        controller.push(kit.snapshot(2, [], full=False, removed=["m1"]))
        resp = await asyncio.wait_for(task, 10)
        assert resp.status_code == 404
    else:
        # A snapshot that still has no member keeps it waiting.
        controller.push(kit.snapshot(2, [kit.route("m1", [], hold_s=30.0)]))
        await kit.wait_until(lambda: parts_of(gw.app).table.version == 2, what="applied")
        assert not task.done()
        task.cancel()
