"""Pure parsers of each engine's Prometheus /metrics text into one engine-neutral load record."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from llmpool.prom_text import Labels, parse_samples


@dataclass(frozen=True)
class EngineLoad:
    """What an engine says about its load; None where it says nothing."""

    running: float = 0.0
    waiting: float = 0.0
    # KV cache use, 0..1.
    kv_usage: float | None = None
    prefix_cache_hits: float | None = None
    prefix_cache_queries: float | None = None
    # SGLang exports a ratio instead of counters.
    prefix_cache_hit_rate: float | None = None
    # False when the text carried none of the engine's request counts (no metrics at all).
    known: bool = True
    # What the same text says of the engine's capacity (llmpool/engine_capacity.py; the prober
    # fills these): KV cache in tokens, tokens per block, requests at once; 0: unknown.
    cache_tokens: int = 0
    cache_block_size: int = 0
    max_running: int = 0


NO_LOAD = EngineLoad(known=False)


@dataclass(frozen=True)
class _Names:
    """Sample names of one engine family; the first name present in a tuple wins."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...] = ()
    prefix_hits: tuple[str, ...] = ()
    prefix_queries: tuple[str, ...] = ()
    prefix_hit_rate: tuple[str, ...] = ()


_VLLM = _Names(
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    # Newer vLLM renamed gpu_cache_usage_perc; both are 0..1 despite "perc".
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    prefix_hits=("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
    prefix_queries=("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"),
)
# llama.cpp's llama-server; newer builds dropped the KV ratio.
_LLAMACPP = _Names(
    running=("llamacpp:requests_processing",),
    waiting=("llamacpp:requests_deferred",),
    kv_usage=("llamacpp:kv_cache_usage_ratio",),
)
_SGLANG = _Names(
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_usage=("sglang:token_usage",),
    prefix_hit_rate=("sglang:cache_hit_rate",),
)
_TGI = _Names(running=("tgi_batch_current_size",), waiting=("tgi_queue_size",))

# The sim engine speaks vLLM's names; "llamacpp" (llama_cpp.server) has no /metrics, but a
# template whose own command runs llama-server under that engine name gets its names read.
_BY_ENGINE: Mapping[str, _Names] = MappingProxyType(
    {
        "vllm": _VLLM,
        "sim": _VLLM,
        "llamacpp": _LLAMACPP,
        "llama-server": _LLAMACPP,
        "sglang": _SGLANG,
        "tgi": _TGI,
    }
)

# Labels whose series repeat one scheduler's numbers: SGLang exports the same queue from every
# tensor- and pipeline-parallel rank. Series that differ only in these are one series.
_RANK_LABELS = frozenset({"tp_rank", "pp_rank"})
# SGLang with priority scheduling adds a series per priority next to the total (priority="").
_BREAKDOWN_LABELS = frozenset({"priority"})


def _per_scheduler(series: list[tuple[Labels, float]]) -> list[float]:
    """One value per scheduler: per-priority breakdowns dropped, rank copies merged (max)."""
    merged: dict[Labels, float] = {}
    for labels, value in series:
        if any(key in _BREAKDOWN_LABELS and val for key, val in labels):
            continue
        key = tuple((k, v) for k, v in labels if k not in _RANK_LABELS)
        merged[key] = max(value, merged.get(key, value))
    return list(merged.values())


def _first(
    values: dict[str, list[tuple[Labels, float]]], names: Iterable[str]
) -> list[float] | None:
    for name in names:
        found = _per_scheduler(values.get(name, []))
        if found:
            return found
    return None


def _sum(found: list[float] | None) -> float | None:
    # Data-parallel ranks or engines each run their own batch: their counts add up.
    return None if found is None else sum(found)


def _mean(found: list[float] | None) -> float | None:
    # Several schedulers (data-parallel ranks, engines) each report their own ratio.
    return None if found is None else sum(found) / len(found)


def _load_from(values: dict[str, list[tuple[Labels, float]]], names: _Names) -> EngineLoad:
    running = _sum(_first(values, names.running))
    waiting = _sum(_first(values, names.waiting))
    if running is None and waiting is None:
        return NO_LOAD
    kv = _mean(_first(values, names.kv_usage))
    return EngineLoad(
        running=running or 0.0,
        waiting=waiting or 0.0,
        kv_usage=None if kv is None else min(max(kv, 0.0), 1.0),
        prefix_cache_hits=_sum(_first(values, names.prefix_hits)),
        prefix_cache_queries=_sum(_first(values, names.prefix_queries)),
        prefix_cache_hit_rate=_mean(_first(values, names.prefix_hit_rate)),
    )


def parse_engine_metrics(engine: str, text: str) -> EngineLoad:
    """The load in one scrape of `engine`'s /metrics. Engines without a known table ("openai")
    are matched against every table, since any compatible server may sit behind them.
    NO_LOAD when no known name is present; ValueError on text that is not Prometheus format."""
    values = parse_samples(text)
    names = _BY_ENGINE.get(engine)
    if names is not None:
        return _load_from(values, names)
    for candidate in (_VLLM, _SGLANG, _LLAMACPP, _TGI):
        load = _load_from(values, candidate)
        if load.known:
            return load
    return NO_LOAD
