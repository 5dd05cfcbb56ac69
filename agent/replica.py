"""One supervised replica: spawn, readiness and liveness probes, load, restarts, drain and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.log_ring import LogRing
from agent.ports import PortAllocator
from agent.probe import ProbeError, Prober
from agent.process import pump_lines, spawn, terminate_group
from agent.readings import EngineReadings
from agent.template import ReplicaSpec, render
from llmpool.backoff import Backoff
from llmpool.clock import Clock
from llmpool.status import ReplicaState, ReplicaStatus

log = logging.getLogger(__name__)


def _restart_backoff() -> Backoff:
    return Backoff(base=0.5, cap=30.0)


@dataclass
class SupervisorSettings:
    """Knobs of every replica on this agent. probe_interval_s may change at run time (Welcome)."""

    # Address engines bind ({host}) and the host in the URLs the agent reports and probes.
    engine_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    probe_interval_s: float = 1.0
    ready_poll_s: float = 0.25
    probe_timeout_s: float = 2.0
    # Consecutive failed liveness probes before a READY replica is marked unhealthy.
    unhealthy_after: int = 3
    kill_timeout_s: float = 10.0
    # A replica READY this long before it fails restarts with the shortest backoff again.
    stable_s: float = 30.0
    drain_poll_s: float = 0.2
    log_lines: int = 1000
    python: str = sys.executable
    backoff: Callable[[], Backoff] = field(default=_restart_backoff)


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
        self._settings = settings
        self._ports = ports
        self._prober = prober
        self._clock = clock
        self._on_change = on_change
        self._on_restart = on_restart
        self._backoff = settings.backoff()
        self._state = ReplicaState.STARTING
        self._healthy = False
        self._message = ""
        self._readings = EngineReadings()
        self._restarts = 0
        self._port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._ready_since: float | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        # Loop time a running drain ends at; a later stop may bring it forward.
        self._drain_deadline: float | None = None

    # ---- view

    @property
    def state(self) -> ReplicaState:
        return self._state

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def pid(self) -> int:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else 0

    @property
    def url(self) -> str:
        return "" if self._port is None else f"http://{self._url_host()}:{self._port}"

    def status(self) -> ReplicaStatus:
        return self._readings.status(
            replica_id=self.spec.replica_id,
            pool=self.spec.pool,
            engine=self.spec.engine,
            served_model=self.spec.model,
            state=self._state,
            url=self.url,
            healthy=self._healthy,
            restarts=self._restarts,
            message=self._message,
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
        if self._stopping:
            if self._drain_deadline is not None:
                until = asyncio.get_running_loop().time() + drain_s
                self._drain_deadline = min(self._drain_deadline, until)
            await self._stopped.wait()
            return
        self._stopping = True
        was_ready = self._state is ReplicaState.READY
        self._set(ReplicaState.DRAINING, message="stop requested")
        if was_ready and drain_s > 0:
            await self._drain(drain_s)
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run_task
        code = await self._end_process()
        self.ring.close()
        note = "stopped" if code is None else f"stopped (exit code {code})"
        self._healthy = False
        self._set(ReplicaState.STOPPED, message=note)
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

    def _set(self, state: ReplicaState, message: str | None = None) -> None:
        if message is not None:
            self._message = message
        self._state = state
        self._on_change()

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
        self._healthy = False
        self._pump = asyncio.create_task(pump_lines(proc, self.ring))
        self._set(ReplicaState.STARTING, message=note)
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
            if self._stopping:
                # stop() ends the process itself; an exit while draining is no failure.
                return
            self._healthy = False
            self._set(ReplicaState.FAILED, message=reason)
            log.warning(
                "replica failed", extra={"replica_id": self.spec.replica_id, "reason": reason}
            )
            await self._end_process()
            self._port = None
            ready_since = self._ready_since
            if (
                ready_since is not None
                and self._clock.monotonic() - ready_since >= self._settings.stable_s
            ):
                self._backoff.reset()
            self._ready_since = None
            proc = await self._relaunch(reason)

    async def _relaunch(self, reason: str) -> asyncio.subprocess.Process:
        while True:
            delay = self._backoff.delay()
            self._message = f"{reason}; restarting in {delay:.1f}s"
            await asyncio.sleep(delay)
            self._restarts += 1
            self._on_restart(self.spec.pool)
            try:
                return await self._launch(note=f"restart {self._restarts} after: {reason}")
            except Exception as exc:
                # Whatever went wrong, keep trying: the replica is wanted until stop().
                reason = f"cannot start: {exc}"
                self._set(ReplicaState.FAILED, message=reason)

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.ready_timeout_s
        last_error = "no answer yet"
        while True:
            try:
                rtt = await self._prober.health(ready_url, self._settings.probe_timeout_s)
                break
            except ProbeError as exc:
                last_error = str(exc)
            if loop.time() >= deadline:
                return f"not ready within {self.spec.ready_timeout_s:g}s: {last_error}"
            await asyncio.sleep(self._settings.ready_poll_s)
        if not self.spec.ready_path:
            # A readiness path that generates would skew the probe latency.
            self._readings.add_latency_ms(rtt * 1000)
        await self._refresh_load()
        self._ready_since = self._clock.monotonic()
        self._healthy = True
        if not self._stopping:
            self._set(ReplicaState.READY, message="")
            log.info("replica ready", extra={"replica_id": self.spec.replica_id, "url": self.url})
        failures = 0
        while True:
            await asyncio.sleep(self._settings.probe_interval_s)
            try:
                rtt = await self._prober.health(health_url, self._settings.probe_timeout_s)
            except ProbeError as exc:
                failures += 1
                if failures >= self._settings.unhealthy_after and self._healthy:
                    self._healthy = False
                    self._message = f"{failures} failed health probes: {exc}"
                    self._on_change()
            else:
                failures = 0
                self._readings.add_latency_ms(rtt * 1000)
                if not self._healthy:
                    self._healthy = True
                    self._message = ""
                    self._on_change()
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
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._drain_deadline = started + drain_s
        while True:
            await self._refresh_load()
            load = self._readings.load
            if load.known and load.running + load.waiting <= 0:
                return
            proc = self._proc
            if proc is None or proc.returncode is not None:
                return
            remaining = self._drain_deadline - loop.time()
            if remaining <= 0:
                cut = self._drain_deadline < started + drain_s
                log.info(
                    "drain ended by the controller" if cut else "drain timed out",
                    extra={
                        "replica_id": self.spec.replica_id,
                        "drain_s": drain_s,
                        "drained_s": round(loop.time() - started, 2),
                    },
                )
                return
            await asyncio.sleep(min(self._settings.drain_poll_s, remaining))
