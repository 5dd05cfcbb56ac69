"""Streams one chat request over a raw keep-alive connection and times every token it reads."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson

from bench.loadgen import Connection, parse_head
from bench.sse import ChunkedDecoder


@dataclass
class Outcome:
    """What one request looked like from the client (wall seconds, perf_counter clock)."""

    status: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens: int = 0
    text: str = ""
    done: bool = False
    error: str = ""
    member: str = ""  # the gateway's x-llmpool-member header: who served it
    token_times: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.done and 200 <= self.status < 300 and not self.error

    def mean_itl(self) -> float | None:
        """Mean gap between tokens after the first (None with fewer than two tokens)."""
        if self.tokens < 2 or self.first_token_at is None or self.last_token_at is None:
            return None
        return (self.last_token_at - self.first_token_at) / (self.tokens - 1)


class SseText:
    """Splits an SSE byte stream into events; returns the content deltas each feed completes."""

    def __init__(self) -> None:
        self._tail = b""
        self.done = False

    def feed(self, data: bytes) -> list[str]:
        buf = (self._tail + data).replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._tail = parts.pop()
        pieces: list[str] = []
        for event in parts:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    continue
                pieces.extend(_deltas(payload))
        return pieces


def _deltas(payload: bytes) -> list[str]:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    out: list[str] = []
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str) and content:
            out.append(content)
    return out


def request_bytes(host: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"content-type: application/json\r\naccept: text/event-stream\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def stream_chat(conn: Connection, raw: bytes, out: Outcome) -> None:
    """Sends one streaming request on conn and fills `out` as tokens arrive (so a caller that
    times out still sees what came)."""
    conn.writer.write(raw)
    head_bytes = await conn.reader.readuntil(b"\r\n\r\n")
    head = parse_head(head_bytes)
    out.status = head.status
    at = head_bytes.find(b"x-llmpool-member:")
    if at >= 0:
        end = head_bytes.find(b"\r\n", at)
        out.member = head_bytes[at + 17 : end].strip().decode(errors="replace")
    decoder = ChunkedDecoder() if head.chunked else None
    sse = SseText()
    remaining = head.content_length
    body = bytearray()
    while not (decoder is not None and decoder.done) and not (
        remaining is not None and remaining <= 0
    ):
        data = await conn.reader.read(65536)
        now = time.perf_counter()
        if not data:
            conn.usable = False
            break
        if remaining is not None:
            remaining -= len(data)
        chunk = decoder.feed(data) if decoder is not None else data
        if not 200 <= head.status < 300:
            body += chunk
            continue
        pieces = sse.feed(chunk)
        if pieces:
            if out.first_token_at is None:
                out.first_token_at = now
            out.last_token_at = now
            out.tokens += len(pieces)
            out.token_times.append(now)
            out.text += "".join(pieces)
    if head.close or (decoder is None and head.content_length is None):
        conn.usable = False
    if not 200 <= head.status < 300:
        out.error = f"HTTP {head.status}: {bytes(body[:200]).decode(errors='replace')}"
    elif not sse.done:
        out.error = "stream ended without [DONE]"
    out.done = True


class ConnectionPool:
    """Idle keep-alive connections to one host:port, opened on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[Connection] = []

    async def get(self) -> Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and not conn.reader.at_eof():
                return conn
            conn.close()
        return await Connection.open(self.host, self.port)

    def put(self, conn: Connection) -> None:
        if conn.usable:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def send(
    pool: ConnectionPool, body: bytes, headers: dict[str, str], timeout_s: float
) -> Outcome:
    """One request with a deadline; a request past it is abandoned (its connection closed,
    which cancels it in the engine) and reported with error 'timeout'."""
    out = Outcome()
    conn: Connection | None = None
    try:
        conn = await pool.get()
        raw = request_bytes(pool.host, pool.port, body, headers)
        await asyncio.wait_for(stream_chat(conn, raw, out), timeout_s)
    except TimeoutError:
        out.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    if conn is not None:
        if out.ok:
            pool.put(conn)
        else:
            conn.close()
    return out
