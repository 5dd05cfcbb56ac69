"""A hostile upstream cannot make the gateway buffer without bound, echo its bytes or fail
with a 500: gigantic and endless bodies, huge error bodies, undecodable headers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import parts_of
from tests.support import eventually

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
SECRET = b"SECRET-UPSTREAM-TEXT"
CAP = 1024 * 1024


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class HostileUpstream:
    """A raw TCP server that answers every request with what `behave` writes."""

    def __init__(self, behave: Callable[[asyncio.StreamWriter], Any]) -> None:
        self._behave = behave
        self._server: asyncio.Server | None = None
        self.port = 0
        self.written = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await self._behave(writer)
        writer.close()

    async def __aenter__(self) -> HostileUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _gigantic(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    writer.write(b"content-length: 1073741824\r\n\r\n")
    writer.write(SECRET * 1000)
    await writer.drain()
    await asyncio.sleep(5)


async def _endless(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    writer.write(b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
    for _ in range(2000):  # 128 MiB if nobody stops reading
        writer.write(chunk)
        await writer.drain()


async def _huge_error(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n")
    writer.write(b"content-length: 314572800\r\n\r\n")
    writer.write(SECRET * 100)
    await writer.drain()
    await asyncio.sleep(5)


async def _bad_header(writer: asyncio.StreamWriter) -> None:
    body = b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json; x=\xe9\xff\xfe\r\n")
    writer.write(b"content-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


@pytest.fixture
async def gateway_to(
    kit: Any, controller: Any, gateway_factory: Any
) -> AsyncIterator[Callable[..., Any]]:
    async def start(url: str) -> Any:
        controller.full = kit.snapshot(1, [kit.route("m1", [kit.member("evil", url)])])
        gw = await gateway_factory(f"127.0.0.1:{controller.port}", max_upstream_body_bytes=CAP)
        await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
        return gw

    yield start


@pytest.mark.parametrize("behave", [_gigantic, _endless, _huge_error])
async def test_oversized_answers_end_in_502_without_upstream_bytes(
    gateway_to: Any, http: httpx.AsyncClient, behave: Any
) -> None:
    async with HostileUpstream(behave) as upstream:
        gw = await gateway_to(upstream.url)
        before = rss_mib()
        resp = await http.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        # Without the cap the endless body alone is 128 MiB held at once.
        assert rss_mib() - before < 48
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_failed"
    assert SECRET.decode() not in resp.text and "127.0.0.1" not in resp.text


async def test_an_unreachable_member_is_not_described_to_the_client(
    kit: Any, gateway_to: Any, http: httpx.AsyncClient
) -> None:
    port = kit.free_port()
    gw = await gateway_to(f"http://127.0.0.1:{port}")
    resp = await http.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502
    assert str(port) not in resp.text and "Connect" not in resp.text
    assert "could not be reached" in resp.json()["error"]["message"]


async def test_an_undecodable_content_type_is_replaced_not_a_500(
    gateway_to: Any, http: httpx.AsyncClient
) -> None:
    async with HostileUpstream(_bad_header) as upstream:
        gw = await gateway_to(upstream.url)
        resp = await http.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_ends_the_upstream_request_before_its_headers(
    gateway_to: Any, stream: bool
) -> None:
    """The member never answers; the client gives up. The gateway's request to the member is
    closed (the engine would stop generating), not left running for the 600 s timeout."""
    upstream_closed = asyncio.Event()
    arrived = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            while await reader.read(65536):
                pass
        upstream_closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = await gateway_to(f"http://127.0.0.1:{port}")
        payload = orjson.dumps({**CHAT, "stream": stream})
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        await writer.drain()
        await asyncio.wait_for(arrived.wait(), 10)
        writer.close()  # the client leaves before any answer
        await asyncio.wait_for(upstream_closed.wait(), 10)
        parts = parts_of(gw.app)
        await eventually(lambda: not parts.usage.in_flight, what="nothing left in flight")
    finally:
        server.close()
