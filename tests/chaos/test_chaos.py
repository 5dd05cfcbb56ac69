"""The chaos suite: two agents, two gateways, four simulated replicas, steady mixed load through
both gateways; one fault after another, each measured, the figures printed as a table at the
end of the run (tests/chaos/conftest.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmpool.v1 import admin_pb2
from tests.chaos.fakes import FakeMember
from tests.chaos.load import Load
from tests.chaos.rig import (
    PLAIN_DEADLINE_S,
    REPLICAS,
    Rig,
    add_backend,
    admin,
    delete_backend,
    expect_no_late_tries,
    expect_no_plain_failures,
    kill_tree,
    late_columns,
    logged_at,
    phase,
    replica_pids,
    scale,
    wait_s,
)
from tests.support import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture()
def rig(tmp_path: Path, spawn: Any, ports: Any, cluster_of: Any, chaos_table: Any) -> Iterator[Rig]:
    r = Rig(tmp_path, spawn, ports, cluster_of)
    try:
        yield r
    finally:
        r.close()
        chaos_table.extend(r.rows)


def test_chaos(rig: Rig) -> None:
    wait_for(
        lambda: len(admin(rig).ListAgents(admin_pb2.ListAgentsRequest(), timeout=2).agents) == 2,
        30,
        "both agents registered",
    )
    scale(rig, REPLICAS)
    assert rig.wait_full(90, time.monotonic()) < 90, "cluster did not get ready"
    per_agent = {a: len(replica_pids(rig, a)) for a in rig.agents}
    assert per_agent == {"a1": 2, "a2": 2}, per_agent
    wait_for(lambda: len(rig.serving_gateways()) == 2, 10, "gateways ready")
    load = Load(rig.serving_gateways).start()
    member = FakeMember()
    try:
        _run_faults(rig, load, member)
    finally:
        load.stop()
        member.close()
    everything = load.outcomes
    rig.check(
        not [o for o in everything if o.result == "cut"],
        f"streams cut silently: {[o.detail for o in everything if o.result == 'cut'][:3]}",
    )
    assert not rig.problems, "\n".join(rig.problems)


def _run_faults(rig: Rig, load: Load, member: FakeMember) -> None:
    phase(3)
    rig.record("none (baseline)", load, 0.0, None)

    # 1. kill -9 of a replica: its agent restarts it; retries hide the gap.
    t = time.monotonic()
    [victim, *_] = [r for r in rig.ready() if r.agent_id == "a1" and r.status.pid]
    os.kill(victim.status.pid, signal.SIGKILL)
    recovery = rig.wait_full(30, t, drop_within=5)
    phase(1)
    noticed = logged_at(rig.agents["a1"].log_path, "replica failed", victim.status.replica_id)
    late = rig.tries_after({victim.status.replica_id}, noticed)
    seen = rig.record("kill -9 replica", load, t, recovery, **late_columns(late))
    expect_no_plain_failures(rig, "kill -9 replica", seen)
    rig.check(recovery <= 10, f"kill -9 replica: full capacity after {recovery:.1f} s")
    expect_no_late_tries(rig, "kill -9 replica", late)

    # 2. kill -9 of an agent: its engines die with it (they get SIGKILL when their parent
    # dies); a supervisor (systemd) starts it again a second later and it gets new replicas.
    t = time.monotonic()
    lost = {r.status.replica_id for r in rig.ready() if r.agent_id == "a2"}
    rig.agents["a2"].stop(signal.SIGKILL)
    phase(1)
    rig.agents["a2"] = rig._agent("a2")
    recovery = rig.wait_full(30, t, drop_within=5)
    phase(1)
    noticed = logged_at(rig.controller.log_path, "agent disconnected", "a2")
    late = rig.tries_after(lost, noticed)
    seen = rig.record("kill -9 agent, restarted", load, t, recovery, **late_columns(late))
    expect_no_plain_failures(rig, "kill -9 agent", seen)
    rig.check(recovery <= 10, f"kill -9 agent: full capacity after {recovery:.1f} s")
    expect_no_late_tries(rig, "kill -9 agent", late)

    # 3. SIGSTOP of an agent past its lease: its replicas leave routing, then come back.
    t = time.monotonic()
    stopped = rig.agents["a2"]
    os.kill(stopped.pid, signal.SIGSTOP)
    phase(7)
    os.kill(stopped.pid, signal.SIGCONT)
    t_cont = time.monotonic()
    recovery = rig.wait_full(30, t_cont)
    seen = rig.record("SIGSTOP agent 7 s", load, t, recovery)
    expect_no_plain_failures(rig, "SIGSTOP agent", seen)
    rig.check(recovery <= 10, f"SIGSTOP agent: full capacity {recovery:.1f} s after SIGCONT")

    # 4. A member that accepts and never answers: one deadline per gateway, then ejected.
    add_backend(rig, member.url)
    member.mode = "hang"
    t = time.monotonic()
    phase(8)
    seen = rig.record("member hangs", load, t, None, **{"tries at it": len(member.arrived(t))})
    expect_no_plain_failures(rig, "member hangs", seen)
    slow = [o for o in seen if o.seconds > PLAIN_DEADLINE_S + 2]
    rig.check(not slow, f"member hangs: {len(slow)} requests past the first-byte deadline")

    # 5. A member answering 429 with Retry-After 5: at most one try per gateway per 5 s.
    member.mode = "429"
    t = time.monotonic()
    phase(10)
    tries = len(member.arrived(t, "429"))
    seen = rig.record("member 429 Retry-After 5", load, t, None, **{"tries at it": tries})
    expect_no_plain_failures(rig, "member 429", seen)
    # Each gateway may have it half-open or ejected from the hang: at most 3 windows each.
    rig.check(tries <= 2 * 3, f"member 429: {tries} tries in 10 s (Retry-After 5)")

    # 6. A member answering 500: ejected after 3 failures, back by itself when healthy.
    member.mode = "500"
    t = time.monotonic()
    phase(8)
    failing = len(member.arrived(t, "500"))
    member.mode = "ok"
    t_ok = time.monotonic()
    phase(8)
    back = len(member.arrived(t_ok, "ok"))
    seen = rig.record(
        "member 500 then healthy", load, t, None, **{"tries at it": failing, "back": back}
    )
    expect_no_plain_failures(rig, "member 500", seen)
    # 3 to eject per gateway, then a probe every 2, 4 s...: a handful, not a share of traffic.
    rig.check(failing <= 2 * 6, f"member 500: {failing} tries in 8 s")
    rig.check(back > 0, "member 500: not back in rotation 8 s after it healed")
    delete_backend(rig)

    # 7. Scale up and down under load.
    t = time.monotonic()
    scale(rig, REPLICAS + 2)
    up = wait_s(lambda: len(rig.ready()) >= REPLICAS + 2, 30, t)
    scale(rig, REPLICAS)
    t_down = time.monotonic()
    down = wait_s(lambda: len(rig.cluster.replicas("chaos")) == REPLICAS, 40, t_down)
    seen = rig.record(
        "scale 4 -> 6 -> 4", load, t, None, **{"up s": round(up, 1), "down s": round(down, 1)}
    )
    expect_no_plain_failures(rig, "scale", seen)

    _autoscale_rows(rig)

    # 8. SIGTERM of a gateway with streams in flight: they finish or end with an error event.
    t = time.monotonic()
    doomed = rig.gateways[rig.live_gateways()[1]]
    doomed.stop(signal.SIGTERM)
    phase(2)
    seen = rig.record("SIGTERM gateway", load, t, None)
    expect_no_plain_failures(rig, "SIGTERM gateway", seen)
    rig.add_gateway("g2b")

    # 9. kill -9 of the controller, back after 10 s; a gateway starts while it is down.
    t = time.monotonic()
    rig.controller.stop(signal.SIGKILL)
    phase(3)
    late = rig.add_gateway("g3")
    phase(7)
    rig.controller = rig._controller("controller-2")
    t_back = time.monotonic()
    recovery = rig.wait_full(40, t_back)
    phase(2)
    seen = rig.record("kill -9 controller 10 s", load, t, recovery)
    # (recovery: from the restart, until the new gateway serves and the pool is whole)
    expect_no_plain_failures(rig, "controller restart", seen)
    rig.check(recovery <= 10, f"controller restart: full capacity {recovery:.1f} s after it")
    late_ok = [o for o in seen if o.gateway == late and o.result == "ok"]
    rig.check(bool(late_ok), "controller restart: the gateway started meanwhile never served")

    # 10. Host loss: agent a1 and its engines gone for good; replaced on a2.
    t = time.monotonic()
    lost = {r.status.replica_id for r in rig.cluster.replicas("chaos") if r.agent_id == "a1"}
    kill_tree(rig.agents["a1"], signal.SIGKILL)
    recovery = rig.wait_full(60, t, drop_within=5)
    phase(1)
    noticed = logged_at(rig.controller.log_path, "agent disconnected", "a1")
    late = rig.tries_after(lost, noticed)
    seen = rig.record(
        "host loss (kill -9 agent + engines)", load, t, recovery, **late_columns(late)
    )
    expect_no_plain_failures(rig, "host loss", seen)
    expect_no_late_tries(rig, "host loss", late)
    # Lease (5 s) + a simulated engine's start (about 2 s) + reconcile passes.
    rig.check(recovery <= 15, f"host loss: replaced after {recovery:.1f} s")


def _autoscale_rows(rig: Rig) -> None:
    """Load on pool "auto" doubles, then stops; a request comes for pool "cold" (at zero)."""
    wait_for(lambda: len(rig.cluster.ready_replicas("auto")) == 1, 30, "auto: one replica")
    base = Load(rig.serving_gateways, workers=3, model="auto").start()
    phase(4)
    steady = len(rig.cluster.replicas("auto"))
    t = time.monotonic()
    more = Load(rig.serving_gateways, workers=3, model="auto").start()
    try:
        decided = wait_s(lambda: _pool(rig, "auto").replicas == 2, 40, t)
        ready = wait_s(lambda: len(rig.cluster.ready_replicas("auto")) == 2, 40, t)
        served = wait_s(lambda: _all_served(rig, "auto", 2), 40, t)
        phase(1)
    finally:
        more.stop()
        base.stop()
    t_stop = time.monotonic()
    down = wait_s(lambda: _pool(rig, "auto").replicas == 1, 40, t_stop)
    removed = wait_s(lambda: len(rig.cluster.replicas("auto")) == 1, 40, t_stop)
    status = admin(rig).GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="auto"), timeout=2)
    seen = rig.record_seen(
        "load doubles then stops (autoscaler)",
        base.outcomes + more.outcomes,
        None,
        **{
            "up s": round(decided, 1),
            "ready s": round(ready, 1),
            "in traffic s": round(served, 1),
            "down s": round(down, 1),
            "removed s": round(removed, 1),
        },
    )
    expect_no_plain_failures(rig, "autoscaler", seen)
    rig.check(steady == 1, f"autoscaler: {steady} replicas under the steady load, not 1")
    rig.check(served < 30, f"autoscaler: second replica in traffic after {served:.1f} s")
    # Not before the down window (6 s) has passed since the last busy second (recommendations
    # are a second apart, so the last busy one may be up to 1.5 s before the load stopped),
    # and well before 15 s.
    rig.check(4.5 <= down < 15, f"autoscaler: scaled down {down:.1f} s after the load stopped")
    rig.check(removed < 30, f"autoscaler: replica removed {removed:.1f} s after the load stopped")
    rig.check(
        (status.autoscale.last_from, status.autoscale.last_to) == (2, 1),
        f"autoscaler: GetPoolStatus shows {status.autoscale}",
    )

    assert rig.cluster.replicas("cold") == []
    t = time.monotonic()
    cold = Load(rig.serving_gateways, workers=2, model="cold").start()
    first = wait_s(lambda: any(o.result == "ok" for o in cold.since(t)), 40, t)
    phase(1)
    cold.stop()
    t_stop = time.monotonic()
    to_zero = wait_s(lambda: rig.cluster.replicas("cold") == [], 40, t_stop)
    seen = rig.record_seen(
        "request for a pool at zero",
        cold.outcomes,
        None,
        **{"first answer s": round(first, 1), "to zero s": round(to_zero, 1)},
    )
    expect_no_plain_failures(rig, "scale from zero", seen)
    rig.check(first < 20, f"scale from zero: first answer after {first:.1f} s")
    rig.check(to_zero < 20, f"scale from zero: back to zero {to_zero:.1f} s after the last request")


def _pool(rig: Rig, name: str) -> Any:
    return admin(rig).GetPool(admin_pb2.GetPoolRequest(name=name), timeout=2)


def _all_served(rig: Rig, pool: str, n: int) -> bool:
    """n READY replicas of the pool, each of which has finished a request."""
    ready = rig.cluster.ready_replicas(pool)
    return len(ready) >= n and all(_finished(r.status.url) > 0 for r in ready)


def _finished(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=2).text
    prefix = "vllm:e2e_request_latency_seconds_count"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))
