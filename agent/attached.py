"""An engine the agent watches but did not start: health probes, load and latency, never signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent.attach_spec import AttachSpec
from agent.health import ProbedHealth
from agent.probe import ProbeError, Prober
from agent.readings import EngineReadings
from agent.settings import SupervisorSettings
from llmpool.clock import Clock
from llmpool.status import ReplicaState, ReplicaStatus

log = logging.getLogger(__name__)


class AttachedEngine:
    """STARTING until the first good health probe, then READY; READY and unhealthy after
    `unhealthy_after` failed probes in a row, healthy again on the next good one. It is never
    FAILED, restarted or stopped: the process belongs to someone else. on_change fires on state
    and health changes."""

    def __init__(
        self,
        spec: AttachSpec,
        settings: SupervisorSettings,
        prober: Prober,
        clock: Clock,
        on_change: Callable[[], None],
    ) -> None:
        self.spec = spec
        self._settings = settings
        self._prober = prober
        self._clock = clock
        self.health = ProbedHealth(
            unhealthy_after=settings.unhealthy_after,
            clock=clock,
            on_change=on_change,
            message="no health probe answered yet",
        )
        self._readings = EngineReadings(engine=spec.engine)
        # The engine's info endpoint is read once, at its first answer.
        self._info_read = False
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> ReplicaState:
        return self.health.state

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    def status(self) -> ReplicaStatus:
        return self._readings.status(
            replica_id=self.spec.replica_id,
            pool=self.spec.pool,
            engine=self.spec.engine,
            served_model=self.spec.model,
            state=self.health.state,
            url=self.spec.url,
            healthy=self.health.healthy,
            restarts=0,
            message=self.health.message,
            pid=0,
            attached=True,
        )

    # ---- the state machine (no I/O; probe_once feeds it)

    def probe_succeeded(self, rtt_s: float) -> None:
        self._readings.add_latency_ms(rtt_s * 1000)
        health = self.health
        if health.state is ReplicaState.STARTING:
            health.enter(ReplicaState.READY, "", healthy=True)
            log.info(
                "attached engine ready",
                extra={"replica_id": self.spec.replica_id, "url": self.spec.url},
            )
        elif health.answered():
            log.info(
                "attached engine recovered",
                extra={"replica_id": self.spec.replica_id, "url": self.spec.url},
            )

    def probe_failed(self, error: str) -> None:
        if self.health.state is ReplicaState.STARTING:
            self.health.note(f"not answering yet: {error}")
        elif self.health.unanswered(error):
            log.warning(
                "attached engine unhealthy",
                extra={"replica_id": self.spec.replica_id, "url": self.spec.url, "error": error},
            )

    # ---- I/O

    async def probe_once(self) -> None:
        """One health probe, and a load scrape when it answered (a dead engine's would fail too)."""
        url = self.spec.url + self.spec.health_path
        try:
            rtt = await self._prober.health(url, self._settings.probe_timeout_s)
        except ProbeError as exc:
            self.probe_failed(str(exc))
            return
        self.probe_succeeded(rtt)
        if not self._info_read:
            self._info_read = True
            self._readings.info = await self._prober.capacity(
                self.spec.engine, self.spec.url, self._settings.probe_timeout_s
            )
        if not self.spec.metrics_path:
            return
        try:
            load = await self._prober.load(
                self.spec.engine,
                self.spec.url + self.spec.metrics_path,
                self._settings.probe_timeout_s,
            )
            self._readings.set_load(load)
        except ProbeError as exc:
            # Keep the last known load; health probes decide about health.
            log.debug(
                "load probe failed", extra={"replica_id": self.spec.replica_id, "error": str(exc)}
            )

    def start(self) -> None:
        """Starts watching (needs a running event loop); returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"attached-{self.spec.replica_id}")
            log.info(
                "watching attached engine",
                extra={
                    "replica_id": self.spec.replica_id,
                    "pool": self.spec.pool,
                    "engine": self.spec.engine,
                    "url": self.spec.url,
                },
            )

    async def stop(self) -> None:
        """Stops watching; the engine itself is left alone."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.health.enter(ReplicaState.STOPPED, "no longer watched", healthy=False)

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception as exc:
                # Watching must outlive any surprise; it shows as failed probes.
                self.probe_failed(f"{type(exc).__name__}: {exc}")
            # Read each time: the controller's Welcome may change the interval.
            await self._clock.sleep(self._settings.probe_interval_s)
