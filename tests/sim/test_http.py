"""The HTTP surface through the official openai client and raw httpx: shapes, errors, metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
import pytest

Start = Callable[..., Awaitable[Any]]
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]


def client(server: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key="k", max_retries=0
    )


def url(server: Any, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def test_health_and_models(sim_server: Start) -> None:
    server = await sim_server(model="tiny")
    async with httpx.AsyncClient() as http:
        health = await http.get(url(server, "/health"))
        assert health.status_code == 200 and health.text == "ok"
    models = await client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]


async def test_chat_stream_shape_via_openai(sim_server: Start) -> None:
    server = await sim_server()
    stream = await client(server).chat.completions.create(
        model="sim",
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert len(content) == 5
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5
    assert len({c.id for c in chunks}) == 1


async def test_raw_sse_framing_ends_with_done(sim_server: Start) -> None:
    server = await sim_server()
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(url(server, "/v1/chat/completions"), json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert len(payloads) == 1 + 3 + 1  # role, one per token, finish (no usage unless asked)
    assert all("usage" not in p for p in payloads)


async def test_chat_non_stream_is_deterministic_with_usage(sim_server: Start) -> None:
    server = await sim_server()
    c = client(server)
    one = await c.chat.completions.create(model="sim", messages=MESSAGES, max_completion_tokens=7)
    two = await c.chat.completions.create(model="sim", messages=MESSAGES, max_completion_tokens=7)
    assert one.choices[0].message.content == two.choices[0].message.content
    assert one.choices[0].finish_reason == "length"
    assert one.usage is not None and one.usage.completion_tokens == 7
    assert len((one.choices[0].message.content or "").split()) == 7


async def test_text_completions_stream_and_not(sim_server: Start) -> None:
    server = await sim_server(max_tokens_default=4)
    c = client(server)
    whole = await c.completions.create(model="sim", prompt="Once upon a time")
    assert whole.usage is not None and whole.usage.completion_tokens == 4
    assert whole.choices[0].finish_reason == "length"
    stream = await c.completions.create(model="sim", prompt="Once upon a time", stream=True)
    chunks = [ch async for ch in stream]
    assert "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_tool_choice_required_answers_with_a_tool_call(sim_server: Start) -> None:
    server = await sim_server()
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city", "days"],
                },
            },
        }
    ]
    c = client(server)
    reply = await c.chat.completions.create(
        model="sim", messages=MESSAGES, tools=tools, tool_choice="required"
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "sim", "days": 1}  # type: ignore[union-attr]
    stream = await c.chat.completions.create(
        model="sim",
        messages=MESSAGES,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    chunks = [ch async for ch in stream]
    deltas = [ch.choices[0].delta.tool_calls for ch in chunks if ch.choices[0].delta.tool_calls]
    assert deltas[0][0].id and deltas[0][0].function.name == "get_weather"  # type: ignore[union-attr]
    args = "".join(d[0].function.arguments or "" for d in deltas)  # type: ignore[union-attr]
    assert json.loads(args) == {"city": "sim", "days": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    auto = await c.chat.completions.create(
        model="sim", messages=MESSAGES, tools=tools, max_tokens=2
    )
    assert auto.choices[0].finish_reason == "length" and not auto.choices[0].message.tool_calls


async def test_embeddings_are_unit_vectors_in_both_encodings(sim_server: Start) -> None:
    server = await sim_server(embedding_dim=16)
    c = client(server)
    result = await c.embeddings.create(model="sim", input=["alpha", "beta", "alpha"])  # base64
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [16, 16, 16]
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert result.usage.prompt_tokens > 0
    floats = await c.embeddings.create(model="sim", input="alpha", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], rel=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        ("/v1/chat/completions", b'{"model": "sim"}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"model": "other", "messages": [{"role": "user"}]}',
            404,
            "model",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user"}], "max_tokens": 0}',
            400,
            "max_tokens",
        ),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}], "n": 2}', 400, "n"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user"}], "tool_choice": "required"}',
            400,
            "tool_choice",
        ),
        ("/v1/completions", b'{"model": "sim"}', 400, "prompt"),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 100000}', 400, None),
        ("/v1/embeddings", b'{"model": "sim"}', 400, "input"),
        ("/v1/nothing", b"{}", 404, None),
    ],
)
async def test_errors_are_openai_shaped(
    sim_server: Start, path: str, body: bytes, status: int, param: str | None
) -> None:
    server = await sim_server(kv_blocks=64, block_size=16)
    async with httpx.AsyncClient() as http:
        response = await http.post(url(server, path), content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["param"] == param


async def test_openai_client_raises_not_found_for_another_model(sim_server: Start) -> None:
    server = await sim_server()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client(server).chat.completions.create(model="gpt-x", messages=MESSAGES)


async def test_metrics_use_vllm_names_and_count_prefix_hits(sim_server: Start) -> None:
    server = await sim_server(block_size=16)
    system: Any = {"role": "system", "content": "Shared context. " * 100}
    c = client(server)
    for question in ("one?", "two?"):
        await c.chat.completions.create(
            model="sim", messages=[system, {"role": "user", "content": question}], max_tokens=2
        )
    async with httpx.AsyncClient() as http:
        text = (await http.get(url(server, "/metrics"))).text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    label = '{model_name="sim"}'
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ):
        assert name + label in samples, name
    assert samples["vllm:generation_tokens_total" + label] == 4
    assert (
        samples["vllm:prompt_tokens_total" + label]
        == samples["vllm:prefix_cache_queries_total" + label]
    )
    # The second request found the shared system prompt's full blocks in the cache.
    assert samples["vllm:prefix_cache_hits_total" + label] >= 16 * 5
    assert samples["vllm:e2e_request_latency_seconds_count" + label] == 2


async def test_reset_prefix_cache_makes_the_next_request_cold(sim_server: Start) -> None:
    server = await sim_server(block_size=16)
    messages: Any = [{"role": "system", "content": "Shared context. " * 100}]
    c = client(server)

    async def hits() -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(url(server, "/metrics"))).text
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                return float(line.split(" ")[1])
        raise AssertionError("no prefix_cache_hits_total in /metrics")

    await c.chat.completions.create(model="sim", messages=messages, max_tokens=1)
    async with httpx.AsyncClient() as http:
        reset = await http.post(url(server, "/reset_prefix_cache"))
    assert reset.status_code == 200 and reset.json()["dropped_blocks"] >= 5
    await c.chat.completions.create(model="sim", messages=messages, max_tokens=1)
    assert await hits() == 0  # the same prompt again found nothing cached
    await c.chat.completions.create(model="sim", messages=messages, max_tokens=1)
    assert await hits() >= 16 * 5
