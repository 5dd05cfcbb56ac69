"""Attach mode end to end: an agent watches a sim engine it did not start; the gateway serves it,
stops when it dies and serves again when it comes back; the agent never touches its process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmpool.v1 import admin_pb2

pytestmark = pytest.mark.e2e

MESSAGES: Any = [{"role": "user", "content": "Hello there"}]


def test_attached_engine_is_served_dropped_and_served_again(
    tmp_path: Path, spawn: Any, ports: Any, wait: Any, cluster_of: Any, proctree: Any
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("pools:\n  - name: m\n    replicas: 0\n")
    engine_port = ports()
    controller_addr = f"127.0.0.1:{ports()}"
    gateway_addr = f"127.0.0.1:{ports()}"
    engine_args = ("sim-engine", "--port", str(engine_port), "--model", "m", "--speedup", "50")
    engine = spawn("engine", *engine_args)
    controller = spawn(
        "controller", "controller", "--listen", controller_addr, "--data-dir",
        str(tmp_path / "data"), "--config", str(config), "--metrics-listen", "127.0.0.1:0",
        "--report-interval-s", "0.2",
    )  # fmt: skip
    agent = spawn(
        "agent", "agent", "--controller", controller_addr, "--agent-id", "watcher",
        "--metrics-listen", "127.0.0.1:0",
        "--attach", f"pool=m,url=http://127.0.0.1:{engine_port},engine=sim",
    )  # fmt: skip
    spawn("gateway", "gateway", "--listen", gateway_addr, "--controller", controller_addr)
    cluster = cluster_of(
        gateway=gateway_addr, controller=controller_addr, procs=[controller, agent, engine]
    )
    client = openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=30)

    cluster.wait_ready("m", 1)
    [replica] = cluster.replicas("m")
    assert replica.agent_id == "watcher" and replica.status.attached
    assert (replica.status.pid, replica.status.restarts) == (0, 0)
    assert replica.status.url == f"http://127.0.0.1:{engine_port}"
    # The engine belongs to the test, not to the agent.
    assert engine.pid not in proctree.descendants(agent.pid)

    def answered() -> bool:
        chat = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
        return bool(chat.choices[0].message.content)

    wait(answered, 10, "an answer through the gateway")

    # Engine gone: once the agent reports it unhealthy, the pool has no healthy member.
    engine.stop()
    wait(lambda: not cluster.ready_replicas("m"), 20, "attached replica unhealthy")

    def unavailable() -> httpx.Response | None:
        resp = httpx.post(
            f"{cluster.base_url}/chat/completions",
            json={"model": "m", "messages": MESSAGES, "max_tokens": 3},
            timeout=10,
        )
        return resp if resp.status_code == 503 else None

    resp = wait(unavailable, 10, "503 from the gateway")
    assert resp.headers.get("retry-after")
    assert set(resp.json()["error"]) >= {"message", "type", "param", "code"}
    [down] = cluster.replicas("m")
    assert down.status.attached and "failed health probes" in down.status.message
    status = cluster.admin().GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="m"), timeout=5)
    assert status.healthy_members == 0

    # Back on the same port: served again, with no restart by the agent.
    engine_again = spawn("engine2", *engine_args)
    cluster.procs.append(engine_again)
    wait(lambda: cluster.ready_replicas("m"), 20, "attached replica healthy again")
    wait(answered, 10, "answers again after the engine came back")
    [back] = cluster.replicas("m")
    assert (back.status.restarts, back.status.pid) == (0, 0)
    assert engine_again.pid not in proctree.descendants(agent.pid)
    # Stopping the agent stops the watching, never the engine.
    assert agent.stop() == 0, agent.tail()
    assert engine_again.running()
