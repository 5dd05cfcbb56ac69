"""OpenAI response bodies and SSE chunks for chat and text completions and embeddings."""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

import orjson

from llmpool.sim.openai_requests import GenerateRequest


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Formatter(Protocol):
    """Builds one endpoint's bodies; the route code streams or collects without branching."""

    def opening(self) -> list[dict[str, Any]]: ...

    def token(self, index: int, text: str) -> dict[str, Any]: ...

    def closing(self) -> dict[str, Any]: ...

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]: ...

    def complete(self, texts: list[str], prompt_tokens: int) -> dict[str, Any]: ...


class _Base:
    object_chunk = ""
    id_prefix = ""

    def __init__(self, request: GenerateRequest) -> None:
        self.request = request
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.finish_reason = "tool_calls" if request.tool_call else "length"

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": self.object_chunk,
            "created": self.created,
            "model": self.request.model,
            "choices": choices,
        }
        if self.request.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        chunk = self._chunk([])
        chunk["usage"] = usage(prompt_tokens, completion_tokens)
        return chunk


class ChatFormatter(_Base):
    object_chunk = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(self, request: GenerateRequest) -> None:
        super().__init__(request)
        self.call_id = f"call_{uuid.uuid4().hex[:24]}"

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def opening(self) -> list[dict[str, Any]]:
        delta: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.request.tool_call else "",
        }
        return [self._chunk([self._choice(delta)])]

    def token(self, index: int, text: str) -> dict[str, Any]:
        call = self.request.tool_call
        if call is None:
            return self._chunk([self._choice({"content": text})])
        function: dict[str, Any] = {"arguments": text}
        entry: dict[str, Any] = {"index": 0, "function": function}
        if index == 0:
            entry.update(id=self.call_id, type="function")
            function["name"] = call.name
        return self._chunk([self._choice({"tool_calls": [entry]})])

    def closing(self) -> dict[str, Any]:
        return self._chunk([self._choice({}, self.finish_reason)])

    def complete(self, texts: list[str], prompt_tokens: int) -> dict[str, Any]:
        call = self.request.tool_call
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if call is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": self.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(texts)},
                }
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, len(texts)),
        }


class CompletionFormatter(_Base):
    object_chunk = "text_completion"
    id_prefix = "cmpl"

    def _choice(self, text: str, finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def opening(self) -> list[dict[str, Any]]:
        return []

    def token(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk([self._choice(text)])

    def closing(self) -> dict[str, Any]:
        return self._chunk([self._choice("", self.finish_reason)])

    def complete(self, texts: list[str], prompt_tokens: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [self._choice("".join(texts), self.finish_reason)],
            "usage": usage(prompt_tokens, len(texts)),
        }


def embeddings_body(
    model: str, vectors: list[list[float] | str], prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
