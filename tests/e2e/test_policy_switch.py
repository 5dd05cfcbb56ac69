"""A pool's routing policy switched through grpcurl at run time; the gateway follows, no restart."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

POOL = "switchy"
REPLICAS = 3
CONFIG = f"""
pools:
  - name: {POOL}
    policy: round_robin
    replicas: {REPLICAS}
    template:
      engine: sim
      command: ["{{python}}", "-m", "llmpool.cli", "sim-engine", "--host", "{{host}}",
                "--port", "{{port}}", "--model", "{{model}}", "--speedup", "50"]
      ready_timeout_s: 30
      cpu_slots: 0
"""
# The policy switched to, and what makes its choice visible: `session` keeps one user's requests
# on one member, where round robin spreads them over all.
STICKY_POLICY = "session"
STICKY_PARAMS: dict[str, str] = {}
BATCH = 6


def members_serving(cluster: Any, user: str = "alice", batch: int = BATCH) -> Counter[str]:
    """Which members served a batch of identical requests (the x-llmpool-member header)."""
    body = {
        "model": POOL,
        "user": user,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "The same long question, asked again. " * 8}],
    }
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=10) as http:
        for _ in range(batch):
            resp = http.post(f"{cluster.base_url}/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            seen[resp.headers["x-llmpool-member"]] += 1
    return seen


def update_pool(cluster: Any, pool: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    request = json.dumps({"pool": pool, "update_mask": {"paths": paths}})
    done = cluster.grpcurl("-d", request, cluster.controller, "llmpool.v1.AdminService/UpdatePool")
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def test_policy_switch_through_grpcurl_reaches_the_gateway_live(
    tmp_path: Path, start_up: Any, wait: Any, proctree: Any
) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text(CONFIG)
    cluster = start_up("--config", str(config))
    cluster.wait_ready(POOL, REPLICAS)
    before = proctree.descendants(cluster.procs[0].pid)

    # Round robin: one user's identical requests go everywhere (once the gateway holds all 3).
    wait(lambda: len(members_serving(cluster)) == REPLICAS, 20, "round robin over 3 members")

    reply = update_pool(
        cluster, {"name": POOL, "policy": STICKY_POLICY, "policy_params": STICKY_PARAMS},
        ["policy", "policy_params"],
    )  # fmt: skip
    assert reply["policy"] == STICKY_POLICY
    wait(lambda: len(members_serving(cluster)) == 1, 10, f"{STICKY_POLICY} keeps one member")
    # It stays that way (not a lucky batch), and other users land elsewhere: it is keyed.
    assert len(members_serving(cluster)) == 1
    homes = {next(iter(members_serving(cluster, f"user-{i}", batch=1))) for i in range(12)}
    assert len(homes) >= 2, homes

    shown = cluster.grpcurl(
        "-d", json.dumps({"name": POOL}), cluster.controller, "llmpool.v1.AdminService/GetPool"
    )
    assert json.loads(shown.stdout)["policy"] == STICKY_POLICY, shown.stderr

    # And back, with the params cleared by the mask.
    update_pool(cluster, {"name": POOL, "policy": "round_robin"}, ["policy", "policy_params"])
    wait(lambda: len(members_serving(cluster)) == REPLICAS, 10, "round robin again")

    # Nothing restarted: the same gateway, agent, controller and engine processes.
    assert proctree.descendants(cluster.procs[0].pid) == before
