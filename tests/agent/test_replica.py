"""The supervisor with real child processes (tests/agent/fake_engine.py): readiness, crash and
restart, drain and stop, liveness, logs and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.exposition import generate_latest

from agent.allow import EngineAllowList, parse_entries
from agent.metrics import AgentMetrics
from agent.supervisor import Supervisor
from agent.template import ReplicaSpec
from llmpool.clock import FakeClock
from llmpool.errors import FailedPreconditionError, NotFoundError, UnavailableError
from llmpool.status import ReplicaState, ReplicaStatus

Cmd = Callable[..., tuple[str, ...]]
Until = Callable[..., Awaitable[Any]]
Tick = Callable[..., Awaitable[Any]]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def make_spec(cmd: tuple[str, ...], rid: str = "r1", ready_timeout_s: float = 20.0) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=rid, pool="chat", engine="vllm", command=cmd, ready_timeout_s=ready_timeout_s
    )


def status_of(sup: Supervisor, rid: str = "r1") -> ReplicaStatus:
    return sup.replica(rid).status()


async def start_ready(
    sup: Supervisor, until: Until, cmd: tuple[str, ...], rid: str = "r1"
) -> ReplicaStatus:
    assert await sup.start(make_spec(cmd, rid)) is True
    await until(lambda: status_of(sup, rid).state is ReplicaState.READY, what=f"{rid} READY")
    return status_of(sup, rid)


async def steer(http: httpx.AsyncClient, status: ReplicaStatus, **params: str) -> None:
    response = await http.get(f"{status.url}/set", params=params)
    assert response.status_code == 200


async def test_start_returns_once_spawned_then_ready_with_load(
    supervisor: Supervisor, fake_engine: Cmd, until: Until, http: httpx.AsyncClient
) -> None:
    assert await supervisor.start(make_spec(fake_engine("--running", "3"))) is True
    first = status_of(supervisor)
    assert first.state is ReplicaState.STARTING and first.pid > 0 and alive(first.pid)
    assert supervisor.changed.is_set()
    await until(lambda: status_of(supervisor).state is ReplicaState.READY, what="READY")
    ready = status_of(supervisor)
    assert ready.healthy and ready.url.startswith("http://127.0.0.1:")
    assert ready.latency_ms > 0 and ready.served_model == "chat"
    assert (ready.running, ready.waiting) == (3.0, 0.0)
    assert ready.kv_usage == pytest.approx(0.3)
    await steer(http, ready, running="1", waiting="4")
    await until(lambda: status_of(supervisor).waiting == 4.0, what="new load")
    assert status_of(supervisor).running == 1.0


async def test_start_is_idempotent_and_unknown_ids_are_errors(
    supervisor: Supervisor, fake_engine: Cmd
) -> None:
    assert await supervisor.start(make_spec(fake_engine())) is True
    pid = status_of(supervisor).pid
    assert await supervisor.start(make_spec(fake_engine())) is False
    assert status_of(supervisor).pid == pid
    with pytest.raises(NotFoundError, match="not running on this agent"):
        await supervisor.stop("nope", 0)
    with pytest.raises(NotFoundError):
        supervisor.logs("nope")


async def test_unspawnable_command_fails_the_start_and_leaves_nothing(
    supervisor: Supervisor,
) -> None:
    supervisor.settings.allow = EngineAllowList.with_extra([("/nonexistent/engine-binary",)])
    with pytest.raises(FailedPreconditionError, match="cannot start engine"):
        await supervisor.start(make_spec(("/nonexistent/engine-binary", "{port}")))
    assert supervisor.statuses() == []


@pytest.mark.parametrize(
    ("command", "env", "why"),
    [
        (("/bin/sh", "-c", "touch /tmp/pwned"), {}, "runs other programs"),
        (("bash", "-c", "id"), {}, "runs other programs"),
        (("/usr/bin/env", "python3", "-c", "1"), {}, "runs other programs"),
        (("{python}", "-c", "import os"), {}, "is not an engine this agent may run"),
        (("/tmp/vllm", "serve", "m"), {}, "is not an engine this agent may run"),
        (("vllm", "serve", "m"), {"LD_PRELOAD": "/tmp/x.so"}, "LD_PRELOAD"),
        (("vllm", "serve", "m"), {"PYTHONPATH": "/tmp"}, "PYTHONPATH"),
    ],
)
async def test_commands_outside_the_allow_list_are_refused_and_nothing_runs(
    supervisor: Supervisor, command: tuple[str, ...], env: dict[str, str], why: str
) -> None:
    spec = dataclasses.replace(make_spec(command), env=env)
    with pytest.raises(FailedPreconditionError, match="refused by this agent") as info:
        await supervisor.start(spec)
    assert why in str(info.value)
    assert supervisor.statuses() == []


def test_allow_entries_are_argv_prefixes_and_never_shells() -> None:
    allow = EngineAllowList.with_extra(parse_entries(["/opt/vllm/bin/vllm serve"]))
    assert allow.problem(("/opt/vllm/bin/vllm", "serve", "m"), {}) is None
    assert allow.problem(("vllm", "serve", "m"), {"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert allow.problem(("{python}", "-m", "llama_cpp.server", "--model", "x"), {}) is None
    assert allow.problem(("/opt/vllm/bin/vllm", "bench"), {}) is not None
    with pytest.raises(ValueError, match="runs other programs"):
        parse_entries(["/bin/bash /opt/run.sh"])
    with pytest.raises(ValueError, match="absolute"):
        parse_entries(["bin/server"])


async def test_kill_9_is_failed_at_once_then_restarted_with_a_new_pid(
    fake_time_supervisor: Supervisor, fake_engine: Cmd, tick: Tick, until: Until, clock: FakeClock
) -> None:
    sup = fake_time_supervisor
    assert await sup.start(make_spec(fake_engine())) is True
    ready = await tick(clock, lambda: (s := status_of(sup)).state is ReplicaState.READY and s)
    sup.changed.clear()
    os.kill(ready.pid, signal.SIGKILL)
    # The backoff waits on the fake clock: FAILED holds until the test moves it.
    failed = await until(
        lambda: (s := status_of(sup)).state is ReplicaState.FAILED and s, what="FAILED"
    )
    assert "signal 9" in failed.message and "restarting in" in failed.message
    assert not failed.healthy and sup.changed.is_set()
    assert status_of(sup).restarts == 0
    again = await tick(
        clock, lambda: (s := status_of(sup)).state is ReplicaState.READY and s, what="READY"
    )
    assert again.pid != ready.pid and alive(again.pid)
    assert again.restarts == 1
    assert sup.restarts_by_pool == {"chat": 1}


async def test_never_ready_is_killed_failed_and_retried(
    fake_time_supervisor: Supervisor, fake_engine: Cmd, tick: Tick, until: Until, clock: FakeClock
) -> None:
    sup = fake_time_supervisor
    await sup.start(make_spec(fake_engine("--health", "503"), ready_timeout_s=30))
    first_pid = status_of(sup).pid
    # It answers 503 for as long as the clock allows; 30 s pass in fake time only.
    replica = sup.replica("r1")
    await tick(clock, lambda: "HTTP 503" in replica.life.last_error, what="a 503 answer")
    clock.advance(30.0)
    await tick(clock, lambda: status_of(sup).restarts >= 1, what="a restart")
    await until(lambda: not alive(first_pid), what="the never-ready process to be gone")
    restarted = status_of(sup)
    assert "not ready within 30s" in restarted.message and "HTTP 503" in restarted.message
    assert restarted.state is not ReplicaState.READY


async def test_failed_liveness_probes_mark_unhealthy_then_recover(
    supervisor: Supervisor, fake_engine: Cmd, until: Until, http: httpx.AsyncClient
) -> None:
    ready = await start_ready(supervisor, until, fake_engine())
    await steer(http, ready, health="500")
    await until(lambda: not status_of(supervisor).healthy, what="unhealthy")
    assert status_of(supervisor).state is ReplicaState.READY
    assert "failed health probes" in status_of(supervisor).message
    await steer(http, ready, health="200")
    await until(lambda: status_of(supervisor).healthy, what="healthy again")


async def test_stop_drains_until_the_engine_is_idle(
    supervisor: Supervisor, fake_engine: Cmd, until: Until, http: httpx.AsyncClient
) -> None:
    ready = await start_ready(supervisor, until, fake_engine("--running", "2"))
    stopping = asyncio.create_task(supervisor.stop("r1", drain_s=30))
    await until(lambda: status_of(supervisor).state is ReplicaState.DRAINING, what="DRAINING")
    assert not stopping.done() and alive(ready.pid)
    await steer(http, ready, running="0")
    stopped = await asyncio.wait_for(stopping, 10)
    assert stopped.state is ReplicaState.STOPPED and not stopped.healthy and stopped.pid == 0
    await until(lambda: not alive(ready.pid), what="process gone")
    report = supervisor.take_report()
    assert [s.state for s in report] == [ReplicaState.STOPPED]
    assert supervisor.take_report() == []
    assert supervisor.statuses() == []


async def test_stop_gives_up_draining_after_drain_s(
    fake_time_supervisor: Supervisor, fake_engine: Cmd, tick: Tick, until: Until, clock: FakeClock
) -> None:
    sup = fake_time_supervisor
    await sup.start(make_spec(fake_engine("--running", "5")))
    ready = await tick(clock, lambda: (s := status_of(sup)).state is ReplicaState.READY and s)
    stopping = asyncio.create_task(sup.stop("r1", drain_s=600))
    await until(lambda: status_of(sup).state is ReplicaState.DRAINING, what="DRAINING")
    await until(lambda: clock.sleepers == 2, what="the probe and drain loops waiting")
    clock.advance(599.0)
    # Both loops looked again (busy, inside the drain) and went back to waiting.
    await until(lambda: clock.sleepers == 2, what="the loops to wait again")
    assert not stopping.done() and alive(ready.pid)
    clock.advance(1.0)
    stopped = await asyncio.wait_for(stopping, 10)
    assert stopped.state is ReplicaState.STOPPED
    await until(lambda: not alive(ready.pid), what="process gone")


async def test_a_second_stop_cuts_a_drain_short(
    supervisor: Supervisor, fake_engine: Cmd, until: Until
) -> None:
    # The controller's "nothing in flight" for an engine that never reports itself idle.
    ready = await start_ready(supervisor, until, fake_engine("--running", "5"))
    first = asyncio.create_task(supervisor.stop("r1", drain_s=60))
    await until(lambda: status_of(supervisor).state is ReplicaState.DRAINING, what="DRAINING")
    assert not first.done()
    second = asyncio.create_task(supervisor.stop("r1", drain_s=0))
    stopped = await asyncio.wait_for(first, 10)
    await asyncio.wait_for(second, 10)
    assert stopped.state is ReplicaState.STOPPED
    await until(lambda: not alive(ready.pid), what="process gone")


async def test_stop_escalates_to_sigkill_when_term_is_ignored(
    supervisor: Supervisor, fake_engine: Cmd, until: Until
) -> None:
    supervisor.settings.kill_timeout_s = 0.3
    ready = await start_ready(supervisor, until, fake_engine("--ignore-term"))
    stopped = await asyncio.wait_for(supervisor.stop("r1", drain_s=0), 10)
    assert "exit code -9" in stopped.message
    assert not alive(ready.pid)


async def test_logs_ring_and_follow(
    supervisor: Supervisor, fake_engine: Cmd, until: Until, http: httpx.AsyncClient
) -> None:
    ready = await start_ready(supervisor, until, fake_engine())
    ring = supervisor.logs("r1")
    await until(lambda: any("fake engine serving" in line for line in ring.tail(10)), what="banner")
    follower = ring.follow()
    await steer(http, ready, say="hello from the engine")
    batch = await asyncio.wait_for(follower.next_batch(), 5)
    assert batch == ["hello from the engine"]
    await supervisor.stop("r1", 0)
    assert await asyncio.wait_for(follower.next_batch(), 5) == []


async def test_metrics_follow_replicas_and_forget_them(
    supervisor: Supervisor, fake_engine: Cmd, until: Until
) -> None:
    metrics = AgentMetrics(supervisor.statuses, lambda: supervisor.restarts_by_pool)
    await start_ready(supervisor, until, fake_engine("--running", "2"))
    text = generate_latest(metrics.registry).decode()
    assert 'llmpool_agent_replicas{state="ready"} 1.0' in text
    assert 'llmpool_agent_engine_running_requests{replica="r1"} 2.0' in text
    assert 'llmpool_agent_engine_kv_cache_usage_ratio{replica="r1"} 0.2' in text
    assert "llmpool_agent_controller_connected 0.0" in text
    await supervisor.stop("r1", 0)
    text = generate_latest(metrics.registry).decode()
    assert 'replica="r1"' not in text
    assert 'llmpool_agent_replicas{state="ready"} 0.0' in text


async def test_shutdown_stops_every_replica(
    supervisor: Supervisor, fake_engine: Cmd, until: Until
) -> None:
    pids = []
    for rid in ("a", "b"):
        await supervisor.start(make_spec(fake_engine(), rid))
        pids.append(status_of(supervisor, rid).pid)
    await supervisor.shutdown()
    assert supervisor.statuses() == []
    await until(lambda: not any(alive(p) for p in pids), what="both processes gone")
    assert {s.replica_id for s in supervisor.take_report()} == {"a", "b"}


async def test_shutdown_refuses_later_starts(supervisor: Supervisor, fake_engine: Cmd) -> None:
    await supervisor.shutdown()
    with pytest.raises(UnavailableError, match="shutting down"):
        await supervisor.start(make_spec(fake_engine()))
    assert supervisor.statuses() == []
