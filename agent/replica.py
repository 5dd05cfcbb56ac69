"""One supervised replica's I/O: spawn, readiness and liveness probes, load, restarts, drain and
stop. Its transitions, and how long each wait lasts, are agent/lifecycle.py's; every wait sleeps
on the injected clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent.lifecycle import ReplicaLifecycle
from agent.log_ring import LogRing
from agent.ports import PortAllocator
from agent.probe import ProbeError, Prober
from agent.process import pump_lines, spawn, terminate_group
from agent.readings import EngineReadings, configured_capacity
from agent.settings import SupervisorSettings
from agent.template import ReplicaSpec, render
from llmpool.clock import Clock
from llmpool.status import ReplicaState, ReplicaStatus

log = logging.getLogger(__name__)


class Replica:
    """Keeps one replica running until stop(); on_change fires on state, health or URL changes."""

    def __init__(
        self,
        spec: ReplicaSpec,
        settings: SupervisorSettings,
        ports: PortAllocator,
        prober: Prober,
        clock: Clock,
        on_change: Callable[[], None],
        on_restart: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.ring = LogRing(settings.log_lines)
        self.life = ReplicaLifecycle(
            ready_timeout_s=spec.ready_timeout_s,
            unhealthy_after=settings.unhealthy_after,
            stable_s=settings.stable_s,
            backoff=settings.backoff(),
            clock=clock,
            on_change=on_change,
        )
        self._settings = settings
        self._ports = ports
        self._prober = prober
        self._clock = clock
        self._on_restart = on_restart
        self._readings = EngineReadings(configured_capacity(spec.engine, spec.command), spec.engine)
        self._port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # ---- view

    @property
    def state(self) -> ReplicaState:
        return self.life.state

    @property
    def stopping(self) -> bool:
        return self.life.stopping

    @property
    def pid(self) -> int:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else 0

    @property
    def url(self) -> str:
        return "" if self._port is None else f"http://{self._url_host()}:{self._port}"

    def status(self) -> ReplicaStatus:
        life = self.life
        return self._readings.status(
            replica_id=self.spec.replica_id,
            pool=self.spec.pool,
            engine=self.spec.engine,
            served_model=self.spec.model,
            state=life.state,
            url=self.url,
            healthy=life.healthy,
            restarts=life.restarts,
            message=life.message,
            pid=self.pid,
        )

    # ---- lifecycle

    async def start(self) -> None:
        """Spawns the first process and returns (not waiting for readiness); raises when it
        cannot be spawned, and then nothing keeps running."""
        proc = await self._launch()
        self._run_task = asyncio.create_task(
            self._run(proc), name=f"replica-{self.spec.replica_id}"
        )

    async def stop(self, drain_s: float) -> None:
        """DRAINING, let in-flight requests end (at most drain_s), end the process group. A stop
        while draining can shorten the drain: the controller's word that nothing is in flight."""
        if not self.life.stop(drain_s):
            await self._stopped.wait()
            return
        if self.life.draining:
            await self._drain(drain_s)
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run_task
        code = await self._end_process()
        self.ring.close()
        self.life.stopped(code)
        log.info("replica stopped", extra={"replica_id": self.spec.replica_id, "exit_code": code})
        self._stopped.set()

    # ---- internals

    def _url_host(self) -> str:
        host = self._settings.advertise_host
        return f"[{host}]" if ":" in host else host

    def _probe_base(self) -> str:
        host = self._settings.engine_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

    async def _launch(self, note: str = "") -> asyncio.subprocess.Process:
        port = self._ports.acquire()
        launch = render(self.spec, self._settings.engine_host, port, self._settings.python)
        spawning = asyncio.ensure_future(spawn(launch.argv, launch.env))
        try:
            proc = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # Stopped while spawning: the process may exist already and must not be orphaned.
            with contextlib.suppress(Exception):
                await terminate_group(await spawning, self._settings.kill_timeout_s)
            self._ports.release(port)
            raise
        except BaseException:
            self._ports.release(port)
            raise
        self._port, self._proc = port, proc
        self._readings.forget_load()
        self._pump = asyncio.create_task(pump_lines(proc, self.ring))
        self.life.launched(note)
        log.info(
            "replica spawned",
            extra={"replica_id": self.spec.replica_id, "pid": proc.pid, "port": port},
        )
        return proc

    async def _end_process(self) -> int | None:
        """Ends the current process group (if any), its output pump and its port."""
        code: int | None = None
        proc = self._proc
        if proc is not None:
            code = await terminate_group(proc, self._settings.kill_timeout_s)
            # Cleared only once it is gone: a stop() that cancels us mid-way kills it again.
            self._proc = None
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await self._pump
            self._pump = None
        if self._port is not None:
            self._ports.release(self._port)
        return code

    async def _run(self, proc: asyncio.subprocess.Process) -> None:
        while True:
            reason = await self._watch(proc)
            if self.life.stopping:
                # stop() ends the process itself; an exit while draining is no failure.
                return
            delay = self.life.failed(reason)
            log.warning(
                "replica failed", extra={"replica_id": self.spec.replica_id, "reason": reason}
            )
            await self._end_process()
            self._port = None
            proc = await self._relaunch(reason, delay)

    async def _relaunch(self, reason: str, delay: float) -> asyncio.subprocess.Process:
        while True:
            await self._clock.sleep(delay)
            restarts = self.life.restarting()
            self._on_restart(self.spec.pool)
            try:
                return await self._launch(note=f"restart {restarts} after: {reason}")
            except Exception as exc:
                # Whatever went wrong, keep trying: the replica is wanted until stop().
                reason = f"cannot start: {exc}"
                delay = self.life.failed(reason)

    async def _watch(self, proc: asyncio.subprocess.Process) -> str:
        """Runs the probes until the process exits or never gets ready; returns why it ended."""
        exited = asyncio.ensure_future(proc.wait())
        probing = asyncio.create_task(self._probe())
        try:
            await asyncio.wait({exited, probing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, probing):
                task.cancel()
            await asyncio.gather(exited, probing, return_exceptions=True)
        if exited.done() and not exited.cancelled():
            code = exited.result()
            return (
                f"process exited with code {code}"
                if code >= 0
                else f"process killed by signal {-code}"
            )
        if probing.done() and not probing.cancelled() and probing.exception() is None:
            return probing.result()
        return "probe loop ended unexpectedly"

    async def _probe(self) -> str:
        """Readiness, then liveness and load forever; returns only when readiness times out."""
        health_url = self._probe_base() + self.spec.health_path
        # Some engines answer their liveness path before they can generate (spec.ready_path).
        ready_url = self._probe_base() + (self.spec.ready_path or self.spec.health_path)
        life, settings, clock = self.life, self._settings, self._clock
        while True:
            try:
                rtt = await self._prober.health(ready_url, settings.probe_timeout_s)
                break
            except ProbeError as exc:
                overdue = life.not_ready(str(exc))
            if overdue is not None:
                return overdue
            await clock.sleep(settings.ready_poll_s)
        if not self.spec.ready_path:
            # A readiness path that generates would skew the probe latency.
            self._readings.add_latency_ms(rtt * 1000)
        # Once a start: the engine's capacity does not change while it runs.
        self._readings.info = await self._prober.capacity(
            self.spec.engine, self._probe_base(), settings.probe_timeout_s
        )
        await self._refresh_load()
        if life.ready():
            log.info("replica ready", extra={"replica_id": self.spec.replica_id, "url": self.url})
        while True:
            await clock.sleep(settings.probe_interval_s)
            try:
                rtt = await self._prober.health(health_url, settings.probe_timeout_s)
            except ProbeError as exc:
                life.unanswered(str(exc))
            else:
                life.answered()
                self._readings.add_latency_ms(rtt * 1000)
            await self._refresh_load()

    async def _refresh_load(self) -> None:
        if not self.spec.metrics_path or self._port is None:
            return
        url = self._probe_base() + self.spec.metrics_path
        try:
            load = await self._prober.load(self.spec.engine, url, self._settings.probe_timeout_s)
            self._readings.set_load(load)
        except ProbeError as exc:
            # Keep the last known load; health probes decide about health.
            log.debug(
                "load probe failed", extra={"replica_id": self.spec.replica_id, "error": str(exc)}
            )

    async def _drain(self, drain_s: float) -> None:
        """Waits until the engine has no running or waiting request, at most drain_s. Engines that
        report no load wait until the controller, which hears the gateways' in-flight counts,
        sends a shorter stop (see stop()), or drain_s passes."""
        while True:
            await self._refresh_load()
            load = self._readings.load
            proc = self._proc
            gone = proc is None or proc.returncode is not None
            why = self.life.drain_over(gone or (load.known and load.running + load.waiting <= 0))
            if why is not None:
                if why != "idle":
                    log.info(
                        f"drain {why}",
                        extra={
                            "replica_id": self.spec.replica_id,
                            "drain_s": drain_s,
                            "drained_s": round(self.life.drained_s(), 2),
                        },
                    )
                return
            await self._clock.sleep(min(self._settings.drain_poll_s, self.life.drain_left()))
