"""Every kind of member against both SDKs: the openai package (chat completions) and the
anthropic package (/v1/messages), each with a tool-call round trip, streamed and not, and each
provider error surfacing as the SDK's own exception class."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from gateway.app import parts_of
from llmpool.v1 import gateway_pb2

KEY = "sk-matrix-key"
KINDS = ["openai", "azure", "anthropic"]
TOOL_OAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_ANT = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ASK: Any = [{"role": "user", "content": "Weather in Lisbon?"}]
# Per kind: the fixtures answering 400, 429 and 5xx.
OPENAI_ERRORS = (
    "openai_error_invalid.json",
    "openai_error_rate_limit.json",
    "openai_error_server.json",
)
ANTHROPIC_ERRORS = (
    "anthropic_error_invalid.json", "anthropic_error_rate_limit.json", "anthropic_error_api.json"
)  # fmt: skip
ERRORS = {"openai": OPENAI_ERRORS, "azure": OPENAI_ERRORS, "anthropic": ANTHROPIC_ERRORS}


async def start(kind: str, kit: Any, controller: Any, gateway_factory: Any, providers: Any) -> Any:
    fake = await providers(kind, KEY)
    fields: dict[str, Any] = {"api_version": "2024-10-21"} if kind == "azure" else {}
    member = gateway_pb2.Member(
        id="m", url=fake.url, healthy=True, kind=kind, credential="k", upstream_model="up",
        **fields,
    )  # fmt: skip
    controller.full = kit.snapshot(1, [kit.route("pool", [member])])
    gw = await gateway_factory(
        f"127.0.0.1:{controller.port}", environ={"LLMPOOL_CREDENTIAL_K": KEY}
    )
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    return gw, fake


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_tool_round_trip(
    kind: str, stream: bool, kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    gw, _ = await start(kind, kit, controller, gateway_factory, providers)
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="c", max_retries=0)
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model="pool", messages=ASK, tools=[TOOL_OAI], stream=True)]  # type: ignore[list-item]  # fmt: skip
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        call_id, name = calls[0].id, calls[0].function.name  # type: ignore[union-attr]
        arguments = "".join(tc.function.arguments or "" for tc in calls)  # type: ignore[union-attr]
    else:
        first = await client.chat.completions.create(model="pool", messages=ASK, tools=[TOOL_OAI])  # type: ignore[list-item]
        assert first.choices[0].finish_reason == "tool_calls"
        [call] = first.choices[0].message.tool_calls or []
        call_id, name, arguments = call.id, call.function.name, call.function.arguments  # type: ignore[union-attr]
    assert name == "get_weather" and json.loads(arguments)["city"] == "Lisbon"
    follow = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]},
        {"role": "tool", "tool_call_id": call_id, "content": "21 C"},
    ]  # fmt: skip
    final = await client.chat.completions.create(model="pool", messages=follow, tools=[TOOL_OAI])  # type: ignore[arg-type, list-item]
    assert final.choices[0].message.content and final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_sdk_tool_round_trip(
    kind: str, stream: bool, kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    gw, _ = await start(kind, kit, controller, gateway_factory, providers)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key="c", max_retries=0)
    if stream:
        async with client.messages.stream(
            model="pool",
            max_tokens=64,
            messages=ASK,
            tools=[TOOL_ANT],  # type: ignore[list-item]
        ) as s:
            first = await s.get_final_message()
    else:
        first = await client.messages.create(
            model="pool", max_tokens=64, messages=ASK, tools=[TOOL_ANT]
        )  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input["city"] == "Lisbon"  # type: ignore[index]
    follow = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "21 C"},
        ]},
    ]  # fmt: skip
    final = await client.messages.create(
        model="pool", max_tokens=64, messages=follow, tools=[TOOL_ANT]
    )  # type: ignore[arg-type, list-item]
    assert final.stop_reason == "end_turn" and final.content[0].type == "text"


@pytest.mark.parametrize("kind", KINDS)
async def test_provider_errors_are_each_sdks_own_classes(
    kind: str, kit: Any, controller: Any, gateway_factory: Any, providers: Any
) -> None:
    gw, fake = await start(kind, kit, controller, gateway_factory, providers)
    oai = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="c", max_retries=0)
    ant = anthropic.AsyncAnthropic(base_url=gw.url, api_key="c", max_retries=0)
    invalid, limited, broken = ERRORS[kind]
    cases = [
        (400, invalid, openai.BadRequestError, anthropic.BadRequestError),
        (429, limited, openai.RateLimitError, anthropic.RateLimitError),
        (500, broken, openai.InternalServerError, anthropic.InternalServerError),
    ]
    for status, name, oai_error, ant_error in cases:
        fake.fail = (status, name, {})
        parts_of(gw.app).relay._cooldowns._until.clear()  # the 429 member's second off
        with pytest.raises(oai_error):
            await oai.chat.completions.create(model="pool", messages=ASK)
        parts_of(gw.app).relay._cooldowns._until.clear()
        with pytest.raises(ant_error):
            await ant.messages.create(model="pool", max_tokens=16, messages=ASK)
