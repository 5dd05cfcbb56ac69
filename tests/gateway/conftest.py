"""Fakes for gateway tests: HTTP upstreams on port 0, a gRPC fake controller, a live gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.connections import ConnectionLimits, bounded_protocol
from gateway.settings import GatewaySettings
from llmpool.backoff import Backoff
from llmpool.v1 import gateway_pb2, gateway_pb2_grpc
from tests.support import eventually, free_port, no_task_leaks

wait_until = eventually


class InProcessServer:
    """Any ASGI app on a real uvicorn server bound to 127.0.0.1 port 0."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> InProcessServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            loop="none",
            # The gateway's own connection protocol: client disconnects cancel the request.
            http=bounded_protocol(ConnectionLimits()),
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        # Tests run off the main thread's signal handling: uvicorn must not touch signals.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        await wait_until(
            lambda: self._server is not None and self._server.started, 10, "server start"
        )
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)
        self._server = None
        self._task = None


class FakeEngine:
    """An OpenAI-compatible upstream that records what it got and behaves as a test says."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200  # Non-200 answers every request with this status and an error body.
        self.error_headers: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.chunks = 3
        # When set, chunk i is sent only after gates[i] is set (one-for-one relay tests).
        self.gates: list[asyncio.Event] | None = None
        self.stream_forever = False
        # Set: accepts requests and answers none (until cleared), a hung engine.
        self._healed = asyncio.Event()
        self._healed.set()
        self.disconnected = asyncio.Event()
        self.stream_started = asyncio.Event()
        self.server = InProcessServer(
            Starlette(
                routes=[
                    Route("/v1/chat/completions", self._chat, methods=["POST"]),
                    Route("/v1/completions", self._completions, methods=["POST"]),
                    Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                ]
            )
        )

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def hang(self) -> bool:
        return not self._healed.is_set()

    @hang.setter
    def hang(self, value: bool) -> None:
        if value:
            self._healed.clear()
        else:
            self._healed.set()

    async def _record(self, request: Request) -> dict[str, Any] | Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        await self._healed.wait()
        if self.status != 200:
            return JSONResponse(
                {"error": {"message": f"{self.name} says {self.status}"}},
                status_code=self.status,
                headers=self.error_headers,
            )
        doc: dict[str, Any] = body
        return doc

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        if isinstance(body, Response):
            return body
        if body.get("stream"):
            return StreamingResponse(self._sse(body), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"hello from {self.name}"},
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        )

    async def _sse(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        self.stream_started.set()
        try:
            i = 0
            while self.stream_forever or i < self.chunks:
                if self.gates is not None:
                    await self.gates[i].wait()
                elif self.stream_forever:
                    await asyncio.sleep(0.02)
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                    ],
                }
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                i += 1
            final = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": self.chunks,
                    "total_tokens": 5 + self.chunks,
                },
            }
            yield b"data: " + orjson.dumps(final) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            if self.stream_forever or (self.gates is not None and i < self.chunks):
                self.disconnected.set()

    async def _completions(self, request: Request) -> Response:
        body = await self._record(request)
        if isinstance(body, Response):
            return body
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {"index": 0, "text": "done", "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
        )

    async def _embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        if isinstance(body, Response):
            return body
        return JSONResponse(
            {
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )


def member(
    member_id: str,
    url: str,
    *,
    healthy: bool = True,
    draining: bool = False,
    upstream_model: str = "",
    in_flight: float = 0.0,
) -> gateway_pb2.Member:
    return gateway_pb2.Member(
        id=member_id,
        url=url,
        healthy=healthy,
        draining=draining,
        weight=1,
        kind="openai",
        upstream_model=upstream_model,
        in_flight=in_flight,
    )


def route(
    model: str, members: list[gateway_pb2.Member], policy: str = "round_robin", **fields: Any
) -> gateway_pb2.ModelRoute:
    return gateway_pb2.ModelRoute(model=model, policy=policy, members=members, **fields)


def snapshot(
    version: int,
    routes: list[gateway_pb2.ModelRoute],
    *,
    full: bool = True,
    removed: list[str] | None = None,
    provisional: bool = False,
) -> gateway_pb2.RoutingSnapshot:
    return gateway_pb2.RoutingSnapshot(
        version=version,
        full=full,
        provisional=provisional,
        routes=routes,
        removed_models=removed or [],
        created_unix_ms=1_700_000_000_000,
    )


class FakeController(gateway_pb2_grpc.GatewayServiceServicer):
    """A real grpc.aio GatewayService: sends `full` on connect, then whatever push() queues."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.full = snapshot(1, [])
        self.watchers = 0
        self.known_versions: list[int] = []
        self.reports: list[gateway_pb2.UsageReport] = []
        # AskHome: the asks received, and the members to answer, in turn ("" once none left).
        self.asks: list[gateway_pb2.AskHomeRequest] = []
        self.answers: list[str] = []
        self._queues: list[asyncio.Queue[gateway_pb2.RoutingSnapshot]] = []
        self._server: grpc.aio.Server | None = None

    async def start(self) -> FakeController:
        self._server = grpc.aio.server()
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        self._queues.clear()

    def push(self, snap: gateway_pb2.RoutingSnapshot) -> None:
        for q in self._queues:
            q.put_nowait(snap)

    async def WatchRouting(
        self, request: gateway_pb2.WatchRoutingRequest, context: Any
    ) -> AsyncIterator[gateway_pb2.RoutingSnapshot]:
        self.watchers += 1
        self.known_versions.append(request.known_version)
        queue: asyncio.Queue[gateway_pb2.RoutingSnapshot] = asyncio.Queue()
        self._queues.append(queue)
        yield self.full
        while True:
            yield await queue.get()

    async def ReportUsage(self, request_iterator: Any, context: Any) -> gateway_pb2.UsageAck:
        async for report in request_iterator:
            self.reports.append(report)
        return gateway_pb2.UsageAck()

    async def AskHome(
        self, request: gateway_pb2.AskHomeRequest, context: Any
    ) -> gateway_pb2.AskHomeResponse:
        self.asks.append(request)
        answer = self.answers.pop(0) if self.answers else ""
        return gateway_pb2.AskHomeResponse(member_id=answer)


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus exposition text; 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample == name and got == want:
            return float(value)
    return 0.0


class Kit:
    """Helpers for test modules (importlib mode: they cannot import this file by name)."""

    free_port = staticmethod(free_port)
    wait_until = staticmethod(wait_until)
    member = staticmethod(member)
    route = staticmethod(route)
    snapshot = staticmethod(snapshot)
    metric = staticmethod(metric)
    FakeEngine = FakeEngine
    FakeController = FakeController
    InProcessServer = InProcessServer


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


GatewayFactory = Callable[..., Awaitable[InProcessServer]]


@pytest.fixture
async def engines() -> AsyncIterator[Callable[[str], Awaitable[FakeEngine]]]:
    started: list[FakeEngine] = []

    async def make(name: str) -> FakeEngine:
        engine = FakeEngine(name)
        await engine.server.start()
        started.append(engine)
        return engine

    yield make
    for engine in started:
        if engine.gates is not None:
            for gate in engine.gates:
                gate.set()
        await engine.server.stop()


@pytest.fixture
async def controller() -> AsyncIterator[FakeController]:
    ctl = FakeController(free_port())
    await ctl.start()
    yield ctl
    await ctl.stop()


@pytest.fixture
async def gateway_factory() -> AsyncIterator[GatewayFactory]:
    """Starts a real gateway (create_app on uvicorn) wired to a controller address."""
    started: list[InProcessServer] = []

    async def make(
        controller_addr: str = "", environ: dict[str, str] | None = None, **overrides: Any
    ) -> InProcessServer:
        settings = GatewaySettings(
            listen_port=0,
            controller=controller_addr or f"127.0.0.1:{free_port()}",
            gateway_id="gw-test",
            usage_interval_s=0.05,
            upstream_connect_timeout_s=2.0,
            upstream_timeout_s=10.0,
            **overrides,
        )
        app = create_app(
            settings, backoff_factory=lambda: Backoff(base=0.05, cap=0.2), environ=environ or {}
        )
        server = InProcessServer(app)
        await server.start()
        started.append(server)
        return server

    async with no_task_leaks("gateway."):
        yield make
        for server in started:
            await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        yield client
