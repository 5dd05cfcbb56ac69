"""Python load generators on raw asyncio streams: a constant-rate open loop (latency from
each request's scheduled send time, so no coordinated omission) and an SSE stream reader that
timestamps every read."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.sse import ChunkedDecoder, EventCounter, StreamStats, analyze_stream


def request_bytes(
    host: str, port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"accept: */*\r\n{extra}content-length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass(frozen=True)
class Head:
    status: int
    content_length: int | None
    chunked: bool
    close: bool


def parse_head(head: bytes) -> Head:
    """Status and framing of a response head (the bytes up to the blank line)."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif key == b"connection" and value.strip().lower() == b"close":
            close = True
    return Head(status, length, chunked, close)


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.usable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        """Sends one request, reads the whole response; returns the status."""
        self.writer.write(raw)
        head = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
        if head.content_length is not None:
            await self.reader.readexactly(head.content_length)
        elif head.chunked:
            decoder = ChunkedDecoder()
            while not decoder.done:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed inside a chunked body")
                decoder.feed(data)
        else:
            await self.reader.read()
            self.usable = False
        if head.close:
            self.usable = False
        return head.status

    async def stream(self, raw: bytes) -> tuple[int, StreamStats]:
        """Sends one streaming request and times every read that delivers SSE events."""
        sent_at = time.perf_counter()
        self.writer.write(raw)
        head = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
        decoder = ChunkedDecoder() if head.chunked else None
        counter = EventCounter()
        arrivals: list[tuple[float, int]] = []
        remaining = head.content_length
        while True:
            if decoder is not None and decoder.done:
                break
            if remaining is not None and remaining <= 0:
                break
            data = await self.reader.read(65536)
            now = time.perf_counter()
            if not data:
                self.usable = False
                break
            if remaining is not None:
                remaining -= len(data)
            body = decoder.feed(data) if decoder is not None else data
            arrivals.append((now, counter.feed(body)))
        if head.close or (decoder is None and head.content_length is None):
            self.usable = False
        return head.status, analyze_stream(sent_at, arrivals, counter.done_seen)

    def close(self) -> None:
        self.usable = False
        self.writer.close()


@dataclass
class OpenLoopResult:
    rate: float
    scheduled: int
    ok: int = 0
    errors: int = 0
    unfinished: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def open_loop(
    host: str,
    port: int,
    path: str,
    body: bytes,
    rate: float,
    duration_s: float,
    max_connections: int = 256,
    grace_s: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> OpenLoopResult:
    """Sends rate requests per second for duration_s on a schedule fixed in advance. Each
    latency runs from the request's scheduled time, so a stalled server is charged for the
    requests that would have been sent meanwhile. Requests still open grace_s after the last
    scheduled send count as unfinished."""
    raw = request_bytes(host, port, path, body, headers)
    total = max(1, math.floor(rate * duration_s))
    result = OpenLoopResult(rate=rate, scheduled=total)
    idle: list[Connection] = []
    slots = asyncio.Semaphore(max_connections)
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled_at: float) -> None:
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    conn = await Connection.open(host, port)
                status = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                result.errors += 1
                if conn is not None:
                    conn.close()
                return
            if 200 <= status < 300:
                result.ok += 1
                result.latencies_s.append(time.perf_counter() - scheduled_at)
            else:
                result.errors += 1
            if conn.usable:
                idle.append(conn)
            else:
                conn.close()

    start = time.perf_counter()
    interval = 1.0 / rate
    for i in range(total):
        at = start + i * interval
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=grace_s)
        result.unfinished = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    result.elapsed_s = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return result


@dataclass
class SseResult:
    streams: list[StreamStats] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0


async def sse_streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    streams: int,
    concurrency: int,
    timeout_s: float = 30.0,
    stagger_s: float = 0.0,
    headers: Mapping[str, str] | None = None,
) -> SseResult:
    """Runs streams streaming requests, concurrency at a time, each worker on its own
    keep-alive connection. Worker i starts i * stagger_s late: streams of equal length that
    start together restart together, and a burst of simultaneous requests measures queueing
    in the system, not its time to first chunk."""
    raw = request_bytes(host, port, path, body, headers)
    result = SseResult()
    counter = iter(range(streams))

    async def worker(index: int) -> None:
        await asyncio.sleep(index * stagger_s)
        conn: Connection | None = None
        for _ in counter:
            try:
                if conn is None or not conn.usable:
                    if conn is not None:
                        conn.close()
                    conn = await Connection.open(host, port)
                status, stats = await asyncio.wait_for(conn.stream(raw), timeout_s)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                result.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if 200 <= status < 300 and stats.complete:
                result.streams.append(stats)
            else:
                result.errors += 1
        if conn is not None:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result


async def get_ok(host: str, port: int, path: str, timeout_s: float = 2.0) -> bool:
    """True when GET path answers 2xx."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        conn = await asyncio.wait_for(Connection.open(host, port), timeout_s)
        try:
            raw = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            return 200 <= await asyncio.wait_for(conn.request(raw), timeout_s) < 300
        finally:
            conn.close()
    return False


async def post_ok(
    host: str,
    port: int,
    path: str,
    body: bytes,
    timeout_s: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> bool:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        conn = await asyncio.wait_for(Connection.open(host, port), timeout_s)
        try:
            raw = request_bytes(host, port, path, body, headers)
            return 200 <= await asyncio.wait_for(conn.request(raw), timeout_s) < 300
        finally:
            conn.close()
    return False
