"""What the agent last learned of one engine: its load, prefix cache hit rate and probe latency."""

from __future__ import annotations

from collections.abc import Sequence

from agent.engine_metrics import NO_LOAD, EngineLoad
from agent.ewma import Ewma
from agent.hit_rate import HitRate
from llmpool.engine_capacity import ARG_DEFAULTS, UNKNOWN, EngineCapacity, capacity_from_args
from llmpool.status import ReplicaState, ReplicaStatus


def configured_capacity(engine: str, command: Sequence[str]) -> EngineCapacity:
    """What an engine's command line sets of its capacity, else its defaults (where fixed)."""
    return capacity_from_args(engine, command).merged(ARG_DEFAULTS.get(engine, UNKNOWN))


class EngineReadings:
    """Shared by supervised replicas and attached engines, which report the same figures."""

    def __init__(self, configured: EngineCapacity = UNKNOWN, engine: str = "") -> None:
        # The capacity the engine's command line and defaults give, and what its JSON info
        # endpoint said; what it says on /metrics comes first.
        self.configured = configured
        self.info = UNKNOWN
        self._engine = engine
        self.load: EngineLoad = NO_LOAD
        self._hit_rate = HitRate()
        self._latency = Ewma()

    def set_load(self, load: EngineLoad) -> None:
        self.load = load
        self._hit_rate.update(load)

    def forget_load(self) -> None:
        """The process behind the figures is gone (a restart starts from nothing)."""
        self.load = NO_LOAD

    @property
    def capacity(self) -> EngineCapacity:
        load = self.load
        said = EngineCapacity(load.cache_tokens, load.cache_block_size, load.max_running)
        if self._engine == "llama-server":
            # /props gives one slot's context; -c on the command line is the whole cache.
            return said.merged(self.configured).merged(self.info)
        return said.merged(self.info).merged(self.configured)

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
        capacity = self.capacity
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
            cache_tokens=capacity.cache_tokens,
            cache_block_size=capacity.block_size,
            max_running=capacity.max_running,
        )
