"""The gateway against real fake upstreams and a real fake controller: relay, retries, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import orjson

from gateway.app import parts_of

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


async def start(kit: Any, gateway_factory: Any, controller: Any, routes: list[Any]) -> Any:
    controller.full = kit.snapshot(1, routes)
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    return gw


def dead_url(kit: Any) -> str:
    return f"http://127.0.0.1:{kit.free_port()}"


async def test_openai_sdk_happy_path(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any
) -> None:
    e1 = await engines("e1")
    e2 = await engines("e2")
    gw = await start(
        kit,
        gateway_factory,
        controller,
        [
            kit.route("m1", [kit.member("a", e1.url), kit.member("b", e2.url)]),
            kit.route("emb", [kit.member("c", e1.url, upstream_model="real-emb")]),
        ],
    )
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-test", max_retries=0)
    try:
        first = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )
        second = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )
        # Round robin over both members.
        assert {first.choices[0].message.content, second.choices[0].message.content} == {
            "hello from e1",
            "hello from e2",
        }
        assert first.usage is not None and first.usage.total_tokens == 10

        comp = await client.completions.create(model="m1", prompt="say")
        assert comp.choices[0].text == "done"

        emb = await client.embeddings.create(model="emb", input="x")
        assert emb.data[0].embedding == [0.1, 0.2, 0.3]
        # The member serves another name: only then is "model" rewritten.
        assert e1.requests[-1]["model"] == "real-emb"

        models = await client.models.list()
        assert sorted(m.id for m in models.data) == ["emb", "m1"]
        assert all(m.owned_by == "llm-pool" for m in models.data)

        stream = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "t0 t1 t2 "
    finally:
        await client.close()

    async with httpx.AsyncClient(trust_env=False) as http:
        page = (await http.get(gw.url + "/metrics")).text
    # 3 non-stream m1 requests on 2 members plus 1 stream = 4.
    total = sum(
        kit.metric(page, "llmpool_gateway_requests_total", model="m1", backend=b, status="200")
        for b in ("a", "b")
    )
    assert total == 4
    assert (
        kit.metric(page, "llmpool_gateway_tokens_total", model="m1", kind="prompt") == 7 + 7 + 2 + 5
    )
    assert (
        kit.metric(page, "llmpool_gateway_tokens_total", model="m1", kind="completion")
        == 3 + 3 + 1 + 3
    )
    assert kit.metric(page, "llmpool_gateway_time_to_first_token_seconds_count", model="m1") == 1
    assert kit.metric(page, "llmpool_gateway_in_flight_requests", model="m1") == 0
    assert kit.metric(page, "llmpool_gateway_snapshot_version") == 1


async def test_body_forwarded_byte_for_byte(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    gw = await start(kit, gateway_factory, controller, [kit.route("m1", [kit.member("a", e1.url)])])
    body = (
        b'{"model":"m1","messages":[{"role":"user","content":"hi"}],'
        b'"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],'
        b'"response_format":{"type":"json_object"},"x_unknown":1.50}'
    )
    resp = await http.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "authorization": "Bearer sk-secret"},
    )
    assert resp.status_code == 200
    assert resp.headers["x-llmpool-member"] == "a"
    got = e1.requests[-1]
    assert got["tools"][0]["function"]["name"] == "f"
    assert got["response_format"] == {"type": "json_object"} and got["x_unknown"] == 1.5
    # The client's key is for the gateway, never forwarded to a member.
    assert "authorization" not in e1.headers[-1]


async def test_retries_on_dead_member_then_succeeds(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    gw = await start(
        kit,
        gateway_factory,
        controller,
        [kit.route("m1", [kit.member("dead", dead_url(kit)), kit.member("live", e1.url)])],
    )
    for _ in range(4):
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"] == "hello from e1"
    page = (await http.get(gw.url + "/metrics")).text
    # Round robin keeps offering the dead member (the controller marks it unhealthy, not us).
    assert kit.metric(page, "llmpool_gateway_upstream_retries_total", model="m1") >= 2


async def test_retries_on_5xx_and_429_and_passes_4xx(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    bad = await engines("bad")
    busy = await engines("busy")
    good = await engines("good")
    bad.status, busy.status = 503, 429
    gw = await start(
        kit,
        gateway_factory,
        controller,
        [
            kit.route(
                "m1",
                [
                    kit.member("bad", bad.url),
                    kit.member("busy", busy.url),
                    kit.member("good", good.url),
                ],
            )
        ],
    )
    for _ in range(3):
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200 and resp.headers["x-llmpool-member"] == "good"
    # Both failing members were tried and answered in vain; the client never saw them.
    assert len(bad.requests) >= 1 and len(busy.requests) >= 1

    good.status = 400  # A client error is the client's: passed through, not retried.
    bad.status = busy.status = 200
    for _ in range(3):
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        if resp.headers["x-llmpool-member"] == "good":
            assert resp.status_code == 400
            assert resp.json()["error"]["message"] == "good says 400"
            break
    else:
        raise AssertionError("round robin never reached the member answering 400")


async def test_all_members_fail_gives_502(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    bad = await engines("bad")
    bad.status = 500
    members = [kit.member(f"d{i}", dead_url(kit)) for i in range(3)] + [kit.member("bad", bad.url)]
    gw = await start(kit, gateway_factory, controller, [kit.route("m1", members)])
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert err["type"] == "upstream_error" and "3 backend(s) failed" in err["message"]
    assert len(bad.requests) <= 1  # At most three tries in all.
    # Still serving after the failure.
    assert (await http.get(gw.url + "/healthz")).status_code == 200


async def test_stream_relayed_one_chunk_at_a_time(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    e1.chunks = 3
    e1.gates = [asyncio.Event() for _ in range(3)]
    gw = await start(kit, gateway_factory, controller, [kit.route("m1", [kit.member("a", e1.url)])])
    # Headers go out with the member's first chunk (until then another member could serve).
    e1.gates[0].set()
    async with http.stream(
        "POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.aiter_lines()
        for i in range(3):
            e1.gates[i].set()
            line = await asyncio.wait_for(anext(lines), 5)
            while not line:
                line = await asyncio.wait_for(anext(lines), 5)
            # Chunk i reached the client before the engine was allowed to send chunk i+1.
            assert orjson.loads(line[len("data: ") :])["choices"][0]["delta"]["content"] == f"t{i} "
        rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    # The gateway asked the engine for usage (it counts the tokens); the client, who did not
    # ask, gets no usage chunk.
    assert e1.requests[-1]["stream_options"] == {"include_usage": True}
    assert not any('"usage"' in line for line in rest)
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_tokens_total", model="m1", kind="completion") == 3


async def test_client_disconnect_cancels_upstream(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    e1.stream_forever = True
    gw = await start(kit, gateway_factory, controller, [kit.route("m1", [kit.member("a", e1.url)])])
    async with http.stream(
        "POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        async for line in resp.aiter_lines():
            if line:
                break
    # Leaving the block closed the client connection: the engine must see it too.
    await asyncio.wait_for(e1.disconnected.wait(), 10)
    parts = parts_of(gw.app)
    await kit.wait_until(lambda: not parts.usage.in_flight, what="in-flight back to zero")
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_in_flight_requests", model="m1") == 0


async def test_no_healthy_member_503_with_retry_after(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    gw = await start(
        kit,
        gateway_factory,
        controller,
        [
            kit.route(
                "m1",
                [
                    kit.member("sick", e1.url, healthy=False),
                    kit.member("leaving", e1.url, draining=True),
                ],
            )
        ],
    )
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "no_healthy_backend"
    assert e1.requests == []


async def test_without_a_snapshot_every_model_is_503_with_retry_after_never_404(
    gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    # The controller is unreachable: no routing has arrived, so no model is known or unknown.
    gw = await gateway_factory()
    chat = await http.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    assert chat.status_code == 503
    assert chat.headers["retry-after"] == "1"
    assert chat.json()["error"]["code"] == "not_ready"
    models = await http.get(f"{gw.url}/v1/models")
    assert models.status_code == 503 and "retry-after" in models.headers


async def test_with_a_snapshot_an_unknown_model_is_404(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    gw = await start(kit, gateway_factory, controller, [kit.route("m1", [kit.member("a", e1.url)])])
    resp = await http.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"


async def test_a_429_with_retry_after_cools_the_member_down_for_that_long(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    limited = await engines("limited")
    limited.status = 429
    limited.error_headers = {"Retry-After": "30"}
    healthy = await engines("healthy")
    gw = await start(
        kit,
        gateway_factory,
        controller,
        [
            kit.route("m1", [kit.member("a", limited.url), kit.member("b", healthy.url)]),
            kit.route("solo", [kit.member("c", limited.url, upstream_model="m1")]),
        ],
    )
    for _ in range(10):
        resp = await http.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200
    # Asked once, answered "wait 30 s", and left alone since.
    assert len(limited.requests) == 1 and len(healthy.requests) == 10
    metrics = (await http.get(f"{gw.url}/metrics")).text
    assert kit.metric(metrics, "llmpool_gateway_member_cooldowns_total", model="m1") == 1

    # A model whose only member is cooling down answers 429 with when to come back.
    first = await http.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "solo"})
    assert first.status_code == 429 and 25 <= int(first.headers["retry-after"]) <= 30
    again = await http.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "solo"})
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limited"
    assert len(limited.requests) == 2
