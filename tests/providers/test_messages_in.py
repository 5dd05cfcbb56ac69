"""Anthropic clients: POST /v1/messages with the official anthropic package, served by a
simulated engine (OpenAI-compatible: translated both ways) and by an Anthropic member (passed
through untouched): text, streaming, a tool call, errors in the Messages API's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from gateway.app import parts_of
from llmpool.sim.app import build_app
from llmpool.sim.engine import Engine
from llmpool.sim.settings import SimSettings
from llmpool.v1 import gateway_pb2
from tests.gateway.conftest import InProcessServer

KEY = "sk-ant-test-0123456789"
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Lisbon?"}]


@pytest.fixture
async def sim() -> AsyncIterator[InProcessServer]:
    server = InProcessServer(build_app(Engine(SimSettings(model="sim", speedup=50))))
    await server.start()
    yield server
    await server.stop()


async def gateway_with(kit: Any, controller: Any, gateway_factory: Any, member: Any) -> Any:
    controller.full = kit.snapshot(1, [kit.route("m1", [member])])
    environ = {"LLMPOOL_CREDENTIAL_ANT": KEY}
    gw = await gateway_factory(f"127.0.0.1:{controller.port}", environ=environ)
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    return gw


def client(gw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key="client-key", max_retries=0)


async def test_text_streaming_and_a_tool_call_on_a_simulated_engine(
    sim: InProcessServer, kit: Any, controller: Any, gateway_factory: Any
) -> None:
    member = gateway_pb2.Member(id="s1", url=sim.url, healthy=True, upstream_model="sim")
    gw = await gateway_with(kit, controller, gateway_factory, member)
    c = client(gw)
    msg = await c.messages.create(model="m1", max_tokens=16, system="Be brief.", messages=ASK)  # type: ignore[arg-type]
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "m1"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0

    async with c.messages.stream(model="m1", max_tokens=16, messages=ASK) as stream:  # type: ignore[arg-type]
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0

    tool = await c.messages.create(
        model="m1", max_tokens=64, messages=ASK, tools=[WEATHER],  # type: ignore[arg-type, list-item]
        tool_choice={"type": "any"},
    )  # fmt: skip
    assert tool.stop_reason == "tool_use"
    [use] = [b for b in tool.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    follow = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in tool.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "21 C and sunny"},
        ]},
    ]  # fmt: skip
    done = await c.messages.create(model="m1", max_tokens=16, messages=follow, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    assert done.content[0].type == "text"

    async with c.messages.stream(
        model="m1", max_tokens=64, messages=ASK, tools=[WEATHER],  # type: ignore[arg-type, list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:  # fmt: skip
        streamed = await stream.get_final_message()
    [use] = [b for b in streamed.content if b.type == "tool_use"]
    assert use.name == "get_weather" and "city" in use.input  # type: ignore[operator]
    assert streamed.stop_reason == "tool_use"


async def test_errors_come_in_the_messages_api_shape(
    sim: InProcessServer, kit: Any, controller: Any, gateway_factory: Any
) -> None:
    member = gateway_pb2.Member(id="s1", url=sim.url, healthy=True, upstream_model="sim")
    gw = await gateway_with(kit, controller, gateway_factory, member)
    c = client(gw)
    with pytest.raises(anthropic.NotFoundError) as missing:
        await c.messages.create(model="nope", max_tokens=8, messages=ASK)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        await c.messages.create(
            model="m1", max_tokens=2048, messages=ASK,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 1024},
        )  # fmt: skip
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await c.messages.create(model="m1", max_tokens=0, messages=ASK)  # type: ignore[arg-type]


async def test_an_anthropic_member_gets_the_request_untouched(
    kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    fake = await providers("anthropic", KEY)
    member = gateway_pb2.Member(
        id="a1", url=fake.url, healthy=True, kind="anthropic", credential="ant",
        upstream_model="claude-sonnet-4-5",
    )  # fmt: skip
    gw = await gateway_with(kit, controller, gateway_factory, member)
    c = client(gw)
    msg = await c.messages.create(model="m1", max_tokens=32, messages=ASK, stop_sequences=["END"])  # type: ignore[arg-type]
    assert msg.content[0].text == "Hello from the fake Anthropic API."  # type: ignore[union-attr]
    assert msg.usage.cache_read_input_tokens == 4
    assert fake.requests[0] == {
        "model": "claude-sonnet-4-5", "max_tokens": 32, "messages": ASK, "stop_sequences": ["END"],
    }  # fmt: skip
    assert fake.headers[0]["x-api-key"] == KEY
    beta = await c.messages.create(
        model="m1", max_tokens=8, messages=ASK,  # type: ignore[arg-type]
        extra_headers={"anthropic-beta": "extended-cache-ttl-2025-04-11"},
    )  # fmt: skip
    assert beta.content and fake.headers[-1]["anthropic-beta"] == "extended-cache-ttl-2025-04-11"
    async with c.messages.stream(model="m1", max_tokens=32, messages=ASK, tools=[WEATHER]) as s:  # type: ignore[arg-type, list-item]
        final = await s.get_final_message()
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.input == {"city": "Lisbon", "unit": "celsius"}
    fake.fail = (429, "anthropic_error_rate_limit.json", {"retry-after": "3"})
    with pytest.raises(anthropic.RateLimitError):
        await c.messages.create(model="m1", max_tokens=32, messages=ASK)  # type: ignore[arg-type]
