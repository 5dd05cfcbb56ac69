"""AzureOpenAI clients pointed at the gateway: deployment URLs name the pool (and the v1 API
path works too), through to an Azure member behind it."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from gateway.app import parts_of
from gateway.asgi import azure_path
from llmpool.v1 import gateway_pb2

KEY = "azure-key-0123"


async def test_azure_clients_reach_pools_by_deployment(
    kit: Any, controller: Any, gateway_factory: Any, providers: Any, http: httpx.AsyncClient
) -> None:
    fake = await providers("azure", KEY)
    member = gateway_pb2.Member(
        id="az", url=fake.url, healthy=True, kind="azure", credential="az",
        api_version="2024-10-21", upstream_model="gpt4o-prod",
    )  # fmt: skip
    controller.full = kit.snapshot(1, [kit.route("gpt-4o", [member])])
    gw = await gateway_factory(
        f"127.0.0.1:{controller.port}", environ={"LLMPOOL_CREDENTIAL_AZ": KEY}
    )
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=gw.url, api_key="client-azure-key", api_version="2024-10-21",
        max_retries=0,
    )  # fmt: skip
    messages: Any = [{"role": "user", "content": "hi"}]
    answer = await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert answer.choices[0].message.content == "Hello from the fake OpenAI API."
    stream = await client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from the fake stream."
    vectors = await client.embeddings.create(model="gpt-4o", input="hello")
    assert len(vectors.data[0].embedding) == 3
    assert fake.paths[-1] == "/openai/deployments/gpt4o-prod/embeddings?api-version=2024-10-21"
    # The member got its own deployment URL and key; never the client's key.
    assert fake.paths[0] == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    assert all(h.get("api-key") == KEY for h in fake.headers)
    v1 = await http.post(
        gw.url + "/openai/v1/chat/completions", json={"model": "gpt-4o", "messages": messages}
    )
    assert v1.status_code == 200
    missing = await http.post(
        gw.url + "/openai/deployments/nope/chat/completions?api-version=2024-10-21",
        json={"messages": messages},
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    unknown = await http.post(gw.url + "/openai/deployments/gpt-4o/images/generations", json={})
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("path", "endpoint", "deployment"),
    [
        ("/openai/v1/embeddings", "/v1/embeddings", None),
        ("/openai/deployments/my-deploy/completions", "/v1/completions", "my-deploy"),
        ("/openai/deployments//chat/completions", None, None),
        ("/openai/other", None, None),
    ],
)
def test_azure_paths(path: str, endpoint: str | None, deployment: str | None) -> None:
    found, name = azure_path(path)
    assert (found.value if found else None, name) == (endpoint, deployment)
