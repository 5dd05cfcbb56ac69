"""The agent's controller stream against a fake controller (a real grpc.aio AgentService)."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from agent.session import ControllerSession
from agent.supervisor import Supervisor
from llmpool.engines import ENGINES
from llmpool.v1 import agent_pb2, types_pb2

Until = Callable[..., Awaitable[Any]]
Cmd = Callable[..., tuple[str, ...]]
READY = types_pb2.REPLICA_STATE_READY


def start_msg(
    cmd: tuple[str, ...], rid: str = "r1", command_id: str = "c1"
) -> agent_pb2.StartReplica:
    return agent_pb2.StartReplica(
        command_id=command_id,
        replica_id=rid,
        pool="chat",
        template=types_pb2.ReplicaTemplate(
            engine="vllm", command=list(cmd), health_path="/health", metrics_path="/metrics",
            ready_timeout_s=20,
        ),
        env={"CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip


def has(state: int, rid: str = "r1") -> Callable[[Any], bool]:
    return lambda report: any(r.replica_id == rid and r.state == state for r in report.replicas)


async def test_register_welcome_and_periodic_reports(
    fake_controller: Any, session: ControllerSession
) -> None:
    register = await fake_controller.expect("register")
    assert register.agent_id == "agent-1" and register.hostname == "host-1"
    assert dict(register.labels) == {"zone": "a"}
    assert register.capacity.cpu_slots == 4 and register.capacity.gpus == 0
    assert tuple(register.engines) == tuple(ENGINES)
    assert list(register.replicas) == []
    # The Welcome's interval (0.2 s) replaces the agent's own 5 s.
    await fake_controller.expect("report", within=3)
    assert session.report_interval_s == 0.2 and session.connected


async def test_start_and_stop_commands(
    fake_controller: Any, session: ControllerSession, fake_engine: Cmd
) -> None:
    await fake_controller.expect("register")
    fake_controller.send(start=start_msg(fake_engine("--running", "1")))
    result = await fake_controller.expect("result")
    assert result.command_id == "c1" and result.ok, result.error
    ready = await fake_controller.expect("report", has(READY))
    replica = ready.replicas[0]
    assert replica.url.startswith("http://127.0.0.1:") and replica.pid > 0
    assert replica.engine == "vllm" and replica.pool == "chat" and replica.running == 1

    # Again: idempotent.
    fake_controller.send(start=start_msg(fake_engine(), command_id="c2"))
    assert (await fake_controller.expect("result")).ok

    fake_controller.send(stop=agent_pb2.StopReplica(command_id="c3", replica_id="r1", drain_s=0.3))
    await fake_controller.expect("report", has(types_pb2.REPLICA_STATE_DRAINING))
    await fake_controller.expect("report", has(types_pb2.REPLICA_STATE_STOPPED))
    result = await fake_controller.expect("result")
    assert result.command_id == "c3" and result.ok
    # STOPPED goes out once; later reports no longer carry the replica.
    later = await fake_controller.expect("report")
    assert list(later.replicas) == []


async def test_bad_commands_answer_errors(fake_controller: Any, session: ControllerSession) -> None:
    await fake_controller.expect("register")
    fake_controller.send(stop=agent_pb2.StopReplica(command_id="s", replica_id="ghost"))
    result = await fake_controller.expect("result")
    assert not result.ok and "ghost" in result.error
    bad = agent_pb2.StartReplica(
        command_id="b", replica_id="r", pool="p",
        template=types_pb2.ReplicaTemplate(engine="tensorrt"),
    )  # fmt: skip
    fake_controller.send(start=bad)
    result = await fake_controller.expect("result")
    assert not result.ok and "tensorrt" in result.error
    fake_controller.send(tail_logs=agent_pb2.TailLogs(request_id="t", replica_id="ghost", lines=5))
    chunk = await fake_controller.expect("log_chunk")
    assert chunk.done and "ghost" in chunk.error


async def test_tail_logs_once_and_follow(
    fake_controller: Any, session: ControllerSession, fake_engine: Cmd, supervisor: Supervisor,
    until: Until,
) -> None:  # fmt: skip
    await fake_controller.expect("register")
    fake_controller.send(start=start_msg(fake_engine()))
    await fake_controller.expect("report", has(READY))
    ring = supervisor.logs("r1")
    await until(lambda: ring.tail(1), what="the engine's banner")

    fake_controller.send(tail_logs=agent_pb2.TailLogs(request_id="once", replica_id="r1", lines=10))
    chunk = await fake_controller.expect("log_chunk")
    assert chunk.request_id == "once" and chunk.done
    assert any("fake engine serving" in line for line in chunk.lines)

    tail = agent_pb2.TailLogs(request_id="f", replica_id="r1", lines=1, follow=True)
    fake_controller.send(tail_logs=tail)
    first = await fake_controller.expect("log_chunk")
    assert first.request_id == "f" and not first.done and len(first.lines) == 1
    ring.append("a new line")
    more = await fake_controller.expect("log_chunk")
    assert list(more.lines) == ["a new line"] and not more.done
    fake_controller.send(cancel_tail=agent_pb2.CancelTail(request_id="f"))
    end = await fake_controller.expect("log_chunk")
    assert (end.request_id, end.replica_id, end.done) == ("f", "r1", True)

    # A follow ends by itself when the replica goes away.
    fake_controller.send(tail_logs=agent_pb2.TailLogs(request_id="g", replica_id="r1", follow=True))
    await fake_controller.expect("log_chunk", lambda c: c.request_id == "g")
    fake_controller.send(stop=agent_pb2.StopReplica(command_id="s", replica_id="r1"))
    end = await fake_controller.expect("log_chunk", lambda c: c.request_id == "g" and c.done)
    assert not end.error


async def test_reconnects_and_reannounces_running_replicas(
    fake_controller: Any, session: ControllerSession, fake_engine: Cmd, controller_port: int,
    until: Until, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    await fake_controller.expect("register")
    fake_controller.send(start=start_msg(fake_engine()))
    report = await fake_controller.expect("report", has(READY))
    pid = report.replicas[0].pid

    await fake_controller.stop()
    await until(lambda: not session.connected, what="the agent to notice the controller is gone")
    os.kill(pid, 0)  # the replica keeps running meanwhile

    restarted = type(fake_controller)()
    await restarted.start(controller_port)
    try:
        register = await restarted.expect("register")
        assert [(r.replica_id, r.pid, r.state) for r in register.replicas] == [("r1", pid, READY)]
        await until(lambda: session.connected and session.sessions == 2, what="reconnected")
        await restarted.expect("report", has(READY))
    finally:
        await restarted.stop()
    # The ended stream left no task of gRPC's behind to be destroyed while pending.
    gc.collect()
    await asyncio.sleep(0)
    destroyed = [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    assert not destroyed, destroyed[0].getMessage()


async def test_agent_keeps_retrying_until_a_controller_listens(
    session: ControllerSession, controller_port: int, controller_class: Any
) -> None:
    # Nothing listens yet: the session must keep retrying, not give up.
    assert not session.connected
    late = controller_class()
    await late.start(controller_port)
    try:
        register = await late.expect("register")
        assert register.agent_id == "agent-1"
    finally:
        await late.stop()


async def test_start_is_answered_when_spawned_and_changes_are_reported_at_once(
    session: ControllerSession, controller_port: int, controller_class: Any, fake_engine: Cmd,
    supervisor: Supervisor, until: Until,
) -> None:  # fmt: skip
    # Periodic reports every 30 s: anything sooner was sent because something changed.
    slow = controller_class(report_interval_s=30)
    await slow.start(controller_port)
    try:
        await slow.expect("register")
        slow.send(start=start_msg(fake_engine("--health", "503")))
        result = await slow.expect("result", within=10)
        assert result.ok
        starting = supervisor.replica("r1").status()
        assert starting.state.value == "starting" and starting.pid > 0
        await until(lambda: session.report_interval_s == 30, what="Welcome applied")
        url = starting.url
        async with httpx.AsyncClient(trust_env=False) as http:
            # The engine listens a moment after it was spawned.
            await until(lambda: http.get(f"{url}/set", params={"health": "200"}), what="engine up")
        await slow.expect("report", has(READY), within=10)
    finally:
        await slow.stop()
