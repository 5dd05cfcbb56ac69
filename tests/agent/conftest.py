"""Agent test fixtures: a fast supervisor over real child processes, the fake engine's command,
and waiting for a condition with a deadline (no fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from agent.allow import EngineAllowList
from agent.ports import PortAllocator
from agent.probe import Prober
from agent.session import AgentIdentity, ControllerSession
from agent.settings import SupervisorSettings
from agent.supervisor import Supervisor
from llmpool.backoff import Backoff
from llmpool.clock import Clock, FakeClock, SystemClock
from llmpool.v1 import agent_pb2, agent_pb2_grpc
from tests.support import eventually, no_task_leaks

FAKE_ENGINE = Path(__file__).parent / "fake_engine.py"
PORT_RANGE = (41000, 48999)

Until = Callable[..., Awaitable[Any]]


@pytest.fixture
def until() -> Until:
    return eventually


def engine_command(*extra: str) -> tuple[str, ...]:
    return (sys.executable, str(FAKE_ENGINE), "--host", "{host}", "--port", "{port}",
            "--model", "{model}", *extra)  # fmt: skip


@pytest.fixture
def fake_engine() -> Callable[..., tuple[str, ...]]:
    """The command of the fake engine, with extra flags."""
    return engine_command


def fast_settings(**overrides: Any) -> SupervisorSettings:
    values: dict[str, Any] = {
        "probe_interval_s": 0.1,
        "ready_poll_s": 0.05,
        "probe_timeout_s": 1.0,
        "kill_timeout_s": 3.0,
        "drain_poll_s": 0.05,
        "backoff": lambda: Backoff(base=0.05, cap=0.2, jitter=lambda: 0.0),
        # The fake engine is what these tests run, as an operator would allow their own.
        "allow": EngineAllowList.with_extra([(sys.executable, str(FAKE_ENGINE))]),
    }
    values.update(overrides)
    return SupervisorSettings(**values)


@pytest.fixture
def settings() -> SupervisorSettings:
    return fast_settings()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        yield client


@contextlib.asynccontextmanager
async def supervised(
    settings: SupervisorSettings, http: httpx.AsyncClient, clock: Clock
) -> AsyncIterator[Supervisor]:
    """A supervisor whose replicas are all stopped at the end; asserts no task leaked."""
    ports = PortAllocator("127.0.0.1", *PORT_RANGE)
    async with no_task_leaks("agent."):
        sup = Supervisor(settings, ports, Prober(http, clock), clock)
        try:
            yield sup
        finally:
            await sup.shutdown()


@pytest.fixture
async def supervisor(
    settings: SupervisorSettings, http: httpx.AsyncClient
) -> AsyncIterator[Supervisor]:
    async with supervised(settings, http, SystemClock()) as sup:
        yield sup


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake_time_supervisor(
    settings: SupervisorSettings, http: httpx.AsyncClient, clock: FakeClock
) -> AsyncIterator[Supervisor]:
    """A supervisor on the `clock` fixture: its replicas' waits (readiness polls, probe
    intervals, backoff, drains) end only when the test moves that clock."""
    async with supervised(settings, http, clock) as sup:
        yield sup


async def advance_until(
    clock: FakeClock, condition: Callable[[], Any], step: float = 0.05, what: str = ""
) -> Any:
    """Waits (with a real deadline) for condition while moving the fake clock on by `step`
    between looks: the replica's time passes only as the test lets it."""

    def look() -> Any:
        value = condition()
        if not value:
            clock.advance(step)
        return value

    return await eventually(look, what=what)


@pytest.fixture
def tick() -> Callable[..., Awaitable[Any]]:
    return advance_until


class FakeController(agent_pb2_grpc.AgentServiceServicer):
    """A real AgentService on a gRPC server: records what agents send, sends what tests say."""

    def __init__(self, report_interval_s: float = 0.2) -> None:
        self.report_interval_s = report_interval_s
        self.inbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        self.outbox: asyncio.Queue[agent_pb2.ControllerMessage | None] = asyncio.Queue()
        self.connects = 0
        self.server: grpc.aio.Server | None = None

    async def Connect(
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Any
    ) -> AsyncIterator[agent_pb2.ControllerMessage]:
        self.connects += 1
        register = await anext(request_iterator)
        self.inbox.put_nowait(register)
        yield agent_pb2.ControllerMessage(
            welcome=agent_pb2.Welcome(
                controller_id="fake", report_interval_s=self.report_interval_s, lease_s=5
            )
        )

        async def pump() -> None:
            async for msg in request_iterator:
                self.inbox.put_nowait(msg)

        reader = asyncio.create_task(pump())
        try:
            while True:
                out = await self.outbox.get()
                if out is None:
                    return
                yield out
        finally:
            reader.cancel()

    def send(self, **fields: Any) -> None:
        self.outbox.put_nowait(agent_pb2.ControllerMessage(**fields))

    async def expect(
        self,
        kind: str,
        match: Callable[[Any], bool] = lambda _: True,
        within: float = 10.0,
    ) -> Any:
        """The next message of `kind` (register, report, result, log_chunk) that matches."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching {kind} within {within}s")
            try:
                msg = await asyncio.wait_for(self.inbox.get(), remaining)
            except TimeoutError:
                raise AssertionError(f"no matching {kind} within {within}s") from None
            if msg.WhichOneof("msg") == kind and match(getattr(msg, kind)):
                return getattr(msg, kind)

    async def start(self, port: int) -> None:
        self.server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self, self.server)
        bound = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert bound == port
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


@pytest.fixture
async def controller_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def fake_controller(controller_port: int) -> AsyncIterator[FakeController]:
    fake = FakeController()
    await fake.start(controller_port)
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def session(supervisor: Supervisor, controller_port: int) -> AsyncIterator[ControllerSession]:
    """An agent session to 127.0.0.1:controller_port with a short reconnect backoff."""
    connected: list[bool] = []
    sess = ControllerSession(
        f"127.0.0.1:{controller_port}",
        None,
        AgentIdentity(agent_id="agent-1", hostname="host-1", labels={"zone": "a"}, cpu_slots=4),
        supervisor,
        report_interval_s=5.0,
        backoff=Backoff(base=0.05, cap=0.2, jitter=lambda: 0.0),
        on_connected=connected.append,
        welcome_timeout_s=3.0,
    )
    task = asyncio.create_task(sess.run())
    try:
        yield sess
    finally:
        # Replicas first, as the agent does, so their STOPPED goes out on the stream.
        await supervisor.shutdown()
        sess.close()
        await asyncio.wait_for(task, 10)


@pytest.fixture
def controller_class() -> type[FakeController]:
    return FakeController
