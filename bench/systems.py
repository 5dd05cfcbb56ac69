"""Starts and stops each system under test in front of the same mock upstream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench import loadgen, venvs
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2

HOST = "127.0.0.1"
MODEL = "bench"
CHAT_PATH = "/v1/chat/completions"
PROBE_BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A child process in its own session (so its workers can be stopped with it)."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        # Workers left in the group after their parent exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


async def spawn(
    name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Proc(name, process, log)


class StartError(Exception):
    """A system could not be started; the message says why and goes into its table rows."""


@dataclass
class Running:
    """A started system: where to send requests, and which process trees are its own."""

    port: int
    measured: list[Proc]
    others: list[Proc] = field(default_factory=list)
    version: str = ""
    # Headers every request carries (an API key).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.measured]

    async def stop(self) -> None:
        for proc in [*self.measured, *self.others]:
            await proc.stop()


async def wait_ready(
    port: int,
    procs: list[Proc],
    health: str,
    within_s: float,
    body: bytes = PROBE_BODY,
    headers: dict[str, str] | None = None,
) -> None:
    """Waits until GET health answers 2xx and a chat request (body) through the system
    succeeds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise StartError(f"{proc.name} exited at start-up: {proc.tail(600)!r}")
        if await loadgen.get_ok(HOST, port, health) and await loadgen.post_ok(
            HOST, port, CHAT_PATH, body, headers=headers
        ):
            return
        await asyncio.sleep(0.2)
    tails = "; ".join(f"{p.name}: {p.tail(400)!r}" for p in procs)
    raise StartError(f"not ready after {within_s:.0f}s ({tails})")


async def gateway_has_workers_flag() -> bool:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmpool.cli",
        "gateway",
        "--help",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return b"--workers" in out


def llmpool_config(mock_port: int) -> str:
    return (
        "pools:\n"
        f"  - name: {MODEL}\n"
        "    policy: round_robin\n"
        "    backends:\n"
        f"      - id: mock\n        url: http://{HOST}:{mock_port}/v1\n"
    )


async def start_llmpool(mock_port: int, workdir: Path, workers: int, keys: bool = False) -> Running:
    if workers > 1 and not await gateway_has_workers_flag():
        raise StartError("n/a (no --workers yet)")
    cfg = workdir / "llmpool.yaml"
    cfg.write_text(llmpool_config(mock_port))
    data = workdir / f"llmpool-data-{workers}w"
    cport, gport = free_port(), free_port()
    # Plaintext gRPC on loopback: the benchmark measures the HTTP path, not the control link.
    env = {"LLMPOOL_LOG_LEVEL": "warning", "LLMPOOL_INSECURE": "1"}
    python = sys.executable
    controller = await spawn(
        f"llmpool-controller-{workers}w",
        [
            python,
            "-m",
            "llmpool.cli",
            "controller",
            "--listen",
            f"{HOST}:{cport}",
            "--data-dir",
            str(data),
            "--config",
            str(cfg),
            "--metrics-listen",
            f"{HOST}:0",
        ],
        workdir,
        env,
    )
    argv = [
        python,
        "-m",
        "llmpool.cli",
        "gateway",
        "--listen",
        f"{HOST}:{gport}",
        "--controller",
        f"{HOST}:{cport}",
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    if keys:
        argv += ["--auth", "keys"]
    name = f"llmpool-gateway-{workers}w" + ("-keys" if keys else "")
    gateway = await spawn(name, argv, workdir, env)
    running = Running(gport, measured=[gateway], others=[controller])
    try:
        if keys:
            running.headers = {"Authorization": f"Bearer {await create_key(cport, 60)}"}
        await wait_ready(gport, [controller, gateway], "/readyz", 60, headers=running.headers)
    except BaseException:
        await running.stop()
        raise
    return running


async def create_key(controller_port: int, within_s: float) -> str:
    """An API key made with the admin API (plaintext on loopback, as the bench's controller),
    once the controller answers."""
    deadline = time.monotonic() + within_s
    async with grpc.aio.insecure_channel(f"{HOST}:{controller_port}") as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateApiKeyRequest(key=types_pb2.ApiKey(name="bench"))
        while True:
            try:
                made = await admin.CreateApiKey(request, timeout=5)
                return made.secret
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://{host}:{port}/v1
      api_key: sk-bench
      max_retries: 0
litellm_settings:
  num_retries: 0
  request_timeout: 60
  telemetry: false
  callbacks: []
  success_callback: []
  failure_callback: []
router_settings:
  num_retries: 0
  retry_after: 0
general_settings: {{}}
"""


async def start_litellm(mock_port: int, workdir: Path, workers: int) -> Running:
    try:
        bindir = await venvs.ensure("litellm", venvs.LITELLM_SPEC)
    except (RuntimeError, OSError, TimeoutError) as exc:
        raise StartError(f"could not install {venvs.LITELLM_SPEC}: {exc}") from exc
    cfg = workdir / "litellm.yaml"
    cfg.write_text(LITELLM_CONFIG.format(model=MODEL, host=HOST, port=mock_port))
    port = free_port()
    env = {
        # No master key and no database, like our gateway; LiteLLM refuses that unless told.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DATABASE_URL": "",
    }
    env.pop("DATABASE_URL")
    proc = await spawn(
        f"litellm-{workers}w",
        [
            str(bindir / "litellm"),
            "--config",
            str(cfg),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ],
        workdir,
        env,
    )
    running = Running(port, measured=[proc], version=venvs.LITELLM_SPEC)
    try:
        await wait_ready(port, [proc], "/health/liveliness", 180)
    except BaseException:
        await running.stop()
        raise
    return running


async def launch_vllm_router(
    name: str,
    worker_urls: list[str],
    policy: str,
    workdir: Path,
    body: bytes = PROBE_BODY,
    extra: tuple[str, ...] = (),
) -> Running:
    """vllm-router (its own venv) on a free port in front of worker_urls, once ready."""
    try:
        bindir = await venvs.ensure("vllm-router", venvs.VLLM_ROUTER_SPEC)
    except (RuntimeError, OSError, TimeoutError) as exc:
        raise StartError(f"could not install {venvs.VLLM_ROUTER_SPEC}: {exc}") from exc
    port = free_port()
    proc = await spawn(
        name,
        [
            str(bindir / "vllm-router"),
            "--worker-urls",
            *worker_urls,
            "--host",
            HOST,
            "--port",
            str(port),
            "--policy",
            policy,
            "--prometheus-host",
            HOST,
            "--prometheus-port",
            str(free_port()),
            *extra,
            "--log-level",
            "warning",
        ],
        workdir,
    )
    running = Running(port, measured=[proc], version=venvs.VLLM_ROUTER_SPEC)
    try:
        await wait_ready(port, [proc], "/health", 60, body)
    except BaseException:
        await running.stop()
        raise
    return running


async def start_vllm_router(mock_port: int, workdir: Path) -> Running:
    return await launch_vllm_router(
        "vllm-router", [f"http://{HOST}:{mock_port}"], "round_robin", workdir
    )


@dataclass(frozen=True)
class SystemSpec:
    """One row of every table: its label and how to start it (None: the mock itself)."""

    label: str
    start: Callable[[int, Path], Awaitable[Running]] | None
    workers: int = 1


def all_systems() -> list[SystemSpec]:
    def llmpool(w: int) -> Callable[[int, Path], Awaitable[Running]]:
        return lambda port, wd: start_llmpool(port, wd, w)

    def litellm(w: int) -> Callable[[int, Path], Awaitable[Running]]:
        return lambda port, wd: start_litellm(port, wd, w)

    return [
        SystemSpec("direct to mock (floor)", None),
        SystemSpec("llm-pool gateway, 1 worker", llmpool(1), 1),
        SystemSpec("llm-pool gateway, 2 workers", llmpool(2), 2),
        SystemSpec(
            "llm-pool gateway, 1 worker, API keys on",
            lambda port, wd: start_llmpool(port, wd, 1, keys=True),
            1,
        ),
        SystemSpec("LiteLLM proxy, 1 worker", litellm(1), 1),
        SystemSpec("LiteLLM proxy, 2 workers", litellm(2), 2),
        SystemSpec("vllm-router (Rust)", start_vllm_router),
    ]
