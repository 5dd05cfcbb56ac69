"""What the agent last learned of one engine: its load, prefix cache hit rate and probe latency."""

from __future__ import annotations

from agent.engine_metrics import NO_LOAD, EngineLoad
from agent.ewma import Ewma
from agent.hit_rate import HitRate
from llmpool.status import ReplicaState, ReplicaStatus


class EngineReadings:
    """Shared by supervised replicas and attached engines, which report the same figures."""

    def __init__(self) -> None:
        self.load: EngineLoad = NO_LOAD
        self._hit_rate = HitRate()
        self._latency = Ewma()

    def set_load(self, load: EngineLoad) -> None:
        self.load = load
        self._hit_rate.update(load)

    def forget_load(self) -> None:
        """The process behind the figures is gone (a restart starts from nothing)."""
        self.load = NO_LOAD

    def add_latency_ms(self, ms: float) -> None:
        self._latency.add(ms)

    def status(
        self,
        *,
        replica_id: str,
        pool: str,
        engine: str,
        served_model: str,
        state: ReplicaState,
        url: str,
        healthy: bool,
        restarts: int,
        message: str,
        pid: int,
        attached: bool = False,
    ) -> ReplicaStatus:
        load = self.load
        return ReplicaStatus(
            replica_id=replica_id,
            pool=pool,
            engine=engine,
            served_model=served_model,
            state=state,
            url=url,
            healthy=healthy,
            running=load.running,
            waiting=load.waiting,
            kv_usage=-1.0 if load.kv_usage is None else load.kv_usage,
            prefix_cache_hit_rate=self._hit_rate.value,
            latency_ms=self._latency.value or 0.0,
            restarts=restarts,
            message=message,
            pid=pid,
            attached=attached,
        )
