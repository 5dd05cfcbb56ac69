"""Prompt text of a request body: plain (content rules) and role-tagged (prefix hashing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


def prompt_text(payload: Mapping[str, Any]) -> str:
    """Chat message contents joined by newlines, or the completion prompt / embeddings input."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))
    return _plain_prompt(payload)


def prefix_key(payload: Mapping[str, Any], body: bytes = b"") -> bytes | memoryview:
    """Bytes whose prefixes name what an engine can reuse from its prefix cache.

    A chat is its messages as JSON, every field of each message in order, as the engine's
    chat template lays them out, so the next turn of a conversation (earlier messages, the
    assistant's reply, a new user message) starts with the previous turn's key less its closing
    bracket. Taken from the raw body where there is one (from the `"messages"` key on, or
    Anthropic's `"system"` when it comes first): what follows the messages only changes the
    key's tail, and a 128 KB prompt is not serialized again on the hot path (bench/pick.py).
    Other requests: the prompt or input text."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        system = payload.get("system")
        if body:
            at = body.find(b'"messages"')
            if system is not None:
                before = body.find(b'"system"')
                at = before if 0 <= before < at else -1
            if at > 0:
                # A view: copying a 128 KB body costs more than all the rest of the key.
                return memoryview(body)[at:]
        try:
            return orjson.dumps(messages if system is None else [system, messages])
        except TypeError:
            return b""
    return _plain_prompt(payload).encode()


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multi-part content: keep the text parts only.
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _plain_prompt(payload: Mapping[str, Any]) -> str:
    for key in ("prompt", "input"):
        value = payload.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(v for v in value if isinstance(v, str))
    return ""
