"""Rules and splits through a live gateway: upstream body, metrics, 503 and live updates."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.app import parts_of
from llmpool.v1 import gateway_pb2, types_pb2


def routes(kit: Any, big: Any, a: Any, b: Any, **front: Any) -> list[gateway_pb2.ModelRoute]:
    front.setdefault("rules", [types_pb2.RouteRule(target="big", min_prompt_chars=50)])
    front.setdefault(
        "splits",
        [
            types_pb2.SplitArm(target="arm-a", weight=1),
            types_pb2.SplitArm(target="arm-b", weight=1),
        ],
    )
    return [
        gateway_pb2.ModelRoute(model="front", policy="round_robin", **front),
        gateway_pb2.ModelRoute(
            model="only-rules",
            policy="round_robin",
            rules=[types_pb2.RouteRule(target="big", header="x-big")],
        ),
        kit.route("big", [kit.member("big-0", big.url)]),
        kit.route("arm-a", [kit.member("a-0", a.url)]),
        kit.route("arm-b", [kit.member("b-0", b.url, upstream_model="real-b")]),
    ]


async def start(kit: Any, gateway_factory: Any, controller: Any, table: list[Any]) -> Any:
    controller.full = kit.snapshot(1, table)
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    return gw


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "front", "messages": [{"role": "user", "content": text}], **extra}


async def test_rules_and_split_rewrite_the_model_and_count_per_arm(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    big, a, b = await engines("big"), await engines("a"), await engines("b")
    gw = await start(kit, gateway_factory, controller, routes(kit, big, a, b))

    resp = await http.post(gw.url + "/v1/chat/completions", json=chat("x" * 60, user="u1"))
    assert resp.status_code == 200 and resp.json()["model"] == "big"
    assert resp.headers["x-llmpool-member"] == "big-0"
    # The rest of the body is sent as the client wrote it.
    assert big.requests[-1]["model"] == "big" and big.requests[-1]["user"] == "u1"

    arms: dict[str, set[str]] = {}
    for i in range(16):
        for _ in range(3):
            r = await http.post(gw.url + "/v1/chat/completions", json=chat(user=f"user-{i}"))
            assert r.status_code == 200
            arms.setdefault(f"user-{i}", set()).add(r.headers["x-llmpool-member"])
    assert all(len(seen) == 1 for seen in arms.values()), arms
    assert set().union(*arms.values()) == {"a-0", "b-0"}
    # A member that serves another name gets that name; one that does not, the arm's.
    assert {req["model"] for req in a.requests} == {"arm-a"}
    assert {req["model"] for req in b.requests} == {"real-b"}

    stream = await http.post(gw.url + "/v1/chat/completions", json=chat("y" * 60, stream=True))
    assert stream.status_code == 200 and b"[DONE]" in stream.content
    assert big.requests[-1]["stream"] is True

    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_rule_matches_total", model="front", target="big") == 2
    split_a = kit.metric(page, "llmpool_gateway_split_requests_total", model="front", arm="arm-a")
    split_b = kit.metric(page, "llmpool_gateway_split_requests_total", model="front", arm="arm-b")
    assert split_a == len(a.requests) and split_b == len(b.requests) and split_a + split_b == 48
    served_a = kit.metric(
        page, "llmpool_gateway_requests_total", model="arm-a", backend="a-0", status="200"
    )
    assert served_a == len(a.requests)
    assert (
        kit.metric(
            page, "llmpool_gateway_requests_total", model="front", backend="none", status="200"
        )
        == 0
    )


async def test_unmatched_rules_only_pool_is_listed_and_answers_503(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    big, a, b = await engines("big"), await engines("a"), await engines("b")
    gw = await start(kit, gateway_factory, controller, routes(kit, big, a, b))
    models = (await http.get(gw.url + "/v1/models")).json()["data"]
    assert "only-rules" in {m["id"] for m in models}

    body = {"model": "only-rules", "messages": [{"role": "user", "content": "hi"}]}
    resp = await http.post(gw.url + "/v1/chat/completions", json=body)
    assert resp.status_code == 503 and resp.headers["retry-after"]
    error = resp.json()["error"]
    assert error["code"] == "no_healthy_backend"
    assert "No rule or split of model 'only-rules'" in error["message"]
    ok = await http.post(gw.url + "/v1/chat/completions", json=body, headers={"X-Big": "1"})
    assert ok.status_code == 200 and ok.json()["model"] == "big"

    # A rule's target with no healthy member: 503 naming both pools.
    down = routes(kit, big, a, b)
    down[2] = kit.route("big", [kit.member("big-0", big.url, healthy=False)])
    controller.push(kit.snapshot(2, down))
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 2, what="second snapshot")
    resp = await http.post(gw.url + "/v1/chat/completions", json=body, headers={"X-Big": "1"})
    assert resp.status_code == 503
    assert "model 'big' (routed from 'only-rules')" in resp.json()["error"]["message"]


async def test_a_snapshot_changes_the_split_without_a_restart(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    big, a, b = await engines("big"), await engines("a"), await engines("b")
    gw = await start(kit, gateway_factory, controller, routes(kit, big, a, b))
    controller.push(
        kit.snapshot(
            2,
            routes(kit, big, a, b, splits=[types_pb2.SplitArm(target="arm-b", weight=1)]),
        )
    )
    await kit.wait_until(lambda: parts_of(gw.app).table.version == 2, what="second snapshot")
    for i in range(10):
        r = await http.post(gw.url + "/v1/chat/completions", json=chat(user=f"user-{i}"))
        assert r.headers["x-llmpool-member"] == "b-0"
