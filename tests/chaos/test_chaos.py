"""The chaos suite: two agents, two gateways, four simulated replicas, steady mixed load through
both gateways; one fault after another, each measured, the figures printed as a table at the
end of the run (tests/chaos/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmpool.v1 import admin_pb2, types_pb2
from tests.chaos.fakes import FakeMember
from tests.chaos.load import Load, Outcome
from tests.e2e.conftest import descendants
from tests.support import wait_for

pytestmark = pytest.mark.e2e

CONFIG = """
pools:
  - name: chaos
    policy: least_in_flight
    # Scaled to 4 once both agents are in, so that placement spreads them.
    replicas: 0
    ttfb_timeout_s: 3
    eject_after_failures: 3
    eject_base_s: 2
    template:
      engine: sim
      command: ["{python}", "-m", "llmpool.cli", "sim-engine", "--host", "{host}", "--port",
                "{port}", "--model", "{model}", "--speedup", "20"]
      health_path: /health
      metrics_path: /metrics
      ready_timeout_s: 30
      cpu_slots: 0
  # Batches 2: three clients fit one replica (a queue of 1, the target), six need two.
  - name: auto
    replicas: 1
    autoscale: {min_replicas: 1, max_replicas: 2, metric: waiting, target: 1, up_window_s: 2,
                down_window_s: 6, up_cooldown_s: 2, down_cooldown_s: 4}
    template:
      engine: sim
      command: ["{python}", "-m", "llmpool.cli", "sim-engine", "--host", "{host}", "--port",
                "{port}", "--model", "{model}", "--speedup", "1", "--max-num-seqs", "2"]
      health_path: /health
      metrics_path: /metrics
      ready_timeout_s: 30
      cpu_slots: 0
  # Scaled to zero until a request comes, and back to zero 5 s after the last.
  - name: cold
    replicas: 0
    autoscale: {min_replicas: 0, max_replicas: 1, down_window_s: 5, down_cooldown_s: 0,
                cold_start_timeout_s: 30}
    template:
      engine: sim
      command: ["{python}", "-m", "llmpool.cli", "sim-engine", "--host", "{host}", "--port",
                "{port}", "--model", "{model}", "--speedup", "20"]
      health_path: /health
      metrics_path: /metrics
      ready_timeout_s: 30
      cpu_slots: 0
"""
REPLICAS = 4
# A plain request's first-byte deadline in this pool: 3 s + 8 tokens x 0.2 s.
PLAIN_DEADLINE_S = 3 + 8 * 0.2


class Rig:
    def __init__(self, tmp: Path, spawn: Any, ports: Callable[[], int], cluster_of: Any) -> None:
        self.tmp, self.spawn, self.ports = tmp, spawn, ports
        (tmp / "chaos.yaml").write_text(CONFIG)
        self.controller_addr = f"127.0.0.1:{ports()}"
        self.controller = self._controller("controller")
        self.agents = {name: self._agent(name) for name in ("a1", "a2")}
        self.gateways: dict[str, Any] = {}
        for name in ("g1", "g2"):
            self.add_gateway(name)
        first = next(iter(self.gateways))
        self.cluster = cluster_of(gateway=first, controller=self.controller_addr)
        self.rows: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self._serving: list[str] = []
        self._closing = threading.Event()
        self._checker = threading.Thread(target=self._health_checks, daemon=True)
        self._checker.start()

    def _controller(self, name: str) -> Any:
        return self.spawn(
            name, "controller", "--listen", self.controller_addr, "--data-dir",
            str(self.tmp / "data"), "--config", str(self.tmp / "chaos.yaml"),
            "--metrics-listen", "127.0.0.1:0", "--backend-allow", "127.0.0.1", "--log-json",
        )  # fmt: skip

    def _agent(self, name: str) -> Any:
        return self.spawn(
            f"agent-{name}-{time.monotonic_ns()}", "agent", "--controller", self.controller_addr,
            "--agent-id", name, "--metrics-listen", "127.0.0.1:0", "--log-json",
        )  # fmt: skip

    def add_gateway(self, name: str) -> str:
        addr = f"127.0.0.1:{self.ports()}"
        self.gateways[addr] = self.spawn(
            f"gateway-{name}", "gateway", "--listen", addr, "--controller", self.controller_addr,
            "--gateway-id", name, "--drain-delay-s", "1", "--log-json",
        )  # fmt: skip
        return addr

    def live_gateways(self) -> list[str]:
        return [addr for addr, proc in self.gateways.items() if proc.running()]

    def serving_gateways(self) -> list[str]:
        """Gateways whose /readyz said yes at the last check: what a load balancer sends to."""
        return list(self._serving)

    def _health_checks(self) -> None:
        # A load balancer's health check every 0.2 s (the gateways' drain delay is 1 s).
        while not self._closing.is_set():
            serving = []
            for addr in self.live_gateways():
                try:
                    if httpx.get(f"http://{addr}/readyz", timeout=1).status_code == 200:
                        serving.append(addr)
                except httpx.HTTPError:
                    pass
            self._serving = serving
            self._closing.wait(0.2)

    def close(self) -> None:
        self._closing.set()
        self._checker.join(5)

    def ready(self) -> list[Any]:
        return self.cluster.ready_replicas("chaos")

    def healthy_members(self) -> int:
        status = self.cluster.admin().GetPoolStatus(
            admin_pb2.GetPoolStatusRequest(name="chaos"), timeout=2
        )
        return int(status.healthy_members)

    def full_capacity(self) -> bool:
        return (
            self.healthy_members() >= REPLICAS
            and len(self.ready()) >= REPLICAS
            and set(self.serving_gateways()) == set(self.live_gateways())
        )

    def wait_full(self, within: float, since: float, drop_within: float = 0.0) -> float:
        """Seconds from `since` until full capacity; with drop_within, first waits (that long at
        most) for the fault to show, so that a fault not noticed yet is not counted as healed."""
        if drop_within:
            _wait(lambda: not self.full_capacity(), drop_within, since)
        return _wait(self.full_capacity, within, since)

    def record(
        self, fault: str, load: Load, since: float, recovery_s: float | None, **extra: Any
    ) -> list[Outcome]:
        return self.record_seen(fault, load.since(since), recovery_s, **extra)

    def record_seen(
        self, fault: str, seen: list[Outcome], recovery_s: float | None, **extra: Any
    ) -> list[Outcome]:
        plain = [o for o in seen if not o.stream]
        streams = [o for o in seen if o.stream]
        row = {
            "fault": fault,
            "requests": len(seen),
            "plain failed": sum(o.result != "ok" for o in plain),
            "streams ok": sum(o.result == "ok" for o in streams),
            "error events": sum(o.result == "error_event" for o in streams),
            "cut silently": sum(o.result == "cut" for o in streams),
            "slowest s": round(max((o.seconds for o in seen), default=0.0), 2),
            "recovery s": "-" if recovery_s is None else round(recovery_s, 1),
            **extra,
        }
        self.rows.append(row)
        return seen

    def tries_after(self, members: set[str], noticed: float) -> list[float]:
        """Seconds after `noticed` (wall clock) of every failed try any gateway logged at one
        of `members` since then: tries that reached a dead replica."""
        late = []
        for proc in self.gateways.values():
            for entry in _log_entries(proc.log_path):
                if entry.get("msg") == "upstream try failed" and entry.get("member") in members:
                    if entry["ts"] >= noticed:
                        late.append(entry["ts"] - noticed)
        return sorted(late)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)


@pytest.fixture()
def rig(tmp_path: Path, spawn: Any, ports: Any, cluster_of: Any, chaos_table: Any) -> Iterator[Rig]:
    r = Rig(tmp_path, spawn, ports, cluster_of)
    try:
        yield r
    finally:
        r.close()
        chaos_table.extend(r.rows)


def _replica_pids(rig: Rig, agent: str) -> list[int]:
    return [r.status.pid for r in rig.ready() if r.agent_id == agent and r.status.pid]


def _kill_tree(proc: Any, sig: int) -> None:
    """A whole host going away: the agent and every engine it started."""
    tree = descendants(proc.pid)
    os.kill(proc.pid, sig)
    for pid in tree:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _phase(seconds: float) -> None:
    time.sleep(seconds)  # load runs meanwhile: the phase is what is measured


def test_chaos(rig: Rig) -> None:
    wait_for(
        lambda: len(_admin(rig).ListAgents(admin_pb2.ListAgentsRequest(), timeout=2).agents) == 2,
        30,
        "both agents registered",
    )
    _scale(rig, REPLICAS)
    assert rig.wait_full(90, time.monotonic()) < 90, "cluster did not get ready"
    per_agent = {a: len(_replica_pids(rig, a)) for a in rig.agents}
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
    _phase(3)
    rig.record("none (baseline)", load, 0.0, None)

    # 1. kill -9 of a replica: its agent restarts it; retries hide the gap.
    t = time.monotonic()
    [victim, *_] = [r for r in rig.ready() if r.agent_id == "a1" and r.status.pid]
    os.kill(victim.status.pid, signal.SIGKILL)
    recovery = rig.wait_full(30, t, drop_within=5)
    _phase(1)
    noticed = _logged_at(rig.agents["a1"].log_path, "replica failed", victim.status.replica_id)
    late = rig.tries_after({victim.status.replica_id}, noticed)
    seen = rig.record("kill -9 replica", load, t, recovery, **_late_columns(late))
    _expect_no_plain_failures(rig, "kill -9 replica", seen)
    rig.check(recovery <= 10, f"kill -9 replica: full capacity after {recovery:.1f} s")
    _expect_no_late_tries(rig, "kill -9 replica", late)

    # 2. kill -9 of an agent: its engines die with it (they get SIGKILL when their parent
    # dies); a supervisor (systemd) starts it again a second later and it gets new replicas.
    t = time.monotonic()
    lost = {r.status.replica_id for r in rig.ready() if r.agent_id == "a2"}
    rig.agents["a2"].stop(signal.SIGKILL)
    _phase(1)
    rig.agents["a2"] = rig._agent("a2")
    recovery = rig.wait_full(30, t, drop_within=5)
    _phase(1)
    noticed = _logged_at(rig.controller.log_path, "agent disconnected", "a2")
    late = rig.tries_after(lost, noticed)
    seen = rig.record("kill -9 agent, restarted", load, t, recovery, **_late_columns(late))
    _expect_no_plain_failures(rig, "kill -9 agent", seen)
    rig.check(recovery <= 10, f"kill -9 agent: full capacity after {recovery:.1f} s")
    _expect_no_late_tries(rig, "kill -9 agent", late)

    # 3. SIGSTOP of an agent past its lease: its replicas leave routing, then come back.
    t = time.monotonic()
    stopped = rig.agents["a2"]
    os.kill(stopped.pid, signal.SIGSTOP)
    _phase(7)
    os.kill(stopped.pid, signal.SIGCONT)
    t_cont = time.monotonic()
    recovery = rig.wait_full(30, t_cont)
    seen = rig.record("SIGSTOP agent 7 s", load, t, recovery)
    _expect_no_plain_failures(rig, "SIGSTOP agent", seen)
    rig.check(recovery <= 10, f"SIGSTOP agent: full capacity {recovery:.1f} s after SIGCONT")

    # 4. A member that accepts and never answers: one deadline per gateway, then ejected.
    _add_backend(rig, member.url)
    member.mode = "hang"
    t = time.monotonic()
    _phase(8)
    seen = rig.record("member hangs", load, t, None, **{"tries at it": len(member.arrived(t))})
    _expect_no_plain_failures(rig, "member hangs", seen)
    slow = [o for o in seen if o.seconds > PLAIN_DEADLINE_S + 2]
    rig.check(not slow, f"member hangs: {len(slow)} requests past the first-byte deadline")

    # 5. A member answering 429 with Retry-After 5: at most one try per gateway per 5 s.
    member.mode = "429"
    t = time.monotonic()
    _phase(10)
    tries = len(member.arrived(t, "429"))
    seen = rig.record("member 429 Retry-After 5", load, t, None, **{"tries at it": tries})
    _expect_no_plain_failures(rig, "member 429", seen)
    # Each gateway may have it half-open or ejected from the hang: at most 3 windows each.
    rig.check(tries <= 2 * 3, f"member 429: {tries} tries in 10 s (Retry-After 5)")

    # 6. A member answering 500: ejected after 3 failures, back by itself when healthy.
    member.mode = "500"
    t = time.monotonic()
    _phase(8)
    failing = len(member.arrived(t, "500"))
    member.mode = "ok"
    t_ok = time.monotonic()
    _phase(8)
    back = len(member.arrived(t_ok, "ok"))
    seen = rig.record(
        "member 500 then healthy", load, t, None, **{"tries at it": failing, "back": back}
    )
    _expect_no_plain_failures(rig, "member 500", seen)
    # 3 to eject per gateway, then a probe every 2, 4 s...: a handful, not a share of traffic.
    rig.check(failing <= 2 * 6, f"member 500: {failing} tries in 8 s")
    rig.check(back > 0, "member 500: not back in rotation 8 s after it healed")
    _delete_backend(rig)

    # 7. Scale up and down under load.
    t = time.monotonic()
    _scale(rig, REPLICAS + 2)
    up = _wait(lambda: len(rig.ready()) >= REPLICAS + 2, 30, t)
    _scale(rig, REPLICAS)
    t_down = time.monotonic()
    down = _wait(lambda: len(rig.cluster.replicas("chaos")) == REPLICAS, 40, t_down)
    seen = rig.record(
        "scale 4 -> 6 -> 4", load, t, None, **{"up s": round(up, 1), "down s": round(down, 1)}
    )
    _expect_no_plain_failures(rig, "scale", seen)

    _autoscale_rows(rig)

    # 8. SIGTERM of a gateway with streams in flight: they finish or end with an error event.
    t = time.monotonic()
    doomed = rig.gateways[rig.live_gateways()[1]]
    doomed.stop(signal.SIGTERM)
    _phase(2)
    seen = rig.record("SIGTERM gateway", load, t, None)
    _expect_no_plain_failures(rig, "SIGTERM gateway", seen)
    rig.add_gateway("g2b")

    # 9. kill -9 of the controller, back after 10 s; a gateway starts while it is down.
    t = time.monotonic()
    rig.controller.stop(signal.SIGKILL)
    _phase(3)
    late = rig.add_gateway("g3")
    _phase(7)
    rig.controller = rig._controller("controller-2")
    t_back = time.monotonic()
    recovery = rig.wait_full(40, t_back)
    _phase(2)
    seen = rig.record("kill -9 controller 10 s", load, t, recovery)
    # (recovery: from the restart, until the new gateway serves and the pool is whole)
    _expect_no_plain_failures(rig, "controller restart", seen)
    rig.check(recovery <= 10, f"controller restart: full capacity {recovery:.1f} s after it")
    late_ok = [o for o in seen if o.gateway == late and o.result == "ok"]
    rig.check(bool(late_ok), "controller restart: the gateway started meanwhile never served")

    # 10. Host loss: agent a1 and its engines gone for good; replaced on a2.
    t = time.monotonic()
    lost = {r.status.replica_id for r in rig.cluster.replicas("chaos") if r.agent_id == "a1"}
    _kill_tree(rig.agents["a1"], signal.SIGKILL)
    recovery = rig.wait_full(60, t, drop_within=5)
    _phase(1)
    noticed = _logged_at(rig.controller.log_path, "agent disconnected", "a1")
    late = rig.tries_after(lost, noticed)
    seen = rig.record(
        "host loss (kill -9 agent + engines)", load, t, recovery, **_late_columns(late)
    )
    _expect_no_plain_failures(rig, "host loss", seen)
    _expect_no_late_tries(rig, "host loss", late)
    # Lease (5 s) + a simulated engine's start (about 2 s) + reconcile passes.
    rig.check(recovery <= 15, f"host loss: replaced after {recovery:.1f} s")


def _autoscale_rows(rig: Rig) -> None:
    """Load on pool "auto" doubles, then stops; a request comes for pool "cold" (at zero)."""
    wait_for(lambda: len(rig.cluster.ready_replicas("auto")) == 1, 30, "auto: one replica")
    base = Load(rig.serving_gateways, workers=3, model="auto").start()
    _phase(4)
    steady = len(rig.cluster.replicas("auto"))
    t = time.monotonic()
    more = Load(rig.serving_gateways, workers=3, model="auto").start()
    try:
        decided = _wait(lambda: _pool(rig, "auto").replicas == 2, 40, t)
        ready = _wait(lambda: len(rig.cluster.ready_replicas("auto")) == 2, 40, t)
        served = _wait(lambda: _all_served(rig, "auto", 2), 40, t)
        _phase(1)
    finally:
        more.stop()
        base.stop()
    t_stop = time.monotonic()
    down = _wait(lambda: _pool(rig, "auto").replicas == 1, 40, t_stop)
    removed = _wait(lambda: len(rig.cluster.replicas("auto")) == 1, 40, t_stop)
    status = _admin(rig).GetPoolStatus(admin_pb2.GetPoolStatusRequest(name="auto"), timeout=2)
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
    _expect_no_plain_failures(rig, "autoscaler", seen)
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
    first = _wait(lambda: any(o.result == "ok" for o in cold.since(t)), 40, t)
    _phase(1)
    cold.stop()
    t_stop = time.monotonic()
    to_zero = _wait(lambda: rig.cluster.replicas("cold") == [], 40, t_stop)
    seen = rig.record_seen(
        "request for a pool at zero",
        cold.outcomes,
        None,
        **{"first answer s": round(first, 1), "to zero s": round(to_zero, 1)},
    )
    _expect_no_plain_failures(rig, "scale from zero", seen)
    rig.check(first < 20, f"scale from zero: first answer after {first:.1f} s")
    rig.check(to_zero < 20, f"scale from zero: back to zero {to_zero:.1f} s after the last request")


def _pool(rig: Rig, name: str) -> Any:
    return _admin(rig).GetPool(admin_pb2.GetPoolRequest(name=name), timeout=2)


def _all_served(rig: Rig, pool: str, n: int) -> bool:
    """n READY replicas of the pool, each of which has finished a request."""
    ready = rig.cluster.ready_replicas(pool)
    return len(ready) >= n and all(_finished(r.status.url) > 0 for r in ready)


def _finished(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=2).text
    prefix = "vllm:e2e_request_latency_seconds_count"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def _log_entries(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _logged_at(path: Path, msg: str, about: str) -> float:
    """Wall-clock time of the last log entry `msg` naming `about` (a replica or agent id)."""
    found = [
        e["ts"]
        for e in _log_entries(path)
        if e.get("msg") == msg and about in (e.get("replica_id"), e.get("agent_id"))
    ]
    assert found, f"{path.name}: no {msg!r} for {about}"
    return float(found[-1])


def _late_columns(late: list[float]) -> dict[str, Any]:
    """Tries at the dead replica after its agent (or the controller) noticed: how many, and
    the last one's lag."""
    return {"tries at dead": len(late), "last try s": round(late[-1], 2) if late else "-"}


def _expect_no_late_tries(rig: Rig, fault: str, late: list[float]) -> None:
    over = [x for x in late if x > 1.0]
    rig.check(not over, f"{fault}: tries at a dead replica {over} s after it was noticed")


def _expect_no_plain_failures(rig: Rig, fault: str, seen: list[Outcome]) -> None:
    failed = [o for o in seen if not o.stream and o.result != "ok"]
    rig.check(not failed, f"{fault}: {len(failed)} plain requests failed: {failed[:2]}")


def _wait(condition: Callable[[], bool], within: float, since: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.monotonic() - since
        except Exception:
            pass
        time.sleep(0.1)
    return float("inf")


def _admin(rig: Rig) -> Any:
    return rig.cluster.admin()


def _add_backend(rig: Rig, url: str) -> None:
    backend = types_pb2.Backend(id="fake", pool="chaos", url=url, upstream_model="chaos")
    _admin(rig).AddBackend(admin_pb2.AddBackendRequest(backend=backend), timeout=5)


def _delete_backend(rig: Rig) -> None:
    _admin(rig).DeleteBackend(admin_pb2.DeleteBackendRequest(id="fake"), timeout=5)


def _scale(rig: Rig, n: int) -> None:
    _admin(rig).ScalePool(admin_pb2.ScalePoolRequest(name="chaos", replicas=n), timeout=5)
