"""Prompt text of a request body: plain (content rules) and role-tagged (prefix hashing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Separators that cannot appear in JSON-decoded text by accident often enough to matter.
_ROLE_END = "\x1f"
_MESSAGE_END = "\x1e"


def prompt_text(payload: Mapping[str, Any]) -> str:
    """Chat message contents joined by newlines, or the completion prompt / embeddings input."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))
    return _plain_prompt(payload)


def prefix_key(payload: Mapping[str, Any]) -> str:
    """Text whose prefixes name what an engine can reuse from its prefix cache.

    Each chat message becomes role, a separator, its content, an end mark, in order, as the
    engine's chat template lays them out: the next turn of a conversation (earlier messages,
    the assistant's reply, a new user message) starts with exactly the previous turn's key."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            parts.append(role if isinstance(role, str) else "")
            parts.append(_ROLE_END)
            parts.append(content_text(m.get("content")))
            parts.append(_MESSAGE_END)
        return "".join(parts)
    return _plain_prompt(payload)


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
