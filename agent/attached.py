"""An engine the agent watches but did not start: health probes, load and latency, never signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent.attach_spec import AttachSpec
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
        self._on_change = on_change
        self._state = ReplicaState.STARTING
        self._healthy = False
        self._message = "no health probe answered yet"
        self._readings = EngineReadings()
        self._failures = 0
        # Monotonic time of the first failed probe of the current streak.
        self._failing_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> ReplicaState:
        return self._state

    @property
    def healthy(self) -> bool:
        return self._healthy

    def status(self) -> ReplicaStatus:
        return self._readings.status(
            replica_id=self.spec.replica_id,
            pool=self.spec.pool,
            engine=self.spec.engine,
            served_model=self.spec.model,
            state=self._state,
            url=self.spec.url,
            healthy=self._healthy,
            restarts=0,
            message=self._message,
            pid=0,
            attached=True,
        )

    # ---- the state machine (no I/O; probe_once feeds it)

    def probe_succeeded(self, rtt_s: float) -> None:
        self._failures = 0
        self._failing_since = None
        self._readings.add_latency_ms(rtt_s * 1000)
        if self._state is ReplicaState.STARTING or not self._healthy:
            recovered = self._state is ReplicaState.READY
            self._state = ReplicaState.READY
            self._healthy = True
            self._message = ""
            log.info(
                "attached engine recovered" if recovered else "attached engine ready",
                extra={"replica_id": self.spec.replica_id, "url": self.spec.url},
            )
            self._on_change()

    def probe_failed(self, error: str) -> None:
        now = self._clock.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        if self._state is ReplicaState.STARTING:
            self._message = f"not answering yet: {error}"
            return
        failing_s = now - self._failing_since
        self._message = f"{self._failures} failed health probes in {failing_s:.1f}s: {error}"
        if self._healthy and self._failures >= self._settings.unhealthy_after:
            self._healthy = False
            log.warning(
                "attached engine unhealthy",
                extra={"replica_id": self.spec.replica_id, "url": self.spec.url, "error": error},
            )
            self._on_change()

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
        self._healthy = False
        self._state = ReplicaState.STOPPED
        self._message = "no longer watched"

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception as exc:
                # Watching must outlive any surprise; it shows as failed probes.
                self.probe_failed(f"{type(exc).__name__}: {exc}")
            # Read each time: the controller's Welcome may change the interval.
            await self._clock.sleep(self._settings.probe_interval_s)
