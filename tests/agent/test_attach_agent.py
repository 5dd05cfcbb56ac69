"""Attach mode in the agent, against a real engine process the test owns: the supervisor watches
it, reports it to a fake controller, refuses to stop it or tail it, and never signals it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.exposition import generate_latest

from agent.attach_spec import AttachSpec
from agent.metrics import AgentMetrics
from agent.session import ControllerSession
from agent.supervisor import Supervisor
from llmpool.errors import FailedPreconditionError
from llmpool.status import ReplicaState, ReplicaStatus
from llmpool.v1 import agent_pb2, types_pb2
from tests.agent.conftest import FAKE_ENGINE
from tests.support import free_port

Until = Callable[..., Awaitable[Any]]
READY = types_pb2.REPLICA_STATE_READY


@dataclass
class Engine:
    proc: asyncio.subprocess.Process
    url: str


@pytest.fixture
async def engine(http: httpx.AsyncClient, until: Until) -> AsyncIterator[Engine]:
    """A fake vLLM-named engine started by the test (not by the agent)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE_ENGINE), "--port", str(port), "--running", "2",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        return (await http.get(f"{url}/health")).status_code == 200

    try:
        await until(up, what="the test's engine to listen")
        yield Engine(proc, url)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def spec_for(engine: Engine, rid: str = "att-1") -> AttachSpec:
    return AttachSpec(replica_id=rid, pool="chat", url=engine.url, engine="vllm")


def status_of(sup: Supervisor, rid: str = "att-1") -> ReplicaStatus:
    [status] = [s for s in sup.statuses() if s.replica_id == rid]
    return status


async def set_health(http: httpx.AsyncClient, engine: Engine, code: int) -> None:
    assert (await http.get(f"{engine.url}/set", params={"health": str(code)})).status_code == 200


async def test_supervisor_watches_reports_and_never_signals_the_engine(
    supervisor: Supervisor, engine: Engine, http: httpx.AsyncClient, until: Until
) -> None:
    supervisor.attach(spec_for(engine))
    assert supervisor.changed.is_set()
    # READY comes with the health probe; the engine's load with its next metrics reading.
    await until(
        lambda: (
            status_of(supervisor).state is ReplicaState.READY
            and status_of(supervisor).running == 2.0
        ),
        what="READY with the engine's load read",
    )
    ready = status_of(supervisor)
    assert ready.healthy and ready.attached and (ready.pid, ready.restarts) == (0, 0)
    assert (ready.running, ready.url, ready.served_model) == (2.0, engine.url, "chat")
    assert ready.latency_ms > 0

    text = generate_latest(AgentMetrics(supervisor.statuses, lambda: {}).registry).decode()
    assert 'llmpool_agent_engine_running_requests{replica="att-1"} 2.0' in text
    assert 'llmpool_agent_replicas{state="ready"} 1.0' in text

    with pytest.raises(FailedPreconditionError) as stop:
        await supervisor.stop("att-1", 0.0)
    assert str(stop.value) == (
        "replica att-1 is attached: the agent watches it but did not start it; remove the "
        "--attach flag to stop watching it"
    )
    with pytest.raises(FailedPreconditionError, match="no logs for an engine the agent did not"):
        supervisor.logs("att-1")
    with pytest.raises(FailedPreconditionError, match="exists already"):
        supervisor.attach(spec_for(engine))

    await set_health(http, engine, 503)
    await until(lambda: not status_of(supervisor).healthy, what="unhealthy after failed probes")
    down = status_of(supervisor)
    assert down.state is ReplicaState.READY and "failed health probes" in down.message
    await set_health(http, engine, 200)
    await until(lambda: status_of(supervisor).healthy, what="healthy again")

    await supervisor.shutdown()
    assert supervisor.statuses() == []
    assert engine.proc.returncode is None


async def test_session_registers_it_and_answers_stop_and_tail_with_errors(
    supervisor: Supervisor,
    engine: Engine,
    fake_controller: Any,
    session: ControllerSession,
) -> None:
    supervisor.attach(spec_for(engine))
    ready = await fake_controller.expect(
        "report", lambda r: any(s.replica_id == "att-1" and s.state == READY for s in r.replicas)
    )
    [reported] = ready.replicas
    assert reported.attached and reported.pid == 0 and reported.url == engine.url

    fake_controller.send(
        stop=agent_pb2.StopReplica(command_id="stop-1", replica_id="att-1", drain_s=5)
    )
    result = await fake_controller.expect("result", lambda r: r.command_id == "stop-1")
    assert not result.ok
    assert "remove the --attach flag to stop watching it" in result.error

    fake_controller.send(tail_logs=agent_pb2.TailLogs(request_id="t-1", replica_id="att-1"))
    chunk = await fake_controller.expect("log_chunk", lambda c: c.request_id == "t-1")
    assert chunk.done and "no logs for an engine the agent did not start" in chunk.error

    still = await fake_controller.expect("report")
    assert [s.replica_id for s in still.replicas] == ["att-1"] and still.replicas[0].healthy
    assert engine.proc.returncode is None
