"""Anthropic's Messages API behind an OpenAI chat endpoint: requests translated there, answers,
stream events and errors translated back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.errors import BadRequestError
from gateway.members import Member
from gateway.parsing import Endpoint, ParsedRequest
from gateway.providers.anthropic_request import to_anthropic
from gateway.providers.base import UpstreamCall
from llmpool.addr import base_url

API_VERSION = "2023-06-01"
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic error types -> OpenAI's (the SDKs pick exception classes by status; this is the body).
ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}
# One stream event may not grow without bound while it waits for its end.
_MAX_EVENT_BYTES = 4 * 1024 * 1024


class AnthropicProvider:
    kind = "anthropic"

    def __init__(self) -> None:
        self._to_chat = MessagesToChat()

    def prepare(
        self, member: Member, req: ParsedRequest, headers: Mapping[str, str], key: str | None
    ) -> UpstreamCall:
        translator: MessagesToChat | None = self._to_chat
        if req.endpoint is Endpoint.MESSAGES:
            # An Anthropic client: its request goes as it is (the model name aside).
            body = req.body_for(member.upstream_model)
            translator = None
        elif req.endpoint is Endpoint.CHAT:
            body = orjson.dumps(to_anthropic(req.payload, member.upstream_model or req.model))
        else:
            raise BadRequestError(
                f"Model {req.model!r} is served by Anthropic, which has chat completions only.",
                code="unsupported_by_backend",
            )
        out = {
            "content-type": "application/json",
            "accept": headers.get("accept", "application/json"),
            "anthropic-version": API_VERSION,
        }
        for name in ("x-request-id", "traceparent", "tracestate", "anthropic-beta"):
            if name in headers:
                out[name] = headers[name]
        if key:
            out["x-api-key"] = key
        return UpstreamCall(base_url(member.url) + "/v1/messages", body, out, translator)


class MessagesToChat:
    """Translates an Anthropic member's answers for an OpenAI client."""

    def answer(self, body: bytes, model: str) -> bytes:
        msg = orjson.loads(body)
        text = [b.get("text", "") for b in msg.get("content", ()) if b.get("type") == "text"]
        calls = [
            {
                "id": b.get("id", ""),
                "type": "function",
                "function": {"name": b.get("name", ""), "arguments": _json(b.get("input", {}))},
            }
            for b in msg.get("content", ())
            if b.get("type") == "tool_use"
        ]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
        if calls:
            message["tool_calls"] = calls
        doc = {
            "id": _chat_id(msg.get("id", "")),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": FINISH.get(msg.get("stop_reason") or "", "stop"),
                    "logprobs": None,
                }
            ],
            "usage": usage(msg.get("usage") or {}),
        }
        return orjson.dumps(doc)

    def stream(
        self, chunks: AsyncIterator[bytes], model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        return _stream(chunks, model, include_usage)

    def error(self, status: int, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
            err = doc.get("error") or {}
            kind, message = str(err.get("type", "")), str(err.get("message", ""))
        except (orjson.JSONDecodeError, AttributeError):
            kind, message = "", ""
        return openai_error(kind, message or f"The Anthropic backend answered HTTP {status}.")


def openai_error(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message[:2000],
                "type": ERROR_TYPES.get(kind, "upstream_error"),
                "param": None,
                "code": kind or None,
            }
        }
    )


def usage(u: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's usage in OpenAI's terms: prompt tokens count cache reads and writes too."""
    read = int(u.get("cache_read_input_tokens") or 0)
    written = int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + read + written
    completion = int(u.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": written},
    }


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _chat_id(message_id: str) -> str:
    return "chatcmpl-" + (message_id.removeprefix("msg_") or "anthropic")


async def _stream(
    chunks: AsyncIterator[bytes], model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """Anthropic's server-sent events (message_start, content_block_*, message_delta,
    message_stop, ping, error) as OpenAI chunks, ending with [DONE]; an error event becomes
    OpenAI's in-band error."""
    state = _StreamState(model)
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > _MAX_EVENT_BYTES:
            yield (
                b"data: " + openai_error("api_error", "An upstream event was too large.") + b"\n\n"
            )
            return
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + 2 :]
            for out in state.on_event(event):
                yield out
            if state.done:
                if include_usage:
                    yield state.usage_chunk()
                yield b"data: [DONE]\n\n"
                return
            if state.failed:
                return


class _StreamState:
    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "chatcmpl-anthropic"
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        # Anthropic content block index -> OpenAI tool_calls index.
        self.tools: dict[int, int] = {}
        self.done = False
        self.failed = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        doc = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    def usage_chunk(self) -> bytes:
        doc = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(self.usage),
        }
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    def on_event(self, raw: bytes) -> list[bytes]:
        data = b""
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                data += line[5:].strip()
        if not data:
            return []
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        kind = event.get("type")
        if kind == "message_start":
            msg = event.get("message") or {}
            self.id = _chat_id(msg.get("id", ""))
            self.usage.update(msg.get("usage") or {})
            return [self.chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") != "tool_use":
                text = block.get("text") if block.get("type") == "text" else None
                return [self.chunk({"content": text})] if text else []
            index = self.tools[event.get("index", 0)] = len(self.tools)
            call = {
                "index": index,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            return [self.chunk({"tool_calls": [call]})]
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self.chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tools.get(event.get("index", 0), 0)
                args = {"index": index, "function": {"arguments": delta.get("partial_json", "")}}
                return [self.chunk({"tool_calls": [args]})]
            return []
        if kind == "message_delta":
            self.usage.update(event.get("usage") or {})
            reason = (event.get("delta") or {}).get("stop_reason")
            return [self.chunk({}, FINISH.get(reason or "", "stop"))] if reason else []
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            self.failed = True
            err = event.get("error") or {}
            body = openai_error(str(err.get("type", "")), str(err.get("message", "")))
            return [b"data: " + body + b"\n\n"]
        return []  # ping, content_block_stop, and event types added later
