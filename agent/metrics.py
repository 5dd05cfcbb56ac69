"""The agent's own Prometheus metrics, read from the supervisor at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.gpus import GpuInfo
from llmpool.status import ReplicaState, ReplicaStatus


class _ReplicaCollector(Collector):
    """Computed on each scrape, so a replica that went away leaves no stale label set."""

    def __init__(
        self,
        statuses: Callable[[], list[ReplicaStatus]],
        restarts_by_pool: Callable[[], Mapping[str, int]],
    ) -> None:
        self._statuses = statuses
        self._restarts = restarts_by_pool

    def collect(self) -> Iterable[Metric]:
        statuses = self._statuses()
        by_state = GaugeMetricFamily(
            "llmpool_agent_replicas",
            "Replicas this agent runs or watches (--attach), by state.",
            labels=["state"],
        )
        for state in ReplicaState:
            if state is ReplicaState.UNSPECIFIED:
                continue  # the controller's word for "not reported", never an agent's
            by_state.add_metric([state.value], sum(1 for s in statuses if s.state is state))
        yield by_state

        restarts = CounterMetricFamily(
            "llmpool_agent_replica_restarts",
            "Restarts of crashed or never-ready replicas, by pool.",
            labels=["pool"],
        )
        for pool, count in sorted(self._restarts().items()):
            restarts.add_metric([pool], count)
        yield restarts

        running = GaugeMetricFamily(
            "llmpool_agent_engine_running_requests",
            "Requests the engine is decoding, as it reports them.",
            labels=["replica"],
        )
        waiting = GaugeMetricFamily(
            "llmpool_agent_engine_waiting_requests",
            "Requests queued in the engine, as it reports them.",
            labels=["replica"],
        )
        kv = GaugeMetricFamily(
            "llmpool_agent_engine_kv_cache_usage_ratio",
            "KV cache use of the engine, 0..1 (absent when the engine does not say).",
            labels=["replica"],
        )
        for status in statuses:
            running.add_metric([status.replica_id], status.running)
            waiting.add_metric([status.replica_id], status.waiting)
            if status.kv_usage >= 0:
                kv.add_metric([status.replica_id], status.kv_usage)
        yield running
        yield waiting
        yield kv


class _GpuCollector(Collector):
    """The offered GPUs' memory and utilisation as last read through NVML."""

    def __init__(self, gpus: Callable[[], Sequence[GpuInfo]]) -> None:
        self._gpus = gpus

    def collect(self) -> Iterable[Metric]:
        total = GaugeMetricFamily(
            "llmpool_agent_gpu_memory_total_bytes", "Memory of each offered GPU.", labels=["gpu"]
        )
        used = GaugeMetricFamily(
            "llmpool_agent_gpu_memory_used_bytes",
            "Memory in use on each offered GPU, by any process.",
            labels=["gpu"],
        )
        util = GaugeMetricFamily(
            "llmpool_agent_gpu_utilization_ratio",
            "Share of time each offered GPU was busy, 0..1, as NVML last said.",
            labels=["gpu"],
        )
        for gpu in self._gpus():
            label = [str(gpu.index)]
            total.add_metric(label, gpu.memory_total_bytes)
            used.add_metric(label, gpu.memory_used_bytes)
            util.add_metric(label, gpu.utilization_percent / 100.0)
        yield total
        yield used
        yield util


class AgentMetrics:
    """A registry of its own (never the global one), built once at start-up."""

    def __init__(
        self,
        statuses: Callable[[], list[ReplicaStatus]],
        restarts_by_pool: Callable[[], Mapping[str, int]],
        gpus: Callable[[], Sequence[GpuInfo]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.controller_connected = Gauge(
            "llmpool_agent_controller_connected",
            "1 while the stream to the controller is open and welcomed, else 0.",
            registry=self.registry,
        )
        self.registry.register(_ReplicaCollector(statuses, restarts_by_pool))
        if gpus is not None:
            self.registry.register(_GpuCollector(gpus))

    def set_connected(self, connected: bool) -> None:
        self.controller_connected.set(1 if connected else 0)
