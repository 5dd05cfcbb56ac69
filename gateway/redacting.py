"""The relay's side of redaction (gateway/redaction.py): a pool's requests to its backends go
redacted, and with `restore` the placeholders in the answer are put back, in a whole body or
in a stream (OpenAI chunks or Messages API events), however the events split them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from gateway.errors import BadRequestError
from gateway.parsing import ParsedRequest
from gateway.redaction import Redactor, StreamRestorer, restore_json_answer


@dataclass(frozen=True, slots=True)
class Redacted:
    """A request as its pool's backends get it, and what to put back in their answers (empty:
    nothing to restore)."""

    req: ParsedRequest
    restore: Mapping[str, str]

    def answer(self, body: bytes) -> bytes:
        return restore_json_answer(body, self.restore) if self.restore else body

    def stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return restore_stream(chunks, self.restore) if self.restore else chunks


def redact(redactor: Redactor, req: ParsedRequest) -> Redacted | None:
    """req with its personal data replaced; None when it holds none."""
    try:
        found = redactor.redact(req.payload)
    except ValueError:
        # Nested past what the redactor walks: refused rather than sent unredacted.
        raise BadRequestError(
            "The request nests too deeply to be checked for personal data."
        ) from None
    if found is None:
        return None
    body = orjson.dumps(found.payload)
    redacted = replace(req, body=body, payload=found.payload)
    return Redacted(redacted, found.mapping if redactor.profile.restore else {})


async def restore_stream(
    chunks: AsyncIterator[bytes], mapping: Mapping[str, str]
) -> AsyncIterator[bytes]:
    """An SSE stream with placeholders put back in its text: each event's text goes through a
    restorer per choice or content block, which holds back a placeholder split across events;
    what is held goes out with the choice's last chunk or before the block stops."""
    restorers: dict[Any, StreamRestorer] = {}
    pending = b""
    async for chunk in chunks:
        pending += chunk
        out = []
        while (end := _event_end(pending)) >= 0:
            event, pending = pending[:end], pending[end:]
            out.append(_restore_event(event, mapping, restorers))
        if out:
            yield b"".join(out)
    if pending:
        yield pending


def _event_end(buffer: bytes) -> int:
    """Where the first whole event of buffer ends (after its blank line); -1 for none yet."""
    found = [i for i in (buffer.find(b"\n\n"), buffer.find(b"\r\n\r\n")) if i >= 0]
    if not found:
        return -1
    i = min(found)
    return i + (2 if buffer[i : i + 2] == b"\n\n" else 4)


def _restore_event(
    event: bytes, mapping: Mapping[str, str], restorers: dict[Any, StreamRestorer]
) -> bytes:
    lines = event.split(b"\n")
    for n, line in enumerate(lines):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data.startswith(b"{"):
            continue
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        extra = _restore_doc(doc, mapping, restorers)
        lines[n] = b"data: " + orjson.dumps(doc)
        if extra is not None:
            # Text held back at a block's end: its own delta event, before this one.
            prefix = b"event: content_block_delta\ndata: " + orjson.dumps(extra) + b"\n\n"
            return prefix + b"\n".join(lines)
    return b"\n".join(lines)


def _restore_doc(
    doc: Any, mapping: Mapping[str, str], restorers: dict[Any, StreamRestorer]
) -> dict[str, Any] | None:
    """Restores doc's text in place; returns an extra Messages API event to send first, if any."""
    if not isinstance(doc, dict):
        return None
    kind = doc.get("type")
    if kind == "content_block_delta":
        delta = doc.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("text"), str):
            block = restorers.setdefault(("block", doc.get("index")), StreamRestorer(mapping))
            delta["text"] = block.feed(delta["text"])
        return None
    if kind == "content_block_stop":
        ending = restorers.pop(("block", doc.get("index")), None)
        held = ending.flush() if ending is not None else ""
        if held:
            return {
                "type": "content_block_delta",
                "index": doc.get("index"),
                "delta": {"type": "text_delta", "text": held},
            }
        return None
    for choice in doc.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        key = ("choice", choice.get("index"))
        delta = choice.get("delta")
        target, field = (delta, "content") if isinstance(delta, dict) else (choice, "text")
        text = target.get(field)
        if isinstance(text, str):
            target[field] = restorers.setdefault(key, StreamRestorer(mapping)).feed(text)
        last = restorers.pop(key, None) if choice.get("finish_reason") else None
        if last is not None:
            held = last.flush()
            if held:
                target[field] = (target.get(field) or "") + held
    return None
