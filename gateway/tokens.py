"""Token usage from upstream answers: the `usage` object of a JSON body or of an SSE chunk."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt: int = 0
    completion: int = 0
    # Of prompt, the tokens read from a prompt cache (priced apart by some providers).
    cached: int = 0


NO_USAGE = TokenUsage()


def usage_from_object(doc: Any) -> TokenUsage | None:
    """The usage of a decoded response object, or None when it carries none."""
    if not isinstance(doc, dict):
        return None
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:
        # The Messages API's usage (answers to Anthropic clients); cache reads and writes are
        # prompt tokens too.
        prompt = sum(
            n if isinstance(n, int) else 0
            for n in (
                usage.get("input_tokens", 0),
                usage.get("cache_read_input_tokens", 0),
                usage.get("cache_creation_input_tokens", 0),
            )
        )
        completion = usage.get("output_tokens", 0)
        cached = usage.get("cache_read_input_tokens", 0)
    else:
        prompt = usage.get("prompt_tokens", 0)
        completion = usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return TokenUsage(
        prompt=prompt if isinstance(prompt, int) else 0,
        completion=completion if isinstance(completion, int) else 0,
        cached=cached if isinstance(cached, int) else 0,
    )


def usage_from_json(body: bytes) -> TokenUsage:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return NO_USAGE
    return usage_from_object(doc) or NO_USAGE


def usage_from_sse(text: bytes) -> TokenUsage:
    """The last usage in SSE text (engines send it in the final chunk, or in every chunk)."""
    for line in reversed(text.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            doc = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        usage = usage_from_object(doc)
        if usage is not None:
            return usage
    return NO_USAGE


class StreamTail:
    """Keeps roughly the last `limit` bytes of a stream, where the usage chunk is, without copying
    every chunk into one growing buffer."""

    def __init__(self, limit: int = 16384) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self._limit and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())

    def text(self) -> bytes:
        return b"".join(self._chunks)
