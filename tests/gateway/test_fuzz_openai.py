"""Fuzzing the OpenAI surface: generated request shapes (valid, nearly valid and wrong) from
the official SDK's field names; the gateway itself never answers 5xx and never dies."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from hypothesis import strategies as st

from gateway.app import parts_of
from tests.support import examples

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "x"]) | JSON},
    optional={
        "content": st.text(max_size=200) | JSON,
        "name": st.text(max_size=20),
        "tool_calls": JSON,
        "tool_call_id": st.text(max_size=20),
    },
)
COMMON = {
    "stream": st.booleans() | JSON,
    "n": st.integers(min_value=-5, max_value=300) | JSON,
    "max_tokens": st.integers(min_value=-5, max_value=10**9) | JSON,
    "temperature": st.floats(allow_nan=False, allow_infinity=False) | JSON,
    "user": st.text(max_size=30) | JSON,
    "stop": st.lists(st.text(max_size=5), max_size=5) | JSON,
    "tools": JSON,
    "response_format": JSON,
    "stream_options": JSON,
}
MODEL = st.sampled_from(["m1", "nope", ""]) | st.text(max_size=300) | JSON
CHAT = st.fixed_dictionaries(
    {"model": MODEL, "messages": st.lists(MESSAGE, max_size=4) | JSON}, optional=COMMON
)
COMPLETION = st.fixed_dictionaries(
    {"model": MODEL, "prompt": st.text(max_size=100) | st.lists(st.integers(0, 50000)) | JSON},
    optional=COMMON,
)
EMBEDDING = st.fixed_dictionaries(
    {"model": MODEL, "input": st.text(max_size=100) | st.lists(st.text(max_size=10)) | JSON},
    optional={"encoding_format": st.sampled_from(["float", "base64"]) | JSON},
)
REQUEST = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), CHAT | JSON),
    st.tuples(st.just("/v1/completions"), COMPLETION | JSON),
    st.tuples(st.just("/v1/embeddings"), EMBEDDING | JSON),
)


async def test_generated_requests_never_get_a_5xx_of_the_gateways_own(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    engine = await engines("e1")
    controller.full = kit.snapshot(1, [kit.route("m1", [kit.member("a", engine.url)])])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    requests = examples(REQUEST, 400)
    assert len(requests) >= 300
    failures: list[str] = []

    async def send(path: str, payload: Any) -> None:
        resp = await http.post(f"{gw.url}{path}", json=payload)
        if resp.status_code >= 500:
            code = resp.json().get("error", {}).get("code") if resp.content else None
            # The member's own failure, relayed as such, is not the gateway's.
            if code != "upstream_failed":
                failures.append(f"{resp.status_code} {resp.text[:200]} for {path} {payload!r:.300}")
        elif resp.status_code >= 400:
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, resp.text

    for i in range(0, len(requests), 20):
        await asyncio.gather(*(send(p, b) for p, b in requests[i : i + 20]))
    assert not failures, "\n".join(failures[:10])
    healthz = await http.get(f"{gw.url}/healthz")
    assert healthz.status_code == 200
