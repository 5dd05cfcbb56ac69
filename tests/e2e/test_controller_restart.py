"""Controller, agent and gateway apart: the controller goes away and comes back, nothing lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from llmpool.config import default_config_text
from llmpool.v1 import admin_pb2, types_pb2

pytestmark = pytest.mark.e2e

MESSAGES: Any = [{"role": "user", "content": "Hello there"}]


def test_gateway_and_agent_ride_out_a_controller_restart(
    tmp_path: Path, spawn: Any, ports: Any, wait: Any, cluster_of: Any
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(default_config_text())
    controller_addr = f"127.0.0.1:{ports()}"
    gateway_addr = f"127.0.0.1:{ports()}"
    controller_args = (
        "controller", "--listen", controller_addr, "--data-dir", str(tmp_path / "data"),
        "--config", str(config), "--metrics-listen", "127.0.0.1:0",
        "--backend-allow", "127.0.0.1",
    )  # fmt: skip
    controller = spawn("controller", *controller_args)
    spawn("agent", "agent", "--controller", controller_addr, "--metrics-listen", "127.0.0.1:0")
    spawn("gateway", "gateway", "--listen", gateway_addr, "--controller", controller_addr)
    cluster = cluster_of(gateway=gateway_addr, controller=controller_addr, procs=[controller])
    cluster.wait_ready("sim-small", 2)
    client = openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=30)

    replica_url = cluster.ready_replicas("sim-small")[0].status.url
    backend = types_pb2.Backend(
        id="keep-me", pool="sim-keep", url=replica_url, upstream_model="sim-small"
    )
    cluster.admin().AddBackend(admin_pb2.AddBackendRequest(backend=backend), timeout=5)
    cluster.admin().ScalePool(admin_pb2.ScalePoolRequest(name="sim-small", replicas=2), timeout=5)
    wait(lambda: "sim-keep" in cluster.model_ids(), 5, "sim-keep served")
    replica_ids = {r.status.replica_id for r in cluster.replicas("sim-small")}

    # Controller down: the gateway keeps answering from its last snapshot.
    assert controller.stop() == 0, controller.tail()
    for model in ("sim-small", "sim-keep"):
        for _ in range(5):
            chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)
            assert chat.choices[0].message.content
    assert {"sim-small", "sim-keep"} <= cluster.model_ids()

    # Controller back on the same data: admin state is what it was; agent and gateway reconnect.
    controller = spawn("controller2", *controller_args)
    cluster.procs[:] = [controller]

    def agents_connected() -> list[Any]:
        agents = cluster.admin().ListAgents(admin_pb2.ListAgentsRequest(), timeout=2).agents
        return [a for a in agents if a.connected]

    wait(agents_connected, 20, "agent reconnected")
    backends = cluster.admin().ListBackends(admin_pb2.ListBackendsRequest(), timeout=5).backends
    assert [b.id for b in backends] == ["keep-me"]
    pools = {p.name for p in cluster.admin().ListPools(admin_pb2.ListPoolsRequest()).pools}
    assert pools == {"sim-small", "sim-keep"}
    wait(lambda: len(cluster.ready_replicas("sim-small")) == 2, 20, "replicas re-announced")
    assert {r.status.replica_id for r in cluster.replicas("sim-small")} == replica_ids

    # The gateway is subscribed again: a change made now reaches it.
    after = types_pb2.Backend(
        id="after", pool="sim-after", url=replica_url, upstream_model="sim-small"
    )
    cluster.admin().AddBackend(admin_pb2.AddBackendRequest(backend=after), timeout=5)
    wait(lambda: "sim-after" in cluster.model_ids(), 10, "gateway got the new snapshot")
    chat = client.chat.completions.create(model="sim-after", messages=MESSAGES, max_tokens=3)
    assert chat.choices[0].message.content
