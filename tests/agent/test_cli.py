"""`llm-pool agent` as a real process: flags, "agent started", commands, and no orphans after
SIGTERM or kill -9."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmpool.v1 import agent_pb2, types_pb2
from tests.agent.conftest import FAKE_ENGINE

Until = Callable[..., Awaitable[Any]]
Cmd = Callable[..., tuple[str, ...]]
READY = types_pb2.REPLICA_STATE_READY


def alive(pid: int) -> bool:
    """True while pid runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class AgentProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def find(self, pattern: str) -> re.Match[str] | None:
        for line in self.lines:
            if found := re.search(pattern, line):
                return found
        return None

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.wait_for(self._reader, 5)


@pytest.fixture
async def agent_process(controller_port: int) -> AsyncIterator[AgentProcess]:
    env = {
        **os.environ,
        "LLMPOOL_AGENT_LABELS": "zone=edge",
        "LLMPOOL_AGENT_PORT_RANGE": "41000-48999",
        # The fake controller speaks plaintext on loopback.
        "LLMPOOL_INSECURE": "1",
        # The fake engine, allowed as an operator allows their own server.
        "LLMPOOL_AGENT_ALLOW_ENGINES": f"{sys.executable} {FAKE_ENGINE}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmpool.cli", "agent",
        "--controller", f"127.0.0.1:{controller_port}", "--agent-id", "cli-agent",
        "--metrics-listen", "127.0.0.1:0", "--report-interval-s", "0.2", "--label", "gpu=none",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    agent = AgentProcess(proc)
    try:
        yield agent
    finally:
        await agent.close()


async def start_engine(fake: Any, fake_engine: Cmd) -> int:
    template = types_pb2.ReplicaTemplate(
        engine="sim", command=list(fake_engine()), health_path="/health", metrics_path="/metrics"
    )
    fake.send(
        start=agent_pb2.StartReplica(command_id="c", replica_id="r", pool="p", template=template)
    )
    assert (await fake.expect("result")).ok
    report = await fake.expect("report", lambda r: any(s.state == READY for s in r.replicas))
    pid = int(report.replicas[0].pid)
    assert alive(pid)
    return pid


async def test_sigterm_stops_replicas_and_exits_zero(
    fake_controller: Any, agent_process: AgentProcess, fake_engine: Cmd, until: Until
) -> None:
    register = await fake_controller.expect("register", within=20)
    assert register.agent_id == "cli-agent"
    assert dict(register.labels) == {"zone": "edge", "gpu": "none"}
    started = await until(
        lambda: agent_process.find(r"agent started.*metrics_port=(\d+)"), what="log"
    )
    async with httpx.AsyncClient(trust_env=False) as http:
        text = (await http.get(f"http://127.0.0.1:{started.group(1)}/metrics")).text
    assert "llmpool_agent_controller_connected 1.0" in text

    pid = await start_engine(fake_controller, fake_engine)
    agent_process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(agent_process.proc.wait(), 20) == 0
    assert not alive(pid)
    stopped = types_pb2.REPLICA_STATE_STOPPED
    await fake_controller.expect("report", lambda r: any(s.state == stopped for s in r.replicas))


async def test_kill_9_of_the_agent_leaves_no_engine_behind(
    fake_controller: Any, agent_process: AgentProcess, fake_engine: Cmd, until: Until
) -> None:
    await fake_controller.expect("register", within=20)
    pid = await start_engine(fake_controller, fake_engine)
    agent_process.proc.kill()
    await agent_process.proc.wait()
    await until(lambda: not alive(pid), within=10, what="the engine to die with its agent")


def test_bad_flags_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    assert main(["--port-range", "9-1"]) == 2
    assert "--port-range" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("agent", ["--controller", "10.1.2.3:50051"]),
        ("gateway", ["--controller", "controller.example:50051"]),
        ("controller", ["--listen", "0.0.0.0:0"]),
    ],
)
def test_plaintext_off_loopback_needs_a_second_flag(command: str, flags: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPOOL_")}
    done = subprocess.run(
        [sys.executable, "-m", "llmpool.cli", command, *flags, "--insecure"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--insecure-allow-remote" in done.stderr
