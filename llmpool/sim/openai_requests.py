"""Parses OpenAI request bodies into typed requests; ApiError carries an OpenAI-shaped error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llmpool.sim.textgen import tool_arguments
from llmpool.sim.tokens import ChatMessage, render_chat

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ToolCallPlan:
    """The function call the engine answers with instead of text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class GenerateRequest:
    """A chat or text completion request reduced to what the engine needs."""

    model: str
    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool
    tool_call: ToolCallPlan | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    base64: bool
    dimensions: int


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    return body


def _model(body: dict[str, Any], served: str) -> str:
    model = body.get("model", served)
    if not isinstance(model, str):
        raise _bad("model must be a string", "model")
    if model != served:
        raise ApiError(
            404,
            f"The model `{model}` does not exist; this engine serves `{served}`.",
            param="model",
            code="model_not_found",
        )
    return model


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(f"{name} must be an integer >= 1, got {value!r}", name)
    return value


def _common(body: dict[str, Any], served: str, default_max: int) -> tuple[str, int, bool, bool]:
    model = _model(body, served)
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    n = body.get("n", 1)
    if n not in (None, 1):
        raise _bad("only n=1 is supported by sim-engine", "n")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    include_usage = bool(options.get("include_usage", False))
    return model, max_tokens or default_max, stream, include_usage


def _content_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise _bad(f"messages[{index}].content parts must be objects", "messages")
            text = part.get("text")
            texts.append(text if isinstance(text, str) else f"<{part.get('type', 'part')}>")
        return "".join(texts)
    raise _bad(f"messages[{index}].content must be a string or a list of parts", "messages")


def _messages(body: dict[str, Any]) -> list[ChatMessage]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages is required: a non-empty list of {role, content} objects", "messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise _bad(f"messages[{i}] needs a role, one of {sorted(_ROLES)}", "messages")
        text = _content_text(m.get("content"), i)
        if m.get("tool_calls"):
            text += orjson.dumps(m["tool_calls"]).decode()
        messages.append(ChatMessage(m["role"], text))
    return messages


def _tool_call(body: dict[str, Any]) -> ToolCallPlan | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none", "auto"):
            raise _bad("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    functions: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(
                f"tools[{i}] must be {{type: function, function: {{name, parameters}}}}", "tools"
            )
        functions[fn["name"]] = fn.get("parameters")
    if choice == "required":
        if not functions:
            raise _bad("tool_choice is required but tools is empty", "tool_choice")
        name = next(iter(functions))
    elif isinstance(choice, dict):
        fn = choice.get("function")
        chosen = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(chosen, str) or chosen not in functions:
            raise _bad(f"tool_choice names {chosen!r}, which is not in tools", "tool_choice")
        name = chosen
    elif choice in (None, "none", "auto"):
        return None  # the engine never decides by itself to call a tool
    else:
        raise _bad(
            "tool_choice must be none, auto, required or {type: function, ...}", "tool_choice"
        )
    return ToolCallPlan(name, tool_arguments(functions[name]))


def parse_chat(body: dict[str, Any], served: str, default_max: int) -> GenerateRequest:
    model, max_tokens, stream, include_usage = _common(body, served, default_max)
    prompt = render_chat(_messages(body))
    return GenerateRequest(model, prompt, max_tokens, stream, include_usage, _tool_call(body))


def parse_completion(body: dict[str, Any], served: str, default_max: int) -> GenerateRequest:
    model, max_tokens, stream, include_usage = _common(body, served, default_max)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt is required: a string (or a list of one string)", "prompt")
    return GenerateRequest(model, prompt, max_tokens, stream, include_usage)


def parse_embedding(body: dict[str, Any], served: str, dim: int) -> EmbeddingRequest:
    model = _model(body, served)
    raw = body.get("input")
    inputs: list[str]
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [" ".join(map(str, raw))]  # one prompt given as token ids
    elif isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
        inputs = [" ".join(map(str, x)) for x in raw]
    else:
        raise _bad("input is required: a string or a non-empty list of strings", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _bad("encoding_format must be float or base64", "encoding_format")
    dimensions = _positive_int(body, "dimensions") or dim
    if dimensions > dim:
        raise _bad(f"dimensions must be at most {dim}", "dimensions")
    return EmbeddingRequest(model, inputs, fmt == "base64", dimensions)
