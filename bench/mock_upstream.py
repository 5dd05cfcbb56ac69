"""A fast mock OpenAI server: raw asyncio Protocol on uvloop, pre-built response bytes.

Serves, with HTTP/1.1 keep-alive (and pipelining):
- ``POST /v1/chat/completions`` and ``/v1/completions``: a fixed ``chat.completion`` JSON with
  usage; with ``"stream": true`` in the body, an SSE stream of ``--sse-chunks`` chunks sent
  ``--sse-interval-ms`` apart (chunked transfer encoding), then ``data: [DONE]``;
- ``GET /health``, ``/v1/models``, ``/get_model_info``, ``/get_server_info``, ``/metrics``:
  what gateways and routers probe before they accept a worker.

Run: ``python -m bench.mock_upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import sys
from typing import cast

import orjson

from bench import aio

MODEL = "bench"

_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')

CHAT_COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
)

MODELS = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "bench"}],
    }
)

MODEL_INFO = orjson.dumps(
    {
        "model_path": MODEL,
        "tokenizer_path": MODEL,
        "is_generation": True,
        "served_model_name": MODEL,
    }
)


def response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    """A complete keep-alive HTTP/1.1 response."""
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def http_chunk(data: bytes) -> bytes:
    """One chunk of a chunked transfer-encoded body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse_events(chunks: int, usage: bool) -> list[bytes]:
    """The SSE events of one stream: ``chunks`` deltas (the last one ends with finish_reason),
    an optional usage chunk, then ``[DONE]``. Each item is one HTTP chunk, ready to write."""
    events: list[bytes] = []
    for i in range(chunks):
        last = i == chunks - 1
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": f"t{i} "},
                    "finish_reason": "stop" if last else None,
                }
            ],
        }
        events.append(http_chunk(b"data: " + orjson.dumps(payload) + b"\n\n"))
    if usage:
        payload_u = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": chunks,
                "total_tokens": 12 + chunks,
            },
        }
        events.append(http_chunk(b"data: " + orjson.dumps(payload_u) + b"\n\n"))
    events.append(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return events


SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)

ROUTES_GET: dict[bytes, bytes] = {
    b"/health": response("200 OK", b"OK", b"text/plain"),
    b"/healthz": response("200 OK", b"OK", b"text/plain"),
    b"/v1/models": response("200 OK", MODELS),
    b"/get_model_info": response("200 OK", MODEL_INFO),
    b"/get_server_info": response("200 OK", MODEL_INFO),
    b"/metrics": response("200 OK", b"", b"text/plain"),
}
NON_STREAM = response("200 OK", CHAT_COMPLETION)
NOT_FOUND = response("404 Not Found", b'{"error":{"message":"not found","type":"not_found"}}')
POST_PATHS = (b"/v1/chat/completions", b"/v1/completions", b"/chat/completions")


class MockConfig:
    """Settings shared by every connection; the benchmark changes the SSE pacing between phases
    with POST /mock/sse-interval-ms (a number), sent to the mock directly, not through a proxy."""

    def __init__(self, chunks: int, interval_s: float) -> None:
        self.chunks = chunks
        self.interval_s = interval_s


CONTROL_PATH = "/mock/sse-interval-ms"


class MockProtocol(asyncio.Protocol):
    """One connection. Requests are answered in order; a streaming answer holds the ones
    pipelined behind it until it ends."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.streaming is None:
            self._process()

    def _process(self) -> None:
        while self.transport is not None and self.streaming is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) < 2:
                self.transport.close()
                return
            method, path = parts[0], parts[1].split(b"?", 1)[0]
            length = 0
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value.strip())
                elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif lname == b"connection" and value.strip().lower() == b"close":
                    self.close_after = True
            start = end + 4
            if chunked:
                decoded = _dechunk(self.buf, start)
                if decoded is None:
                    return
                body, consumed = decoded
                del self.buf[:consumed]
            else:
                if len(self.buf) < start + length:
                    return
                body = bytes(self.buf[start : start + length])
                del self.buf[: start + length]
            self._answer(method, path, body)
            if self.close_after and self.streaming is None and self.transport is not None:
                self.transport.close()

    def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if method == b"POST" and path == CONTROL_PATH.encode():
            try:
                self.config.interval_s = max(0.0, float(body) / 1000.0)
                self.transport.write(response("200 OK", b"{}"))
            except ValueError:
                self.transport.write(response("400 Bad Request", b'{"error": "not a number"}'))
            return
        if method == b"POST" and path in POST_PATHS:
            if _STREAM_RE.search(body):
                usage = b"include_usage" in body
                self.streaming = asyncio.get_running_loop().create_task(self._stream(usage))
            else:
                self.transport.write(NON_STREAM)
            return
        self.transport.write(ROUTES_GET.get(path, NOT_FOUND) if method == b"GET" else NOT_FOUND)

    async def _stream(self, usage: bool) -> None:
        transport = self.transport
        assert transport is not None
        events = sse_events(self.config.chunks, usage)
        interval_s = self.config.interval_s
        transport.write(SSE_HEADERS + events[0])
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for event in events[1:]:
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if self.transport is None:
                return
            transport.write(event)
        self.streaming = None
        if self.close_after:
            transport.close()
        elif self.buf:
            self._process()


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decodes a chunked body starting at ``start``: (body, bytes consumed), or None if
    incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


async def serve(host: str, port: int, chunks: int, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    config = MockConfig(chunks, interval_s)
    server = await loop.create_server(
        lambda: MockProtocol(config), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream listening on {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--sse-chunks", type=int, default=20)
    parser.add_argument("--sse-interval-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    aio.run(serve(args.host, args.port, args.sse_chunks, args.sse_interval_ms / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
