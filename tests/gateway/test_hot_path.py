"""The hot path's pieces: ASGI dispatch, header handling, body reading, both upstream clients,
streaming backpressure and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import create_app, parts_of
from gateway.connections import CANCEL_REASON, CLIENT_GONE
from gateway.errors import PayloadTooLargeError
from gateway.parsing import ClientDisconnected, header_map, receive_body
from gateway.settings import GatewaySettings
from gateway.streaming import StreamOutcome, StreamRelay
from gateway.upstream import (
    UPSTREAM_CLIENTS,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTransportError,
    build_upstream,
)
from llmpool.clock import SystemClock

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def test_header_map_decodes_once_and_first_wins() -> None:
    raw = [(b"content-type", b"application/json"), (b"x-request-id", b"a"), (b"x-request-id", b"b")]
    assert header_map(raw) == {"content-type": "application/json", "x-request-id": "a"}


def receiver(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


async def test_receive_body_single_chunked_limit_and_disconnect() -> None:
    one = receiver({"type": "http.request", "body": b"abc", "more_body": False})
    assert await receive_body(one, 3) == b"abc"
    parts = receiver(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    )
    assert await receive_body(parts, 4) == b"abcd"
    with pytest.raises(PayloadTooLargeError):
        await receive_body(receiver({"type": "http.request", "body": b"abcd"}), 3)
    over = receiver(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
    )
    with pytest.raises(PayloadTooLargeError):
        await receive_body(over, 3)
    with pytest.raises(ClientDisconnected):
        await receive_body(receiver({"type": "http.disconnect"}), 3)


class _Recorded:
    def __init__(self, body: bytes) -> None:
        self._body = body

    @property
    def status_code(self) -> int:
        return 200

    @property
    def content_type(self) -> str:
        return "application/json"

    async def read(self, limit: int) -> bytes:
        return self._body

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        yield self._body

    async def aclose(self) -> None:
        pass


class RecordingUpstream:
    """An in-process UpstreamClient that records what the relay sends."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail = fail

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        if self.fail is not None:
            raise self.fail
        self.sent.append((url, body, dict(headers)))
        return _Recorded(b'{"ok":true,"usage":{"prompt_tokens":1,"completion_tokens":2}}')

    async def aclose(self) -> None:
        pass


def asgi_gateway(kit: Any, upstream: RecordingUpstream, app: Any = None) -> httpx.AsyncClient:
    app = app or create_app(GatewaySettings(), upstream=upstream, connect_controller=False)
    parts_of(app).table.apply(
        kit.snapshot(1, [kit.route("m1", [kit.member("a", "http://engine:1/v1")])])
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_dispatch_forwards_what_it_should(kit: Any) -> None:
    upstream = RecordingUpstream()
    async with asgi_gateway(kit, upstream) as client:
        body = orjson.dumps(CHAT)
        resp = await client.post(
            "/v1/chat/completions",
            content=body,
            headers={
                "content-type": "application/json; charset=utf-8",
                "authorization": "Bearer sk-client",
                "x-request-id": "r1",
                "traceparent": "00-abc-def-01",
                "cookie": "c=1",
            },
        )
        assert resp.status_code == 200 and resp.json()["ok"] is True
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["content-length"] == str(len(resp.content))
        assert resp.headers["x-llmpool-member"] == "a"
        url, sent, headers = upstream.sent[-1]
        assert url == "http://engine:1/v1/chat/completions" and sent == body
        # Our own content type and accept; trace ids pass; credentials and cookies do not.
        assert headers == {
            "content-type": "application/json",
            "accept": "application/json",
            "accept-encoding": "identity",
            "x-request-id": "r1",
            "traceparent": "00-abc-def-01",
        }
        stream = await client.post("/v1/completions", json={"model": "m1", "prompt": "x"})
        assert stream.status_code == 200
        await client.post("/v1/completions", json={"model": "m1", "prompt": "x", "stream": True})
        assert upstream.sent[-1][2]["accept"] == "text/event-stream"

        # Other methods on a /v1 POST path: 405 from the dispatcher; other paths: FastAPI.
        wrong = await client.get("/v1/chat/completions")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.post("/v1/nope", json={})).status_code == 404
        bad = await client.post(
            "/v1/embeddings", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


async def test_dispatch_maps_unexpected_errors_to_openai_500(kit: Any) -> None:
    upstream = RecordingUpstream(fail=RuntimeError("boom"))
    app = create_app(GatewaySettings(), upstream=upstream, connect_controller=False)
    async with asgi_gateway(kit, upstream, app) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        page = (await client.get("/metrics")).text
    assert resp.status_code == 500
    assert resp.json()["error"] == {
        "message": "Internal error in the gateway; see its logs.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    # Counted once, under the member whose try broke, and nothing is left in flight.
    labels = {"model": "m1", "backend": "a", "status": "500"}
    assert kit.metric(page, "llmpool_gateway_requests_total", **labels) == 1
    assert kit.metric(page, "llmpool_gateway_in_flight_requests", model="m1") == 0
    assert not parts_of(app).usage.in_flight


@pytest.mark.parametrize("kind", UPSTREAM_CLIENTS)
async def test_upstream_client_reads_streams_and_closes(kind: str, engines: Any, kit: Any) -> None:
    engine = await engines("e1")
    client = build_upstream(kind, connect_timeout_s=2.0, timeout_s=5.0)
    headers = {"content-type": "application/json"}
    try:
        resp = await client.post(engine.url + "/v1/chat/completions", orjson.dumps(CHAT), headers)
        assert resp.status_code == 200 and resp.content_type == "application/json"
        assert (
            orjson.loads(await resp.read(1 << 20))["choices"][0]["message"]["content"]
            == "hello from e1"
        )

        stream = await client.post(
            engine.url + "/v1/chat/completions", orjson.dumps({**CHAT, "stream": True}), headers
        )
        assert stream.content_type.startswith("text/event-stream")
        data = b"".join([chunk async for chunk in stream.iter_bytes()])
        await stream.aclose()
        assert data.endswith(b"data: [DONE]\n\n")

        # Closing a stream before its end drops the connection: the engine sees the cancel.
        engine.stream_forever = True
        endless = await client.post(
            engine.url + "/v1/chat/completions", orjson.dumps({**CHAT, "stream": True}), headers
        )
        chunks = endless.iter_bytes()
        assert await anext(chunks)
        await endless.aclose()
        await asyncio.wait_for(engine.disconnected.wait(), 10)

        with pytest.raises(UpstreamTransportError):
            await client.post(f"http://127.0.0.1:{kit.free_port()}/v1/x", b"{}", headers)
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", UPSTREAM_CLIENTS)
async def test_upstream_client_read_timeout(kind: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = build_upstream(kind, connect_timeout_s=1.0, timeout_s=0.2)
    try:
        with pytest.raises(UpstreamTimeoutError):
            await client.post(f"http://127.0.0.1:{port}/v1/x", b"{}", {})
    finally:
        await client.aclose()
        server.close()


def test_unknown_upstream_client() -> None:
    with pytest.raises(ValueError, match="unknown upstream client"):
        build_upstream("requests", connect_timeout_s=1, timeout_s=1)


@pytest.mark.parametrize("kind", UPSTREAM_CLIENTS)
async def test_relay_through_each_client(
    kind: str, kit: Any, engines: Any, controller: Any, gateway_factory: Any
) -> None:
    """One-for-one streaming and cancellation hold whichever client the gateway uses."""
    e1 = await engines("e1")
    e1.gates = [asyncio.Event() for _ in range(2)]
    e1.chunks = 2
    controller.full = kit.snapshot(1, [kit.route("m1", [kit.member("a", e1.url)])])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}", upstream_client=kind)
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    # The gateway answers with headers once the member sent its first chunk.
    e1.gates[0].set()
    async with (
        httpx.AsyncClient(trust_env=False, timeout=10) as http,
        http.stream("POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        lines = aiter(r.aiter_lines())
        for i in range(2):
            e1.gates[i].set()
            line = ""
            while not line:
                line = await asyncio.wait_for(anext(lines), 5)
            assert f"t{i} " in line
    # Left after two chunks: the engine, still gated on nothing more, saw the disconnect or
    # finished; either way nothing stays in flight.
    await kit.wait_until(lambda: not parts_of(gw.app).usage.in_flight, what="in-flight zero")


class _Chunks:
    """An UpstreamResponse that counts how many chunks the relay has pulled."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0
        self.closed = False

    @property
    def status_code(self) -> int:
        return 200

    @property
    def content_type(self) -> str:
        return "text/event-stream"

    async def read(self, limit: int) -> bytes:
        return b""

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        for i in range(self.n):
            self.pulled += 1
            yield b"data: %d\n\n" % i

    async def aclose(self) -> None:
        self.closed = True


async def test_stream_relay_backpressure_and_disconnect() -> None:
    upstream = _Chunks(10)
    outcomes: list[StreamOutcome] = []
    relay = StreamRelay(
        upstream,
        headers={"content-type": "text/event-stream"},
        clock=SystemClock(),
        started_at=SystemClock().monotonic(),
        on_done=outcomes.append,
    )
    sent: list[dict[str, Any]] = []
    unblock = asyncio.Event()
    body_sent = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            body_sent.set()
            await unblock.wait()  # A client that does not read: the server's send waits.

    async def receive() -> dict[str, Any]:
        raise AssertionError("the relay does not read the request side")

    scope: dict[str, Any] = {"type": "http"}
    task = asyncio.ensure_future(relay(scope, receive, send))
    await asyncio.wait_for(body_sent.wait(), 5)
    for _ in range(20):
        await asyncio.sleep(0)
    # Backpressure: one chunk handed over and waiting; the next one not even read upstream.
    assert upstream.pulled == 1 and len(sent) == 2
    # The client leaves: the connection marks the scope and cancels the serving task.
    scope[CANCEL_REASON] = CLIENT_GONE
    task.cancel()
    await asyncio.wait_for(task, 5)
    assert not task.cancelled()  # absorbed: nobody is left to answer
    assert upstream.closed and upstream.pulled == 1
    assert outcomes[0].client_disconnected and not outcomes[0].completed
