"""Wires one agent together: supervisor, metrics server and controller session, start to stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from agent.allow import EngineAllowList
from agent.attach_spec import AttachSpec
from agent.gpus import Nvml, load_nvml, offered_gpus
from agent.metrics import AgentMetrics
from agent.ports import PortAllocator
from agent.probe import Prober
from agent.session import AgentIdentity, ControllerSession
from agent.settings import SupervisorSettings
from agent.supervisor import Supervisor
from llmpool.backoff import Backoff
from llmpool.clock import Clock, SystemClock
from llmpool.metrics_http import serve_metrics
from llmpool.tls import TlsFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentOptions:
    """Everything the command line decides."""

    controller: str = "127.0.0.1:50051"
    agent_id: str = "agent"
    hostname: str = "localhost"
    labels: Mapping[str, str] = field(default_factory=dict)
    engine_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    port_low: int = 20000
    port_high: int = 29999
    cpu_slots: int = 1
    # GPU indices to offer: None discovers them through NVML, () offers none.
    gpus: tuple[int, ...] | None = None
    metrics_host: str = "127.0.0.1"
    # None: no metrics server (tests); 0: any free port.
    metrics_port: int | None = 9102
    report_interval_s: float = 1.0
    log_lines: int = 1000
    # How often GPU memory and utilisation are read again (0: only at start).
    gpu_refresh_s: float = 10.0
    # Engines to watch but not start (--attach).
    attach: tuple[AttachSpec, ...] = ()
    # Mutual TLS to the controller; None: plaintext (the CLI needs --insecure for it).
    tls: TlsFiles | None = None
    # Engine commands allowed besides the built-in engines' (--allow-engine).
    allow_engines: tuple[tuple[str, ...], ...] = ()


class Agent:
    """start() returns once the metrics server listens and the session runs; stop() stops every
    replica, tells the controller, closes the stream and the server."""

    def __init__(
        self,
        options: AgentOptions,
        settings: SupervisorSettings | None = None,
        session_backoff: Backoff | None = None,
        clock: Clock | None = None,
        nvml: Callable[[], Nvml | None] = load_nvml,
    ) -> None:
        self.options = options
        self._nvml = nvml
        clock = clock or SystemClock()
        self._http = httpx.AsyncClient(trust_env=False)
        self.settings = settings or SupervisorSettings(
            engine_host=options.engine_host,
            advertise_host=options.advertise_host,
            probe_interval_s=options.report_interval_s,
            log_lines=options.log_lines,
            allow=EngineAllowList.with_extra(options.allow_engines),
        )
        self.supervisor = Supervisor(
            self.settings,
            PortAllocator(options.engine_host, options.port_low, options.port_high),
            Prober(self._http, clock),
            clock,
        )
        self.metrics = AgentMetrics(
            self.supervisor.statuses,
            lambda: self.supervisor.restarts_by_pool,
            lambda: self.session.identity.gpus,
        )
        self.session = ControllerSession(
            options.controller,
            # Read now: missing certificate files stop the agent at start, not on each retry.
            options.tls.channel_credentials() if options.tls is not None else None,
            AgentIdentity(
                agent_id=options.agent_id,
                hostname=options.hostname,
                labels=dict(options.labels),
                cpu_slots=options.cpu_slots,
            ),
            self.supervisor,
            report_interval_s=options.report_interval_s,
            backoff=session_backoff,
            on_connected=self.metrics.set_connected,
        )
        self._metrics_server: asyncio.Server | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._gpu_task: asyncio.Task[None] | None = None

    @property
    def metrics_port(self) -> int | None:
        if self._metrics_server is None:
            return None
        return int(self._metrics_server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.metrics.set_connected(False)
        gpus = await offered_gpus(self.options.gpus, self._nvml)
        self.session.identity = dataclasses.replace(self.session.identity, gpus=tuple(gpus))
        for gpu in gpus:
            log.info(
                "offering GPU",
                extra={
                    "gpu_index": gpu.index,
                    "gpu_name": gpu.name,
                    "gpu_uuid": gpu.uuid,
                    "memory_total_bytes": gpu.memory_total_bytes,
                    "memory_used_bytes": gpu.memory_used_bytes,
                    "utilization_percent": gpu.utilization_percent,
                },
            )
        if self.options.metrics_port is not None:
            self._metrics_server = await serve_metrics(
                self.metrics.registry, self.options.metrics_host, self.options.metrics_port
            )
        for spec in self.options.attach:
            self.supervisor.attach(spec)
        self._session_task = asyncio.create_task(self.session.run(), name="controller-session")
        if gpus and self.options.gpu_refresh_s > 0:
            self._gpu_task = asyncio.create_task(self._refresh_gpus(), name="gpu-refresh")
        log.info(
            "agent started",
            extra={
                "agent_id": self.options.agent_id,
                "controller": self.options.controller,
                "metrics_port": self.metrics_port,
                "gpus": len(gpus),
                "attached": len(self.options.attach),
            },
        )

    async def _refresh_gpus(self) -> None:
        """Re-reads GPU memory and utilisation for reports and metrics. A GPU NVML stops seeing
        stays offered with its last numbers: placement is not the place to guess why."""
        while True:
            await asyncio.sleep(self.options.gpu_refresh_s)
            fresh = {g.index: g for g in await offered_gpus(self.options.gpus, self._nvml)}
            identity = self.session.identity
            gpus = tuple(fresh.get(g.index, g) for g in identity.gpus)
            self.session.identity = dataclasses.replace(identity, gpus=gpus)

    async def stop(self) -> None:
        if self._gpu_task is not None:
            self._gpu_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gpu_task
        # Replicas first, while the stream still carries their STOPPED reports.
        await self.supervisor.shutdown()
        self.session.close()
        if self._session_task is not None:
            try:
                async with asyncio.timeout(5.0):
                    await self._session_task
            except TimeoutError:
                log.warning("controller stream did not close in time")
            except Exception:
                log.exception("controller session ended with an error")
        if self._metrics_server is not None:
            self._metrics_server.close()
            with contextlib.suppress(Exception):
                await self._metrics_server.wait_closed()
        await self._http.aclose()
        log.info("agent stopped", extra={"agent_id": self.options.agent_id})


async def run_agent(options: AgentOptions, stop: asyncio.Event) -> None:
    """Runs the agent until stop is set."""
    agent = Agent(options)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
