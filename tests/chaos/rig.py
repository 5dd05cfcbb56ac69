"""The chaos suite's rig: the processes (controller, two agents, gateways, a load balancer's
health checks), the fault helpers and the readings of their logs."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from llmpool.v1 import admin_pb2, types_pb2
from tests.chaos.load import Load, Outcome
from tests.e2e.conftest import descendants

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
            wait_s(lambda: not self.full_capacity(), drop_within, since)
        return wait_s(self.full_capacity, within, since)

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
            for entry in log_entries(proc.log_path):
                if entry.get("msg") == "upstream try failed" and entry.get("member") in members:
                    if entry["ts"] >= noticed:
                        late.append(entry["ts"] - noticed)
        return sorted(late)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)


def replica_pids(rig: Rig, agent: str) -> list[int]:
    return [r.status.pid for r in rig.ready() if r.agent_id == agent and r.status.pid]


def kill_tree(proc: Any, sig: int) -> None:
    """A whole host going away: the agent and every engine it started."""
    tree = descendants(proc.pid)
    os.kill(proc.pid, sig)
    for pid in tree:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def phase(seconds: float) -> None:
    time.sleep(seconds)  # load runs meanwhile: the phase is what is measured


def log_entries(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


def logged_at(path: Path, msg: str, about: str) -> float:
    """Wall-clock time of the last log entry `msg` naming `about` (a replica or agent id)."""
    found = [
        e["ts"]
        for e in log_entries(path)
        if e.get("msg") == msg and about in (e.get("replica_id"), e.get("agent_id"))
    ]
    assert found, f"{path.name}: no {msg!r} for {about}"
    return float(found[-1])


def late_columns(late: list[float]) -> dict[str, Any]:
    """Tries at the dead replica after its agent (or the controller) noticed: how many, and
    the last one's lag."""
    return {"tries at dead": len(late), "last try s": round(late[-1], 2) if late else "-"}


def expect_no_late_tries(rig: Rig, fault: str, late: list[float]) -> None:
    over = [x for x in late if x > 1.0]
    rig.check(not over, f"{fault}: tries at a dead replica {over} s after it was noticed")


def expect_no_plain_failures(rig: Rig, fault: str, seen: list[Outcome]) -> None:
    failed = [o for o in seen if not o.stream and o.result != "ok"]
    rig.check(not failed, f"{fault}: {len(failed)} plain requests failed: {failed[:2]}")


def wait_s(condition: Callable[[], bool], within: float, since: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.monotonic() - since
        except Exception:
            pass
        time.sleep(0.1)
    return float("inf")


def admin(rig: Rig) -> Any:
    return rig.cluster.admin()


def add_backend(rig: Rig, url: str) -> None:
    backend = types_pb2.Backend(id="fake", pool="chaos", url=url, upstream_model="chaos")
    admin(rig).AddBackend(admin_pb2.AddBackendRequest(backend=backend), timeout=5)


def delete_backend(rig: Rig) -> None:
    admin(rig).DeleteBackend(admin_pb2.DeleteBackendRequest(id="fake"), timeout=5)


def scale(rig: Rig, n: int) -> None:
    admin(rig).ScalePool(admin_pb2.ScalePoolRequest(name="chaos", replicas=n), timeout=5)
