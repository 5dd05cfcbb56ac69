"""An OpenAI chat completion request as an Anthropic Messages API request (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import BadRequestError

# Anthropic requires max_tokens; OpenAI clients often leave it out.
DEFAULT_MAX_TOKENS = 4096
# Request fields that translate, or that mean nothing upstream and are dropped (metadata is
# OpenAI's stored-completions tagging; stream_options is handled by the gateway).
_KNOWN = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
        "user", "n", "metadata",
    }
)  # fmt: skip
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _bad(message: str, param: str | None = None) -> BadRequestError:
    return BadRequestError(message, param=param, code="unsupported_by_backend")


def to_anthropic(payload: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The Messages API body for `payload` (an OpenAI chat request) sent to `model`; a
    BadRequestError names any field that cannot be carried over rather than dropping it."""
    unknown = sorted(k for k in payload if k not in _KNOWN)
    if unknown:
        raise _bad(
            f"Field {unknown[0]!r} is not supported by this model's backend (Anthropic); "
            "remove it.",
            unknown[0],
        )
    n = payload.get("n")
    if n not in (None, 1):
        raise _bad("Only n=1 is supported by this model's backend (Anthropic).", "n")
    system, messages = _messages(payload.get("messages"))
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": _max_tokens(payload),
    }
    if system:
        body["system"] = system
    for name in ("temperature", "top_p"):
        value = payload.get(name)
        if value is not None:
            body[name] = value
    stop = payload.get("stop")
    if stop is not None:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("stream"):
        body["stream"] = True
    user = payload.get("user")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    tools = payload.get("tools")
    if tools:
        body["tools"] = [_tool(t) for t in tools]
    choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    if choice is not None:
        if choice.get("type") == "none" and not tools:
            pass
        else:
            body["tool_choice"] = choice
    return body


def _max_tokens(payload: Mapping[str, Any]) -> int:
    value = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if value is None:
        return DEFAULT_MAX_TOKENS
    if type(value) is not int or value < 1:
        raise BadRequestError("max_tokens must be a positive integer.", param="max_tokens")
    return value


def _messages(raw: Any) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """(system, messages): system and developer messages become the system prompt; tool
    results become user turns; consecutive turns of one role merge (Anthropic alternates)."""
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("messages must be a non-empty list.", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise BadRequestError(f"messages[{i}] must be an object.", param="messages")
        role = msg.get("role")
        if role in ("system", "developer"):
            system += _blocks(msg.get("content"), i, allow_images=False)
        elif role == "user":
            _append(turns, "user", _blocks(msg.get("content"), i))
        elif role == "assistant":
            blocks = _blocks(msg.get("content"), i, allow_images=False, allow_empty=True)
            for call in msg.get("tool_calls") or ():
                blocks.append(_tool_use(call, i))
            if blocks:
                _append(turns, "assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(msg.get("tool_call_id") or ""),
                "content": _blocks(msg.get("content"), i, allow_images=False, allow_empty=True),
            }
            _append(turns, "user", [result])
        else:
            raise BadRequestError(
                f"messages[{i}].role {role!r} is not supported by this model's backend.",
                param="messages",
            )
    if not turns:
        raise BadRequestError(
            "messages needs a user message for this model's backend (Anthropic).",
            param="messages",
        )
    if len(system) == 1 and system[0].get("type") == "text" and set(system[0]) == {"type", "text"}:
        return system[0]["text"], turns
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _blocks(
    content: Any, i: int, *, allow_images: bool = True, allow_empty: bool = False
) -> list[dict[str, Any]]:
    if content is None:
        if allow_empty:
            return []
        raise BadRequestError(f"messages[{i}].content is missing.", param="messages")
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content or not allow_empty else []
    if not isinstance(content, list):
        raise BadRequestError(f"messages[{i}].content must be text or parts.", param="messages")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url" and allow_images:
            blocks.append(_image(part.get("image_url"), i))
        else:
            raise _bad(
                f"messages[{i}]: content part {kind!r} is not supported here by this model's "
                "backend (Anthropic).",
                "messages",
            )
    return blocks


def _image(image: Any, i: int) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise BadRequestError(f"messages[{i}]: image_url needs a url.", param="messages")
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media, _, encoding = head.partition(";")
        if encoding != "base64" or media not in _IMAGE_TYPES:
            raise _bad(
                f"messages[{i}]: images must be base64 data URLs of "
                f"{', '.join(_IMAGE_TYPES)} for this model's backend (Anthropic).",
                "messages",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequestError(f"messages[{i}]: image url must be https:// or data:.", param="messages")


def _tool_use(call: Any, i: int) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise BadRequestError(f"messages[{i}].tool_calls needs functions.", param="messages")
    arguments = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise BadRequestError(
            f"messages[{i}].tool_calls arguments must be JSON.", param="messages"
        ) from None
    return {
        "type": "tool_use",
        "id": str(call.get("id") or ""),
        "name": fn["name"],
        "input": parsed,
    }


def _tool(tool: Any) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
        raise _bad("Only function tools are supported by this model's backend.", "tools")
    out: dict[str, Any] = {
        "name": fn.get("name"),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out: dict[str, Any] | None = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise BadRequestError(f"tool_choice {choice!r} is not understood.", param="tool_choice")
    if parallel is False:
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out
