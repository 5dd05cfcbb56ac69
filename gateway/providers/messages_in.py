"""Anthropic clients (POST /v1/messages) served by OpenAI-compatible members: the request
translated to a chat completion, the answer, stream and errors translated back (pure)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.errors import BadRequestError, anthropic_error_body

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_KNOWN = frozenset(
    {
        "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
        "top_k", "stream", "tools", "tool_choice", "metadata", "thinking",
    }
)  # fmt: skip
# One stream event may not grow without bound while it waits for its end.
_MAX_EVENT_BYTES = 4 * 1024 * 1024


def _bad(message: str, param: str | None = None) -> BadRequestError:
    return BadRequestError(message, param=param, code="unsupported_by_backend")


def to_chat(payload: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The chat completion request for a Messages API request; a 400 names what cannot be
    carried (server tools, extended thinking, document blocks)."""
    unknown = sorted(k for k in payload if k not in _KNOWN)
    if unknown:
        raise _bad(f"Field {unknown[0]!r} is not supported by this model's backend.", unknown[0])
    thinking = payload.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        raise _bad("Extended thinking is not supported by this model's backend.", "thinking")
    messages: list[dict[str, Any]] = []
    system = payload.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for i, msg in enumerate(payload.get("messages") or ()):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise BadRequestError(
                f"messages.{i}.role must be 'user' or 'assistant'.", param="messages"
            )
        messages += _turn(msg, i)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": payload["max_tokens"],
    }
    for name in ("temperature", "top_p", "top_k"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    if payload.get("stop_sequences"):
        body["stop"] = list(payload["stop_sequences"])
    if payload.get("stream"):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    user = (payload.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        body["user"] = user
    tools = payload.get("tools")
    if tools:
        body["tools"] = [_tool(t) for t in tools]
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        mapped: Any = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
        if kind == "tool":
            mapped = {"type": "function", "function": {"name": choice.get("name")}}
        if mapped is None:
            raise BadRequestError(
                f"tool_choice type {kind!r} is not understood.", param="tool_choice"
            )
        body["tool_choice"] = mapped
        if choice.get("disable_parallel_tool_use") and tools:
            body["parallel_tool_calls"] = False
    return body


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _bad(f"{where}: only text blocks are supported here.", "messages")
            texts.append(str(block.get("text", "")))
        return "".join(texts)
    raise BadRequestError(f"{where} must be text or text blocks.", param="messages")


def _turn(msg: Mapping[str, Any], i: int) -> list[dict[str, Any]]:
    """One Anthropic turn as OpenAI messages: tool results become `tool` messages first."""
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": msg["role"], "content": content}]
    if not isinstance(content, list):
        raise BadRequestError(f"messages.{i}.content must be text or blocks.", param="messages")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image" and msg["role"] == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, i)}})
        elif kind == "tool_use" and msg["role"] == "assistant":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": arguments},
                }
            )
        elif kind == "tool_result" and msg["role"] == "user":
            result = block.get("content")
            text = _text_of(result, f"messages.{i}.tool_result") if result is not None else ""
            if block.get("is_error"):
                text = f"Error: {text}"
            out.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}
            )
        elif kind in ("thinking", "redacted_thinking") and msg["role"] == "assistant":
            continue  # the model's own earlier reasoning: nothing an OpenAI backend takes
        else:
            raise _bad(
                f"messages.{i}: a {kind!r} block is not supported by this model's backend.",
                "messages",
            )
    if msg["role"] == "assistant":
        text = "".join(p["text"] for p in parts)
        turn: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            turn["tool_calls"] = calls
        if text or calls:
            out.append(turn)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append(
            {"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts}
        )
    return out


def _image_url(block: Mapping[str, Any], i: int) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise _bad(f"messages.{i}: image source {source.get('type')!r} is not supported.", "messages")


def _tool(tool: Any) -> dict[str, Any]:
    if (
        not isinstance(tool, dict)
        or "input_schema" not in tool
        or tool.get("type")
        not in (
            None,
            "custom",
        )
    ):
        name = tool.get("type") if isinstance(tool, dict) else tool
        raise _bad(f"Tool {name!r} is not supported by this model's backend.", "tools")
    fn: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


class ChatToMessages:
    """Translates an OpenAI member's answers for an Anthropic client."""

    def answer(self, body: bytes, model: str) -> bytes:
        doc = orjson.loads(body)
        choice = (doc.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id", ""),
                    "name": fn.get("name", ""),
                    "input": _arguments(fn.get("arguments")),
                }
            )
        usage = doc.get("usage") or {}
        return orjson.dumps(
            {
                "id": _message_id(doc.get("id", "")),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "", "end_turn"),
                "stop_sequence": None,
                "usage": {
                    "input_tokens": int(usage.get("prompt_tokens") or 0),
                    "output_tokens": int(usage.get("completion_tokens") or 0),
                },
            }
        )

    def stream(
        self, chunks: AsyncIterator[bytes], model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        return _events(chunks, model)

    def error(self, status: int, body: bytes) -> bytes:
        try:
            err = orjson.loads(body).get("error") or {}
            message = str(err.get("message", "")) if isinstance(err, dict) else str(err)
        except (orjson.JSONDecodeError, AttributeError):
            message = ""
        return anthropic_error_body(status, message or f"The backend answered HTTP {status}.")


def _arguments(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        return orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": str(raw)}


def _message_id(chat_id: str) -> str:
    return "msg_" + (chat_id.removeprefix("chatcmpl-") or "llmpool")


def _event(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **doc}) + b"\n\n"


async def _events(chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    """OpenAI chat.completion.chunk events as the Messages API's stream: message_start, a
    content block per text run and per tool call (with input_json_delta pieces),
    message_delta with the stop reason and usage, message_stop."""
    state = _MessageStream(model)
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > _MAX_EVENT_BYTES:
            yield _event("error", {"error": {"type": "api_error", "message": "Event too large."}})
            return
        while (end := buffer.find(b"\n\n")) >= 0:
            raw, buffer = buffer[:end], buffer[end + 2 :]
            lines = raw.split(b"\n")
            data = b"".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
            for out in state.on_data(data):
                yield out
            if state.ended:
                return
    if state.started:
        # The member closed its stream without [DONE]: close the message all the same.
        for out in state.finish():
            yield out


class _MessageStream:
    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.ended = False
        self.block = -1  # the open content block's index; -1: none open
        self.open_kind = ""
        self.tools: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self.stop_reason = "end_turn"
        self.output_tokens = 0

    def on_data(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if data == b"[DONE]":
            return self.finish()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(doc, dict):
            return []
        if "error" in doc:
            self.ended = True
            err = doc["error"]
            message = err.get("message") if isinstance(err, dict) else err
            error = {"type": "api_error", "message": str(message or "The backend failed.")}
            return [_event("error", {"error": error})]
        out = [] if self.started else [self._start(str(doc.get("id", "")))]
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.output_tokens = int(usage.get("completion_tokens") or self.output_tokens)
        for choice in doc.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(str(delta["content"]))
            for call in delta.get("tool_calls") or ():
                out += self._tool(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def _start(self, chat_id: str) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": _message_id(chat_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = [_event("content_block_stop", {"index": self.block})] if self.block >= 0 else []
        self.block += 1
        self.open_kind = kind
        out.append(_event("content_block_start", {"index": self.block, "content_block": block}))
        return out

    def _text(self, text: str) -> list[bytes]:
        out = [] if self.open_kind == "text" else self._open("text", {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        out.append(_event("content_block_delta", {"index": self.block, "delta": delta}))
        return out

    def _tool(self, call: Any) -> list[bytes]:
        if not isinstance(call, dict):
            return []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        out: list[bytes] = []
        if index not in self.tools:
            use = {"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", "")}
            out = self._open(f"tool{index}", {**use, "input": {}})
            self.tools[index] = self.block
        if fn.get("arguments"):
            piece = {"type": "input_json_delta", "partial_json": fn["arguments"]}
            out.append(_event("content_block_delta", {"index": self.tools[index], "delta": piece}))
        return out

    def finish(self) -> list[bytes]:
        self.ended = True
        out = [_event("content_block_stop", {"index": self.block})] if self.block >= 0 else []
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        usage = {"output_tokens": self.output_tokens}
        out.append(_event("message_delta", {"delta": delta, "usage": usage}))
        out.append(_event("message_stop", {}))
        return out
