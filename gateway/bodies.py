"""What the relay reads from or splices into a request body besides routing: the first-byte
deadline a request gets, the stream usage it asks for, the tokens it may use."""

from __future__ import annotations

import orjson

from gateway.parsing import Endpoint, ParsedRequest
from gateway.ttft import CHARS_PER_TOKEN

# A non-streamed generation's first byte is its whole answer: it gets this long per token asked
# for on top of the deadline (a floor on decode speed that any engine keeps).
_SECONDS_PER_TOKEN = 0.2


def first_byte_deadline(ttfb_s: float, req: ParsedRequest) -> float | None:
    """Seconds the try has for its first byte; None (only the upstream timeout) for a
    non-streamed generation with no max_tokens, whose length nothing bounds."""
    if req.stream or req.endpoint is Endpoint.EMBEDDINGS:
        return ttfb_s
    asked = req.payload.get("max_completion_tokens") or req.payload.get("max_tokens")
    if type(asked) is not int or asked <= 0:
        return None
    n = req.payload.get("n")
    choices = n if type(n) is int and n > 1 else 1
    return ttfb_s + asked * choices * _SECONDS_PER_TOKEN


_ASK_USAGE = b'{"stream_options":{"include_usage":true},'


def with_usage(body: bytes, req: ParsedRequest) -> bytes:
    """body (a JSON object) asking the member for usage in its stream. Without stream_options
    the key goes in front (a copy of the bytes, no re-serialising); with its own, the client's
    options are kept and include_usage added."""
    options = req.payload.get("stream_options")
    if "stream_options" not in req.payload:
        start = body.find(b"{")
        if start >= 0 and body[start + 1 :].lstrip()[:1] not in (b"}", b""):
            return body[:start] + _ASK_USAGE + body[start + 1 :]
    payload = orjson.loads(body)
    asked = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps({**payload, "stream_options": asked})


def wants_usage(req: ParsedRequest) -> bool:
    options = req.payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def token_estimate(req: ParsedRequest) -> float:
    """Tokens the request may use, before it has: its body's size in tokens plus what it asks
    for at most (for limits that must take tokens when admitting)."""
    asked = req.payload.get("max_completion_tokens") or req.payload.get("max_tokens")
    return len(req.body) / CHARS_PER_TOKEN + (asked if type(asked) is int and asked > 0 else 0)
