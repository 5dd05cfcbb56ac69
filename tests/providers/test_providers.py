"""Remote members of each kind through the gateway, with the official SDKs: chat streamed and
not, a tool-call round trip, embeddings, errors as the SDK's exception classes, credentials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import parts_of
from llmpool.v1 import gateway_pb2

KEY = "sk-test-0123456789abcdef"
CLIENT_KEY = "client-secret-never-forwarded"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def remote(member_id: str, url: str, kind: str, **fields: Any) -> gateway_pb2.Member:
    return gateway_pb2.Member(
        id=member_id, url=url, healthy=True, kind=kind, credential="prod", **fields
    )


async def gateway_for(
    kit: Any, controller: Any, gateway_factory: Any, members: list[gateway_pb2.Member], **kw: Any
) -> Any:
    controller.full = kit.snapshot(1, [kit.route("m1", members)])
    environ = kw.pop("environ", {"LLMPOOL_CREDENTIAL_PROD": KEY})
    gw = await gateway_factory(f"127.0.0.1:{controller.port}", environ=environ, **kw)
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    return gw


def client(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)


CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("kind", "fields", "path"),
    [
        ("openai", {}, "/v1/chat/completions"),
        ("azure", {"api_version": "2024-10-21", "upstream_model": "gpt4o-deploy"},
         "/openai/deployments/gpt4o-deploy/chat/completions?api-version=2024-10-21"),
        ("azure", {}, "/openai/v1/chat/completions"),
    ],
)  # fmt: skip
async def test_openai_shaped_kinds_get_the_key_and_their_urls(
    kind: str, fields: dict[str, str], path: str, kit: Any, controller: Any,
    gateway_factory: Any, providers: Any,
) -> None:  # fmt: skip
    fake = await providers(kind, KEY)
    gw = await gateway_for(
        kit, controller, gateway_factory, [remote("r", fake.url, kind, **fields)]
    )
    answer = await client(gw).chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Hello from the fake OpenAI API."
    chunks = [c async for c in await client(gw).chat.completions.create(
        model="m1", messages=CHAT, stream=True)]  # type: ignore[arg-type]  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from the fake stream."
    )
    assert fake.paths[0] == path
    assert all(CLIENT_KEY not in json.dumps(h) for h in fake.headers)
    if kind == "openai":
        emb = await client(gw).embeddings.create(model="m1", input="hello")
        assert len(emb.data[0].embedding) == 3


async def test_anthropic_chat_streamed_and_not(
    kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    fake = await providers("anthropic", KEY)
    member = remote("claude", fake.url, "anthropic", upstream_model="claude-sonnet-4-5")
    gw = await gateway_for(kit, controller, gateway_factory, [member])
    answer = await client(gw).chat.completions.create(
        model="m1",
        messages=[{"role": "system", "content": "Be brief."}, *CHAT],  # type: ignore[list-item]
        temperature=0.2,
        stop=["END"],
    )
    assert answer.choices[0].message.content == "Hello from the fake Anthropic API."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "m1"
    assert answer.usage is not None and answer.usage.prompt_tokens == 25  # 21 + 4 cache reads
    assert answer.usage.completion_tokens == 9
    sent = fake.requests[0]
    assert sent["system"] == "Be brief." and sent["model"] == "claude-sonnet-4-5"
    assert sent["max_tokens"] == 4096 and sent["stop_sequences"] == ["END"]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]

    stream = await client(gw).chat.completions.create(
        model="m1",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake stream."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert all(CLIENT_KEY not in json.dumps(h) for h in fake.headers)


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_tool_call_round_trip(
    stream: bool, kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    fake = await providers("anthropic", KEY)
    gw = await gateway_for(kit, controller, gateway_factory, [remote("c", fake.url, "anthropic")])
    ask = [{"role": "user", "content": "Weather in Lisbon?"}]
    if stream:
        chunks = [c async for c in await client(gw).chat.completions.create(
            model="m1", messages=ask, tools=[WEATHER], stream=True)]  # type: ignore[arg-type]  # fmt: skip
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        call_id, name = calls[0].id, calls[0].function.name  # type: ignore[union-attr]
        arguments = "".join(tc.function.arguments or "" for tc in calls)  # type: ignore[union-attr]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        first = await client(gw).chat.completions.create(
            model="m1",
            messages=ask,
            tools=[WEATHER],
            tool_choice="required",  # type: ignore[arg-type]
        )
        assert first.choices[0].finish_reason == "tool_calls"
        [call] = first.choices[0].message.tool_calls or []
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        assert fake.requests[0]["tool_choice"] == {"type": "any"}
    assert name == "get_weather" and json.loads(arguments) == {"city": "Lisbon", "unit": "celsius"}
    assert fake.requests[0]["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    follow = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]},
        {"role": "tool", "tool_call_id": call_id, "content": "21 C and sunny"},
    ]  # fmt: skip
    final = await client(gw).chat.completions.create(model="m1", messages=follow, tools=[WEATHER])  # type: ignore[arg-type]
    assert final.choices[0].message.content == "Hello from the fake Anthropic API."
    sent = fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][0] == {
        "type": "tool_use", "id": call_id, "name": "get_weather",
        "input": {"city": "Lisbon", "unit": "celsius"},
    }  # fmt: skip
    assert sent[2]["content"][0]["type"] == "tool_result"
    assert sent[2]["content"][0]["tool_use_id"] == call_id


@pytest.mark.parametrize(
    ("status", "fixture", "headers", "error"),
    [
        (400, "anthropic_error_invalid.json", {}, openai.BadRequestError),
        (429, "anthropic_error_rate_limit.json", {"retry-after": "7"}, openai.RateLimitError),
        (529, "anthropic_error_overloaded.json", {}, openai.APIStatusError),
    ],
)
async def test_anthropic_errors_surface_as_the_sdks_classes(
    status: int, fixture: str, headers: dict[str, str], error: type[Exception],
    kit: Any, controller: Any, gateway_factory: Any, providers: Any,
) -> None:  # fmt: skip
    fake = await providers("anthropic", KEY)
    fake.fail = (status, fixture, headers)
    gw = await gateway_for(kit, controller, gateway_factory, [remote("c", fake.url, "anthropic")])
    with pytest.raises(error) as raised:
        await client(gw).chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
    if status == 400:
        assert raised.value.status_code == 400  # type: ignore[attr-defined]
        assert "alternate" in str(raised.value)
    if status == 529:
        assert raised.value.status_code >= 500  # type: ignore[attr-defined]


async def test_fields_anthropic_cannot_take_are_refused_by_name(
    kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    fake = await providers("anthropic", KEY)
    gw = await gateway_for(kit, controller, gateway_factory, [remote("c", fake.url, "anthropic")])
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        await client(gw).chat.completions.create(model="m1", messages=CHAT, logprobs=True)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="chat completions only"):
        await client(gw).embeddings.create(model="m1", input="x")
    assert fake.requests == []


async def test_a_member_whose_credential_is_missing_is_left_out_until_it_appears(
    tmp_path: Path, kit: Any, controller: Any, gateway_factory: Any, providers: Any,
    http: httpx.AsyncClient,
) -> None:  # fmt: skip
    fake = await providers("openai", KEY)
    gw = await gateway_for(
        kit, controller, gateway_factory, [remote("r", fake.url, "openai")],
        environ={}, secrets_dir=str(tmp_path),
    )  # fmt: skip
    resp = await http.post(gw.url + "/v1/chat/completions", json={"model": "m1", "messages": CHAT})
    assert resp.status_code == 503
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_missing_credentials") == 1
    assert fake.requests == []
    (tmp_path / "prod").write_text(KEY + "\n")

    async def served() -> bool:
        r = await http.post(gw.url + "/v1/chat/completions", json={"model": "m1", "messages": CHAT})
        return r.status_code == 200

    await kit.wait_until(served, what="member back once its key file appears", within=10)
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_missing_credentials") == 0
    assert KEY not in page


async def test_a_key_the_provider_refuses_is_never_shown_to_the_client(
    kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    wrong = await providers("openai", "sk-some-other-key")
    good = await providers("openai", KEY)
    members = [remote("wrong", wrong.url, "openai"), remote("good", good.url, "openai")]
    gw = await gateway_for(kit, controller, gateway_factory, members)
    for _ in range(4):
        answer = await client(gw).chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "Hello from the fake OpenAI API."
    only = await gateway_for(kit, controller, gateway_factory, [remote("w", wrong.url, "openai")])
    with pytest.raises(openai.APIStatusError) as raised:
        await client(only).chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
    assert raised.value.status_code == 502
    assert "Incorrect API key" not in str(raised.value) and KEY not in str(raised.value)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "2"},
        # No Retry-After: the reset of the limit that ran out.
        {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": "in",
         "anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": "2s"},
    ],
)  # fmt: skip
async def test_a_provider_429_with_retry_after_cools_it_down_while_another_serves(
    headers: dict[str, str], kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    limited = await providers("anthropic", KEY)
    limited.fail = (429, "anthropic_error_rate_limit.json", headers)
    other = await providers("openai", KEY)
    members = [remote("limited", limited.url, "anthropic"), remote("other", other.url, "openai")]
    gw = await gateway_for(kit, controller, gateway_factory, members)
    for _ in range(12):
        answer = await client(gw).chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "Hello from the fake OpenAI API."
    # A try met the 429; none came within the 2 s it asked for, however long the loop took.
    assert limited.arrived
    assert all(t - limited.arrived[0] >= 2 for t in limited.arrived[1:])


async def test_priced_members_cost_counts_and_streams_always_carry_usage(
    kit: Any, controller: Any, gateway_factory: Any, providers: Any, http: httpx.AsyncClient
) -> None:
    fake = await providers("openai", KEY)
    prices = {"input_cost_per_mtok": 2.5, "output_cost_per_mtok": 10.0,
              "cached_input_cost_per_mtok": 1.25}  # fmt: skip
    gw = await gateway_for(
        kit, controller, gateway_factory, [remote("r", fake.url, "openai", **prices)]
    )
    await client(gw).chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
    stream = await client(gw).chat.completions.create(model="m1", messages=CHAT, stream=True)  # type: ignore[arg-type]
    chunks = [c async for c in stream]
    # The gateway asked for usage; the client, who did not, got no usage chunk.
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}
    assert all(c.usage is None and c.choices for c in chunks)
    page = (await http.get(gw.url + "/metrics")).text
    # Plain: 8 fresh + 4 cached prompt tokens, 8 completion; stream: 12 prompt, 8 completion.
    plain = (8 * 2.5 + 4 * 1.25 + 8 * 10.0) / 1e6
    streamed = (12 * 2.5 + 8 * 10.0) / 1e6
    cost = kit.metric(page, "llmpool_gateway_cost_usd_total", model="m1", backend="r")
    assert cost == pytest.approx(plain + streamed)
    assert kit.metric(page, "llmpool_gateway_tokens_total", model="m1", kind="cached") == 4
    await kit.wait_until(
        lambda: (
            sum(m.cost_usd for r in controller.reports for m in r.members)
            == pytest.approx(plain + streamed)
        ),
        what="the cost reported to the controller",
    )
