"""`llm-pool gateway --workers 2`: one socket, two serving worker processes, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import GatewaySettings, parse_settings
from gateway.workers import decode_settings, encode_settings, worker_command, worker_settings
from llmpool.tls import TlsFiles

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name is in parentheses and may hold spaces: split after it.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running, not gone and not a zombie (a container's PID 1 may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def two_workers(pid: int) -> Callable[[], set[int]]:
    def found() -> set[int]:
        children = children_of(pid)
        return children if len(children) == 2 else set()

    return found


def test_workers_flag_env_and_worker_settings() -> None:
    assert parse_settings([], {}).workers == 1
    assert parse_settings([], {"LLMPOOL_GATEWAY_WORKERS": "3"}).workers == 3
    assert parse_settings(["--workers", "2"], {"LLMPOOL_GATEWAY_WORKERS": "3"}).workers == 2
    with pytest.raises(SystemExit):
        parse_settings(["--workers", "0"], {})
    s = GatewaySettings(gateway_id="gw", workers=2)
    # Each worker reports to the controller under its own id and serves as a single process.
    assert (worker_settings(s, 1).gateway_id, worker_settings(s, 1).workers) == ("gw-w1", 1)
    cmd = worker_command(s, 0, 7)
    assert cmd[1:3] == ["-m", "gateway.workers"] and "--fd" in cmd and "7" in cmd


@dataclass
class Gateway:
    proc: asyncio.subprocess.Process
    later_lines: list[bytes]
    drained: asyncio.Future[None]


async def start_gateway(controller: Any, port: int) -> Gateway:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmpool.cli",
        "gateway",
        "--listen",
        f"127.0.0.1:{port}",
        "--controller",
        f"127.0.0.1:{controller.port}",
        "--gateway-id",
        "gw",
        "--usage-interval-s",
        "0.1",
        "--graceful-timeout-s",
        "5",
        "--log-json",
        "--insecure",
        "--drain-delay-s",
        "0",
        env={**os.environ, "LLMPOOL_GATEWAY_WORKERS": "2"},
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), max(0.1, deadline - time.monotonic()))
        assert line, "gateway exited before listening"
        if b"gateway listening" in line:
            assert f"127.0.0.1:{port}".encode() in line
            break
    # Keep reading stderr (a full pipe would block the workers), keeping the lines.
    lines: list[bytes] = []

    async def drain() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line)

    return Gateway(proc, lines, asyncio.ensure_future(drain()))


async def test_two_workers_serve_and_sigterm_stops_both(
    kit: Any, engines: Any, controller: Any
) -> None:
    engine = await engines("e1")
    controller.full = kit.snapshot(1, [kit.route("m1", [kit.member("a", engine.url)])])
    port = kit.free_port()
    gw = await start_gateway(controller, port)
    proc = gw.proc
    try:
        workers = await kit.wait_until(two_workers(proc.pid), 20, "2 workers")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        async def one() -> int:
            # A fresh connection per request, so that either worker may accept it.
            async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
                return (await http.post(url, json=CHAT)).status_code

        def served_by() -> set[str]:
            return {r.gateway_id for r in controller.reports for m in r.members if m.requests}

        async def both_served() -> bool:
            statuses = await asyncio.gather(*(one() for _ in range(16)))
            assert set(statuses) == {200}
            return served_by() >= {"gw-w0", "gw-w1"}

        # Each worker has its own controller link and routing table, and both take requests.
        await kit.wait_until(both_served, 20, "requests served by both workers", interval=0.2)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert not any(alive(pid) for pid in workers)
        await asyncio.wait_for(gw.drained, 5)
        # The address is announced once, by the parent, not once per worker.
        assert not any(b"gateway listening" in line for line in gw.later_lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_workers_die_with_a_killed_parent(kit: Any, controller: Any) -> None:
    port = kit.free_port()
    gw = await start_gateway(controller, port)
    proc = gw.proc
    try:
        workers = await kit.wait_until(two_workers(proc.pid), 20, "2 workers")
        proc.kill()
        await proc.wait()
        # PR_SET_PDEATHSIG: the kernel sends each worker SIGTERM; nothing is left behind.
        await kit.wait_until(lambda: not any(alive(pid) for pid in workers), 20, "no orphans")
        await asyncio.wait_for(gw.drained, 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_worker_settings_survive_the_command_line_with_tls_and_every_field(tmp_path: Path) -> None:
    settings = GatewaySettings(
        gateway_id="gw",
        workers=2,
        controller_tls=TlsFiles.in_dir(tmp_path, "gateway"),
        policy_plugins=("a:B",),
        max_connections=123,
        https_cert="/c.pem",
        https_key="/k.pem",
    )
    assert decode_settings(encode_settings(settings)) == settings
