"""The engine's Prometheus metrics under vLLM's names, in a registry of its own."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmpool.sim.scheduler import Scheduler

# vLLM's own bucket edges, so that dashboards built for vLLM read the simulator the same way.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
)


class _SchedulerGauges(Collector):
    """Reads running, waiting and KV use from the scheduler at scrape time (never stale)."""

    def __init__(self, scheduler: Scheduler, model: str, cache_info: bool = True) -> None:
        self._scheduler = scheduler
        self._model = model
        self._cache_info = cache_info

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self._scheduler
        values = (
            ("vllm:num_requests_running", "Requests in the running batch.", len(s.running)),
            (
                "vllm:num_requests_waiting",
                "Requests waiting for batch room or KV blocks.",
                len(s.waiting),
            ),
            ("vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (0..1).", s.kv.usage),
        )
        for name, doc, value in values:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model], float(value))
            yield family
        if not self._cache_info:
            return
        # vLLM's info gauge of its cache (its labels are the CacheConfig's fields), so that
        # agents learn the cache's size as from vLLM; max_num_seqs is ours (vLLM has no gauge
        # of its batch size).
        info = {
            "block_size": str(s.block_size),
            "enable_prefix_caching": "True",
            "engine": "0",
            "kv_cache_size_tokens": str(s.kv.capacity * s.block_size),
            "max_num_seqs": str(s.max_num_seqs),
            "num_gpu_blocks": str(s.kv.capacity),
        }
        family = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=list(info)
        )
        family.add_metric(list(info.values()), 1.0)
        yield family


class SimMetrics:
    """Counters and histograms the engine updates; gauges come from the scheduler itself."""

    def __init__(self, scheduler: Scheduler, model: str, cache_info: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_SchedulerGauges(scheduler, model, cache_info))
        labels = ["model_name"]
        self._queries = Counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            labels,
            registry=self.registry,
        ).labels(model)
        self._hits = Counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            labels,
            registry=self.registry,
        ).labels(model)
        self._prompt = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=self.registry
        ).labels(model)
        self._generation = Counter(
            "vllm:generation_tokens", "Tokens generated.", labels, registry=self.registry
        ).labels(model)
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        ).labels(model)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency, arrival to last token.",
            labels,
            buckets=_E2E_BUCKETS,
            registry=self.registry,
        ).labels(model)

    def admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        self._queries.inc(prompt_tokens)
        self._hits.inc(cached_tokens)
        self._prompt.inc(prompt_tokens)

    def generated(self, tokens: int) -> None:
        self._generation.inc(tokens)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def finished(self, seconds: float) -> None:
        self._e2e.observe(seconds)
