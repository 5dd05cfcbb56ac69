"""Reading and parsing OpenAI request bodies: only what routing needs, the rest passes through."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive

from gateway.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError


class Endpoint(enum.Enum):
    """An OpenAI API the gateway relays; value is the upstream path."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"
    # Anthropic's Messages API, for Anthropic clients (gateway/providers/messages_in.py).
    MESSAGES = "/v1/messages"

    @property
    def streams(self) -> bool:
        return self is not Endpoint.EMBEDDINGS

    @property
    def required_field(self) -> str:
        return _REQUIRED[self]


_REQUIRED = {
    Endpoint.CHAT: "messages",
    Endpoint.COMPLETIONS: "prompt",
    Endpoint.EMBEDDINGS: "input",
    Endpoint.MESSAGES: "messages",
}


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The original body bytes plus the few fields the gateway reads."""

    endpoint: Endpoint
    body: bytes
    payload: Mapping[str, Any]
    model: str
    stream: bool

    def body_for(self, upstream_model: str | None) -> bytes:
        """The bytes to send upstream: unchanged unless the member serves another model name."""
        if upstream_model is None or upstream_model == self.model:
            return self.body
        return orjson.dumps({**self.payload, "model": upstream_model})


# Bounds on what one request may ask for: OpenAI's own limits for embeddings (2,048 inputs,
# 300,000 tokens in token arrays), the same for batched completion prompts, at most 128
# choices. Without them 700 KB of input asked for an 811 MB answer.
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 300_000
MAX_CHOICES = 128
MAX_MODEL_CHARS = 256


class ClientDisconnected(Exception):
    """The client went away before its request body had arrived."""


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI header pairs (names already lower case) as a dict; the first of repeated names wins,
    as with Starlette's Headers.get."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers


def check_headers(headers: Mapping[str, str], max_body_bytes: int) -> None:
    """Rejects a wrong Content-Type (415) or a declared length over the limit (413), unread."""
    ctype = headers.get("content-type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, got {ctype or 'none'!r}."
        )
    length = headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BadRequestError("Content-Length is not a number.") from None
        if declared > max_body_bytes:
            raise _too_large(max_body_bytes)


async def receive_body(receive: Receive, max_body_bytes: int) -> bytes:
    """Reads the body from ASGI `receive`, counting against the limit as it arrives."""
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > max_body_bytes:
            raise _too_large(max_body_bytes)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_body_bytes:
            raise _too_large(max_body_bytes)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"Request body is larger than the gateway's limit of {limit} bytes."
    )


def parse_request(endpoint: Endpoint, body: bytes) -> ParsedRequest:
    """Parses once with orjson and validates the fields routing needs; 400 with param otherwise."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"Request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise BadRequestError("Request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' is required and must be a non-empty string.", param="model")
    if len(model) > MAX_MODEL_CHARS:
        raise BadRequestError(
            f"'model' is longer than {MAX_MODEL_CHARS} characters.", param="model"
        )
    field = endpoint.required_field
    value = payload.get(field)
    if endpoint is Endpoint.MESSAGES:
        asked = payload.get("max_tokens")
        if type(asked) is not int or asked < 1:
            raise BadRequestError(
                "'max_tokens' is required: a positive integer.", param="max_tokens"
            )
    if endpoint is Endpoint.CHAT or endpoint is Endpoint.MESSAGES:
        if not isinstance(value, list) or not value:
            raise BadRequestError(
                "'messages' is required and must be a non-empty array.", param="messages"
            )
    elif isinstance(value, list):
        _check_inputs(value, field)
    elif not isinstance(value, str):
        raise BadRequestError(
            f"'{field}' is required and must be a string or an array.", param=field
        )
    n = payload.get("n")
    if n is not None and (type(n) is not int or not 1 <= n <= MAX_CHOICES):
        raise BadRequestError(f"'n' must be an integer from 1 to {MAX_CHOICES}.", param="n")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be a boolean.", param="stream")
    return ParsedRequest(
        endpoint=endpoint,
        body=body,
        payload=payload,
        model=model,
        stream=stream and endpoint.streams,
    )


def _check_inputs(value: list[Any], field: str) -> None:
    """An array of inputs (strings, or token arrays) within MAX_INPUTS and MAX_INPUT_TOKENS."""
    if not value:
        raise BadRequestError(f"'{field}' must not be an empty array.", param=field)
    if isinstance(value[0], int):
        # One prompt given as token ids.
        if len(value) > MAX_INPUT_TOKENS:
            raise _too_many_tokens(field)
        return
    if len(value) > MAX_INPUTS:
        raise BadRequestError(
            f"'{field}' has {len(value)} inputs; at most {MAX_INPUTS} per request.", param=field
        )
    tokens = 0
    for item in value:
        if isinstance(item, list):
            tokens += len(item)
    if tokens > MAX_INPUT_TOKENS:
        raise _too_many_tokens(field)


def _too_many_tokens(field: str) -> BadRequestError:
    return BadRequestError(
        f"'{field}' holds more than {MAX_INPUT_TOKENS} tokens; split it into several requests.",
        param=field,
    )
