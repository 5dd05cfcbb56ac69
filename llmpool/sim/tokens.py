"""A deterministic cheap tokenizer, the chat template and chain-hashed prompt blocks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

# About four characters a token, like BPE on English text; a prefix of a text tokenizes to a
# prefix of its tokens (all but the last one), which is what makes prefix caching work.
_TOKEN = re.compile(r"\s*\S{1,4}|\s+$")


def tokenize(text: str) -> list[str]:
    """Splits text into tokens whose concatenation is the text."""
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class ChatMessage:
    """One chat message, already reduced to text (tool calls rendered as JSON)."""

    role: str
    content: str


def render_chat(messages: Sequence[ChatMessage]) -> str:
    """Renders messages with role markers so that a shared system prompt is a shared prefix."""
    parts = [f"<|{m.role}|>\n{m.content}\n" for m in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)


def block_hashes(tokens: Sequence[str], block_size: int, seed: str) -> list[bytes]:
    """Chain hashes of the full blocks of a prompt: h_i = H(h_{i-1}, block_i), h_{-1} = H(seed)."""
    previous = hashlib.blake2b(seed.encode(), digest_size=16).digest()
    hashes: list[bytes] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        h = hashlib.blake2b(previous, digest_size=16)
        for token in tokens[start : start + block_size]:
            h.update(token.encode())
            h.update(b"\x00")
        previous = h.digest()
        hashes.append(previous)
    return hashes
