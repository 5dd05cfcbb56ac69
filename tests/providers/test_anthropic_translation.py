"""The pure OpenAI <-> Anthropic translation: requests, answers and stream events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.errors import BadRequestError
from gateway.providers.anthropic import MessagesToChat
from gateway.providers.anthropic_request import to_anthropic
from tests.providers.fakes import fixture

PNG = "data:image/png;base64,iVBORw0KGgo="


def test_request_parts_images_roles_and_tools() -> None:
    body = to_anthropic(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Rule one."},
                {"role": "system", "content": [{"type": "text", "text": "Rule two."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ]},
                {"role": "user", "content": "And this?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "t1", "type": "function",
                     "function": {"name": "f", "arguments": "{\"a\": 1}"}},
                    {"id": "t2", "type": "function", "function": {"name": "f", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "t1", "content": "one"},
                {"role": "tool", "tool_call_id": "t2", "content": "two"},
            ],
            "max_completion_tokens": 50,
            "top_p": 0.5,
            "stop": "X",
            "user": "u-7",
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
        },
        "claude",
    )  # fmt: skip
    assert body["system"] == [
        {"type": "text", "text": "Rule one."},
        {"type": "text", "text": "Rule two."},
    ]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]  # the two user turns and two results merged
    first = body["messages"][0]["content"]
    source = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert first[1] == {"type": "image", "source": source}
    assert first[2] == {"type": "text", "text": "And this?"}
    calls = body["messages"][1]["content"]
    assert [c["input"] for c in calls] == [{"a": 1}, {}]
    results = body["messages"][2]["content"]
    assert [r["tool_use_id"] for r in results] == ["t1", "t2"]
    assert body["max_tokens"] == 50 and body["top_p"] == 0.5 and body["stop_sequences"] == ["X"]
    assert body["metadata"] == {"user_id": "u-7"}
    assert body["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        ({"n": 2}, "n=1"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input_audio"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}]}]}, "base64"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "user message"),
    ],
)  # fmt: skip
def test_what_cannot_be_carried_is_a_400_that_names_it(payload: dict[str, Any], names: str) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **payload}
    with pytest.raises(BadRequestError, match=names) as raised:
        to_anthropic(request, "claude")
    assert raised.value.status == 400


async def _events(name: str, size: int) -> AsyncIterator[bytes]:
    data = fixture(name)
    for i in range(0, len(data), size):  # any chunking: events split across reads
        yield data[i : i + size]


@pytest.mark.parametrize("size", [7, 64, 100_000])
def test_stream_events_become_openai_chunks(size: int) -> None:
    async def collect() -> list[bytes]:
        stream = MessagesToChat().stream(_events("anthropic_stream_tool.sse", size), "m1", True)
        return [c async for c in stream]

    out = asyncio.run(collect())
    assert out[-1] == b"data: [DONE]\n\n"
    docs = [orjson.loads(c[6:]) for c in out[:-1]]
    assert docs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert docs[0]["id"] == "chatcmpl-01Tp9kLm2Nb4Vc6Xz8Qw1Er3"
    start = docs[1]["choices"][0]["delta"]["tool_calls"][0]
    assert (start["id"], start["function"]["name"]) == (
        "toolu_01Hn8wQe5rTy2uIo3pAs4dFg",
        "get_weather",
    )
    pieces = [d["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for d in docs[2:4]]
    assert orjson.loads("".join(pieces)) == {"city": "Lisbon", "unit": "celsius"}
    assert docs[4]["choices"][0]["finish_reason"] == "tool_calls"
    assert docs[5]["choices"] == [] and docs[5]["usage"]["completion_tokens"] == 40


def test_an_error_event_ends_the_stream_in_band() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield fixture("anthropic_stream_text.sse").split(b"event: content_block_stop")[0]
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        yield b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"

    async def collect() -> list[bytes]:
        return [c async for c in MessagesToChat().stream(events(), "m1", False)]

    out = asyncio.run(collect())
    assert orjson.loads(out[-1][6:])["error"]["type"] == "server_error"
    assert b"[DONE]" not in b"".join(out)


def test_answer_with_tool_use_and_cache_usage() -> None:
    doc = orjson.loads(MessagesToChat().answer(fixture("anthropic_tool_use.json"), "m1"))
    message = doc["choices"][0]["message"]
    assert message["content"] == "Let me look that up."
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"])["city"] == "Lisbon"
    assert doc["choices"][0]["finish_reason"] == "tool_calls"
    cached = orjson.loads(MessagesToChat().answer(fixture("anthropic_message.json"), "m1"))
    assert cached["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
