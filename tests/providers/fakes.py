"""Fake OpenAI, Azure OpenAI and Anthropic APIs: real HTTP on port 0, answering from samples of
each provider's documented wire format (fixtures/), checking the credential header each got."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.gateway.conftest import InProcessServer

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class FakeProvider:
    """kind: "openai", "azure" or "anthropic". `fail` makes every request answer that
    (status, fixture, headers) instead."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        # When each request arrived (monotonic seconds).
        self.arrived: list[float] = []
        self.fail: tuple[int, str, dict[str, str]] | None = None
        routes = {
            "openai": [
                Route("/v1/chat/completions", self._openai_chat, methods=["POST"]),
                Route("/v1/embeddings", self._openai_embeddings, methods=["POST"]),
            ],
            "azure": [
                Route(
                    "/openai/deployments/{deployment}/chat/completions",
                    self._openai_chat,
                    methods=["POST"],
                ),
                Route("/openai/v1/chat/completions", self._openai_chat, methods=["POST"]),
                Route(
                    "/openai/deployments/{deployment}/embeddings",
                    self._openai_embeddings,
                    methods=["POST"],
                ),
            ],
            "anthropic": [Route("/v1/messages", self._messages, methods=["POST"])],
        }[kind]
        self.server = InProcessServer(Starlette(routes=routes))

    @property
    def url(self) -> str:
        return self.server.url

    async def _seen(self, request: Request) -> dict[str, Any]:
        body = orjson.loads(await request.body())
        self.arrived.append(time.monotonic())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.paths.append(request.url.path + ("?" + request.url.query if request.url.query else ""))
        return body

    def _refused(self, request: Request) -> Response | None:
        """The provider's own answer to a wrong or missing key, or the failure a test set."""
        if self.kind == "openai":
            ok = request.headers.get("authorization") == f"Bearer {self.key}"
        elif self.kind == "azure":
            ok = request.headers.get("api-key") == self.key
        else:
            ok = (
                request.headers.get("x-api-key") == self.key
                and request.headers.get("anthropic-version") == "2023-06-01"
            )
        if not ok:
            if self.kind == "anthropic":
                error = {"type": "authentication_error", "message": "invalid x-api-key"}
                body = orjson.dumps({"type": "error", "error": error})
            else:
                body = fixture("openai_error_auth.json")
            return Response(body, 401, media_type="application/json")
        if self.fail is not None:
            status, name, headers = self.fail
            return Response(fixture(name), status, headers=headers, media_type="application/json")
        return None

    async def _openai_chat(self, request: Request) -> Response:
        body = await self._seen(request)
        refused = self._refused(request)
        if refused is not None:
            return refused
        messages = body.get("messages") or [{}]
        if body.get("tools") and messages[-1].get("role") != "tool":
            if body.get("stream"):
                return Response(fixture("openai_stream_tool.sse"), media_type="text/event-stream")
            return Response(fixture("openai_tool_call.json"), media_type="application/json")
        if body.get("stream"):
            events = fixture("openai_stream.sse")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
                chunk = {"id": "chatcmpl-9fake2", "object": "chat.completion.chunk",
                         "created": 1764680000, "model": "gpt-4o-mini", "choices": [],
                         "usage": usage}  # fmt: skip
                done = events.index(b"data: [DONE]")
                events = events[:done] + b"data: " + orjson.dumps(chunk) + b"\n\n" + events[done:]
            return Response(events, media_type="text/event-stream")
        return Response(fixture("openai_chat.json"), media_type="application/json")

    async def _openai_embeddings(self, request: Request) -> Response:
        await self._seen(request)
        return self._refused(request) or Response(
            fixture("openai_embeddings.json"), media_type="application/json"
        )

    async def _messages(self, request: Request) -> Response:
        body = await self._seen(request)
        refused = self._refused(request)
        if refused is not None:
            return refused
        problem = _messages_problem(body)
        if problem:
            error = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": problem},
            }
            return JSONResponse(error, 400)
        last = body["messages"][-1]["content"]
        answered_tool = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
        use_tool = bool(body.get("tools")) and not answered_tool
        if body.get("stream"):
            name = "anthropic_stream_tool.sse" if use_tool else "anthropic_stream_text.sse"
            return Response(fixture(name), media_type="text/event-stream")
        name = "anthropic_tool_use.json" if use_tool else "anthropic_message.json"
        return Response(fixture(name), media_type="application/json")


def _messages_problem(body: dict[str, Any]) -> str | None:
    """What the real Messages API would refuse in this body (the rules the translation must
    keep): max_tokens, alternating roles starting with user, block shapes, tool ids."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not messages or messages[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    for a, b in itertools.pairwise(messages):
        if a["role"] == b["role"]:
            return 'messages: roles must alternate between "user" and "assistant"'
    tool_ids = set()
    for m in messages:
        if isinstance(m.get("content"), str):
            continue
        if not isinstance(m.get("content"), list):
            return "messages.content: expected text or a list of blocks"
        for block in m["content"]:
            kind = block.get("type")
            if kind not in ("text", "image", "tool_use", "tool_result"):
                return f"unknown block type {kind}"
            if kind == "tool_use":
                tool_ids.add(block["id"])
            if kind == "tool_result" and block.get("tool_use_id") not in tool_ids:
                return "tool_result block without a matching tool_use"
    for tool in body.get("tools", ()):
        if set(tool) - {"name", "description", "input_schema"} or "input_schema" not in tool:
            return "tools: each tool needs name and input_schema"
    return None
