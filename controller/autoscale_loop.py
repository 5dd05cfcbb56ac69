"""Runs the autoscale step (controller/autoscale.py) for every autoscaled pool each second and
writes the replica counts it decides; the reconciler then starts or drains replicas."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from llmpool.clock import Clock
from llmpool.status import ReplicaState, ReplicaStatus

from .agents import AgentRegistry
from .autoscale import Keep, PoolSignals, ScaleDecision, ScaleState, ScaleUp, step
from .desired import DesiredState
from .metrics import ControllerMetrics
from .restart_grace import RestartGrace
from .usage import Activity, UsageAggregator

log = logging.getLogger(__name__)

_NO_ACTIVITY = Activity()


@dataclass(frozen=True)
class AutoscaleView:
    """One pool's autoscaler state for people (mirrors llmpool.v1.AutoscaleStatus)."""

    replicas: int
    recommended: int
    metric: str
    value: float
    ready: int
    reason: str
    last_from: int = 0
    last_to: int = 0
    # Negative: no scaling since the controller started.
    last_scaled_s_ago: float = -1.0


@dataclass
class _PoolTrack:
    state: ScaleState
    view: AutoscaleView | None = None
    last: tuple[int, int, float] | None = None


class Autoscaler:
    def __init__(
        self,
        desired: DesiredState,
        registry: AgentRegistry,
        usage: UsageAggregator,
        clock: Clock,
        metrics: ControllerMetrics,
        grace: RestartGrace | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self._desired = desired
        self._registry = registry
        self._usage = usage
        self._clock = clock
        self._metrics = metrics
        self._grace = grace
        self._interval_s = interval_s
        self._tracks: dict[str, _PoolTrack] = {}

    def status(self, pool: str) -> AutoscaleView | None:
        track = self._tracks.get(pool)
        if track is None or track.view is None:
            return None
        if track.last is None:
            return track.view
        from_, to, at = track.last
        return dataclasses.replace(
            track.view,
            last_from=from_,
            last_to=to,
            last_scaled_s_ago=round(self._clock.monotonic() - at, 3),
        )

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            try:
                await self.run_once()
            except Exception:
                log.exception("autoscale pass failed; retrying in a second")

    async def run_once(self) -> list[ScaleDecision]:
        """One step for every autoscaled pool; returns the scalings it applied."""
        if self._grace is not None and not self._grace.settled():
            # Agents a restarted controller waits for would look like missing replicas.
            return []
        pools = {n: p for n, p in self._desired.pools.items() if p.autoscale is not None}
        for gone in set(self._tracks) - set(pools):
            del self._tracks[gone]
        self._metrics.autoscale_recommended.clear()
        if not pools:
            return []
        signals = self._signals(set(pools))
        now = self._clock.monotonic()
        applied: list[ScaleDecision] = []
        for name, pool in sorted(pools.items()):
            assert pool.autoscale is not None
            track = self._tracks.setdefault(name, _PoolTrack(ScaleState()))
            s = signals.get(name, PoolSignals())
            decision, track.state, rec = step(
                name, pool.autoscale, pool.ttft_slo_ms, pool.replicas, s, track.state, now
            )
            self._metrics.autoscale_recommended.labels(name).set(rec.replicas)
            target = pool.replicas if isinstance(decision, Keep) else decision.target
            track.view = AutoscaleView(
                replicas=target,
                recommended=rec.replicas,
                metric=pool.autoscale.metric,
                value=round(rec.value, 3),
                ready=s.ready,
                reason=decision.reason,
            )
            if not isinstance(decision, Keep) and await self._apply(decision):
                track.last = (decision.current, decision.target, now)
                applied.append(decision)
        return applied

    async def _apply(self, d: ScaleDecision) -> bool:
        assert not isinstance(d, Keep)
        async with self._desired.lock:
            pool = self._desired.pools.get(d.pool)
            # Someone (ScalePool, UpdatePool) changed it meanwhile: the next step sees theirs.
            if pool is None or pool.autoscale is None or pool.replicas != d.current:
                return False
            await self._desired.put_pool(dataclasses.replace(pool, replicas=d.target))
        direction = "up" if isinstance(d, ScaleUp) else "down"
        self._metrics.autoscale_events.labels(d.pool, direction).inc()
        log.info(
            "autoscaled pool",
            extra={
                "pool": d.pool,
                "direction": direction,
                "from": d.current,
                "to": d.target,
                "reason": d.reason,
            },
        )
        return True

    def _signals(self, pools: set[str]) -> dict[str, PoolSignals]:
        """Per pool, its READY routable replicas' engine load plus gateways' reports."""
        live: dict[str, tuple[ReplicaStatus, bool]] = {}
        for record in self._registry.all():
            routable = self._registry.routable(record.agent_id)
            for rid, status in record.replicas.items():
                live[rid] = (status, routable)
        loads = self._usage.loads()
        held = self._usage.held()
        activity = self._usage.take_activity()
        sums = {p: _Sums() for p in pools}
        for a in self._desired.assignments.values():
            acc = sums.get(a.pool)
            if acc is None or not a.desired:
                continue
            load = loads.get(a.replica_id)
            if load is not None:
                acc.in_flight += load.in_flight
            found = live.get(a.replica_id)
            if found is None:
                continue
            status, routable = found
            if routable and status.healthy and status.state is ReplicaState.READY:
                acc.add(status)
        return {
            name: PoolSignals(
                ready=acc.ready,
                running=acc.running,
                waiting=acc.waiting,
                peak_running=acc.peak,
                in_flight=acc.in_flight,
                held=held.get(name, 0),
                kv_usage=acc.kv / acc.kv_reporting if acc.kv_reporting else None,
                ttft_ms=activity.get(name, _NO_ACTIVITY).ttft_ms,
                requests=activity.get(name, _NO_ACTIVITY).requests,
            )
            for name, acc in sums.items()
        }


@dataclass(slots=True)
class _Sums:
    """One pool's READY replicas' load, summed while gathering signals."""

    ready: int = 0
    running: float = 0.0
    waiting: float = 0.0
    peak: float = 0.0
    in_flight: float = 0.0
    kv: float = 0.0
    kv_reporting: int = 0

    def add(self, status: ReplicaStatus) -> None:
        self.ready += 1
        self.running += max(status.running, 0.0)
        self.waiting += max(status.waiting, 0.0)
        self.peak = max(self.peak, status.running)
        if status.kv_usage >= 0:
            self.kv += status.kv_usage
            self.kv_reporting += 1
