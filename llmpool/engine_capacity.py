"""Pure parsers of an engine's capacity: KV cache size in tokens, cache block size, batch size.

Each engine says it somewhere else, or not at all:

- vLLM: the `vllm:cache_config_info` info gauge on /metrics (its labels are CacheConfig's fields):
  `kv_cache_size_tokens` where newer releases set it (right for hybrid models, where
  num_gpu_blocks x block_size is not), else num_gpu_blocks x block_size. One series per engine
  core (`engine` label) with data parallelism; their caches add up. No batch size anywhere.
- SGLang: GET /get_server_info (`max_total_num_tokens`, `page_size`, `max_running_requests`,
  per DP rank `internal_states`), and since late 2025 the gauge `sglang:max_total_num_tokens`
  (in late 2024 also `sglang:max_running_requests`).
- TGI: `tgi_batch_total_tokens` on /metrics (described by the 3.x router); GET /info carried
  `max_batch_total_tokens` only up to 2.0. `max_concurrent_requests` (admission, running plus
  queued) stands in for the batch size unless `max_batch_size` is set.
- llama.cpp's llama-server: GET /props; its /metrics has no capacity. /props `n_ctx` is one slot's
  context: the whole KV cache with a unified cache (the default when -np is not given) or one
  slot, but with -np N and no --kv-unified the cache is N times that. `-c` in the argv is exact.
- llama-cpp-python's llama_cpp.server: exposes nothing; `--n_ctx` (default 2048), one request
  at a time.
- llm-pool's simulator: vLLM's info gauge, plus a `max_num_seqs` label on it (an llm-pool
  extension: vLLM exports its batch size nowhere), which is read when present.

Every parser is total over bad engine output: missing, malformed, NaN, negative or absurd values
leave that field 0 (unknown). Only text that is not Prometheus format raises ValueError, as
engine_metrics does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, TypeVar

from llmpool.prom_text import Labels, parse_samples
from llmpool.sim.settings import SimSettings

_T = TypeVar("_T")

# Larger values are not a real engine's: they read as unknown.
MAX_CACHE_TOKENS = 10**9
MAX_COUNT = 10**6


@dataclass(frozen=True, slots=True)
class EngineCapacity:
    """What an engine can hold; 0 where unknown."""

    # KV cache capacity in tokens (the whole replica: data-parallel ranks added up).
    cache_tokens: int = 0
    # Tokens per KV block, the prefix cache's granularity.
    block_size: int = 0
    # Requests the engine decodes at once.
    max_running: int = 0

    @property
    def known(self) -> bool:
        return any((self.cache_tokens, self.block_size, self.max_running))

    def merged(self, other: EngineCapacity) -> EngineCapacity:
        """Each field of self, else other's: `from_engine.merged(from_args)`, except that for
        llama-server the args come first (-c is the whole cache, /props one slot's)."""
        return EngineCapacity(
            *(getattr(self, f.name) or getattr(other, f.name) for f in fields(self))
        )


UNKNOWN = EngineCapacity()

# Engine -> the JSON document to GET for capacity_from_info; "" when the engine has none.
# Newer SGLang calls it /server_info and keeps /get_server_info (there since late 2024) as a
# deprecated alias.
INFO_PATHS: Mapping[str, str] = MappingProxyType(
    {
        "sim": "",
        "llamacpp": "",
        "llama-server": "/props",
        "vllm": "",
        "sglang": "/get_server_info",
        "tgi": "/info",
        "openai": "",
    }
)

# What an engine runs with when its argv says nothing, where that is fixed: merge it last.
# llama_cpp.server: n_ctx defaults to 2048 (llama_cpp/server/settings.py) and one request holds
# the model lock at a time. The simulator: SimSettings' defaults (LLMPOOL_SIM_* may override).
_SIM = SimSettings()
ARG_DEFAULTS: Mapping[str, EngineCapacity] = MappingProxyType(
    {
        "llamacpp": EngineCapacity(cache_tokens=2048, max_running=1),
        "sim": EngineCapacity(
            cache_tokens=_SIM.kv_blocks * _SIM.block_size,
            block_size=_SIM.block_size,
            max_running=_SIM.max_num_seqs,
        ),
    }
)


def _count(value: Any, limit: int = MAX_COUNT) -> int:
    """A positive whole number up to limit from a JSON or label value; 0 for anything else."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return 0
    if not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    if value <= 0 or value > limit or value != int(value):
        return 0
    return int(value)


def _tokens(value: Any) -> int:
    return _count(value, MAX_CACHE_TOKENS)


def _product(a: int, b: int) -> int:
    return _tokens(a * b) if a and b else 0


def _total(parts: Iterable[int], limit: int = MAX_CACHE_TOKENS) -> int:
    """Sum of per-rank values; 0 when there are none or any rank's is unknown."""
    values = list(parts)
    if not values or not all(values):
        return 0
    return _count(sum(values), limit)


def _agreed(parts: Iterable[int]) -> int:
    """The value every rank reports; 0 when they differ or none is known."""
    known = {v for v in parts if v}
    return known.pop() if len(known) == 1 else 0


# ---- Prometheus /metrics ----------------------------------------------------------------------

Samples = dict[str, list[tuple[Labels, float]]]

# Labels whose series repeat one scheduler's numbers (tensor, pipeline, expert-parallel ranks).
_RANK_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank", "attn_tp_rank", "attn_cp_rank"})


def _per_scheduler(series: list[tuple[Labels, float]], limit: int) -> list[int]:
    """One value per scheduler (data-parallel rank): rank copies merged, each bounded."""
    merged: dict[Labels, int] = {}
    for labels, value in series:
        key = tuple((k, v) for k, v in labels if k not in _RANK_LABELS)
        merged[key] = max(_count(value, limit), merged.get(key, 0))
    return list(merged.values())


def _vllm_engine(labels: Mapping[str, str]) -> EngineCapacity:
    blocks = _count(labels.get("num_gpu_blocks"), MAX_CACHE_TOKENS)
    block_size = _count(labels.get("block_size"))
    cache = _tokens(labels.get("kv_cache_size_tokens")) or _product(blocks, block_size)
    # Newer releases hash prefixes at a finer unit than the (hybrid) physical block.
    unit = _count(labels.get("prefix_match_unit")) or _count(labels.get("hash_block_size"))
    # max_num_seqs: not a vLLM label; the extension proposed for the simulator.
    return EngineCapacity(cache, unit or block_size, _count(labels.get("max_num_seqs")))


def _vllm_metrics(values: Samples) -> EngineCapacity:
    by_engine: dict[str, EngineCapacity] = {}
    for labels, _ in values.get("vllm:cache_config_info", []):
        label_map = dict(labels)
        by_engine[label_map.get("engine", "")] = _vllm_engine(label_map)
    engines = list(by_engine.values())
    return EngineCapacity(
        cache_tokens=_total(e.cache_tokens for e in engines),
        block_size=_agreed(e.block_size for e in engines),
        max_running=_total((e.max_running for e in engines), MAX_COUNT),
    )


def _sglang_metrics(values: Samples) -> EngineCapacity:
    tokens = _per_scheduler(values.get("sglang:max_total_num_tokens", []), MAX_CACHE_TOKENS)
    running = _per_scheduler(values.get("sglang:max_running_requests", []), MAX_COUNT)
    return EngineCapacity(cache_tokens=_total(tokens), max_running=_total(running, MAX_COUNT))


def _tgi_metrics(values: Samples) -> EngineCapacity:
    series = values.get("tgi_batch_total_tokens", [])
    return EngineCapacity(cache_tokens=_agreed(_tokens(v) for _, v in series))


def _no_metrics(values: Samples) -> EngineCapacity:
    return UNKNOWN


_METRICS_PARSERS = {
    "vllm": _vllm_metrics,
    "sim": _vllm_metrics,
    "sglang": _sglang_metrics,
    "tgi": _tgi_metrics,
    "llamacpp": _no_metrics,
    "llama-server": _no_metrics,
}


def capacity_from_metrics(engine: str, text: str) -> EngineCapacity:
    """The capacity in one scrape of `engine`'s /metrics; UNKNOWN where it has none. Other engine
    names ("openai") try every table. ValueError on text that is not Prometheus format."""
    values = parse_samples(text)
    parser = _METRICS_PARSERS.get(engine)
    if parser is not None:
        return parser(values)
    return _first_known((_vllm_metrics, _sglang_metrics, _tgi_metrics), values)


# ---- JSON info documents ----------------------------------------------------------------------


def _sglang_info(doc: Mapping[str, Any]) -> EngineCapacity:
    listed = doc.get("internal_states")
    states = [s for s in listed if isinstance(s, Mapping)] if isinstance(listed, list) else []
    # One internal state per data-parallel rank; newer releases put each rank's pool and batch
    # limit there, older ones only the first rank's pool at the top level.
    pools = [
        _tokens(s["memory_usage"].get("token_capacity"))
        for s in states
        if isinstance(s.get("memory_usage"), Mapping)
    ]
    batches = [_count(s.get("effective_max_running_requests_per_dp")) for s in states]
    cache = (_total(pools) if len(pools) == len(states) else 0) or _tokens(
        doc.get("max_total_num_tokens")
    )
    running = _total(batches, MAX_COUNT) or _count(doc.get("max_running_requests"))
    return EngineCapacity(cache, _count(doc.get("page_size")), running)


def _llama_props(doc: Mapping[str, Any]) -> EngineCapacity:
    settings = doc.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, Mapping) else None
    # One slot's context: the whole cache when unified or single-slot, else a lower bound.
    return EngineCapacity(cache_tokens=_tokens(n_ctx), max_running=_count(doc.get("total_slots")))


def _tgi_info(doc: Mapping[str, Any]) -> EngineCapacity:
    running = _count(doc.get("max_batch_size")) or _count(doc.get("max_concurrent_requests"))
    return EngineCapacity(
        cache_tokens=_tokens(doc.get("max_batch_total_tokens")), max_running=running
    )


def _no_info(doc: Mapping[str, Any]) -> EngineCapacity:
    return UNKNOWN


_INFO_PARSERS = {
    "sglang": _sglang_info,
    "llama-server": _llama_props,
    # A template may run llama-server under the llamacpp engine name.
    "llamacpp": _llama_props,
    "tgi": _tgi_info,
    "vllm": _no_info,
    "sim": _no_info,
}


def capacity_from_info(engine: str, doc: Mapping[str, Any]) -> EngineCapacity:
    """The capacity in the JSON document GET INFO_PATHS[engine] answered with (parsed); other
    engine names ("openai") try every parser. UNKNOWN for anything that is not such a document."""
    if not isinstance(doc, Mapping):
        return UNKNOWN
    parser = _INFO_PARSERS.get(engine)
    if parser is not None:
        return parser(doc)
    return _first_known((_sglang_info, _llama_props, _tgi_info), doc)


def _first_known(parsers: Iterable[Callable[[_T], EngineCapacity]], source: _T) -> EngineCapacity:
    """What the first of parsers that finds anything in source finds (UNKNOWN: none does)."""
    for parser in parsers:
        found = parser(source)
        if found.known:
            return found
    return UNKNOWN


# ---- command-line arguments -------------------------------------------------------------------

# Per engine: flag -> field key. Long flags are matched with "_" read as "-" (vLLM accepts both,
# llama_cpp.server spells its flags with "_").
_FLAGS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "sim": {"--kv-blocks": "blocks", "--block-size": "block", "--max-num-seqs": "running"},
        "vllm": {
            "--num-gpu-blocks-override": "blocks",
            "--block-size": "block",
            "--max-num-seqs": "running",
        },
        "sglang": {
            "--max-total-tokens": "tokens",
            "--page-size": "block",
            "--max-running-requests": "running",
        },
        # --max-batch-total-tokens is ignored (inferred from memory) for flash-attention models.
        "tgi": {
            "--max-batch-total-tokens": "tokens",
            "--max-batch-size": "running",
            "--max-concurrent-requests": "admitted",
        },
        # -c is the whole KV cache whether or not slots share it.
        "llama-server": {
            "-c": "tokens",
            "--ctx-size": "tokens",
            "-np": "running",
            "--parallel": "running",
        },
        "llamacpp": {"--n-ctx": "tokens"},
    }
)


def _flag_name(token: str) -> str:
    return "--" + token[2:].replace("_", "-") if token.startswith("--") else token


def _is_value(token: str) -> bool:
    if not token.startswith("-"):
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


def _flag_values(argv: Sequence[str], wanted: Mapping[str, str]) -> dict[str, str]:
    """Field key -> the value of the last wanted flag given as `--flag N` or `--flag=N`."""
    found: dict[str, str] = {}
    for i, token in enumerate(argv):
        if not isinstance(token, str) or not token.startswith("-"):
            continue
        name, eq, value = token.partition("=")
        key = wanted.get(_flag_name(name))
        if key is None:
            continue
        if eq:
            found[key] = value
        elif i + 1 < len(argv) and isinstance(argv[i + 1], str) and _is_value(argv[i + 1]):
            found[key] = argv[i + 1]
    return found


def capacity_from_args(engine: str, argv: Sequence[str]) -> EngineCapacity:
    """The capacity an engine's command line sets explicitly (flags only; environment variables
    and config files are not read). UNKNOWN for engines without a table ("openai")."""
    wanted = _FLAGS.get(engine)
    if wanted is None:
        return UNKNOWN
    given = _flag_values(argv, wanted)
    block = _count(given.get("block"))
    blocks = _count(given.get("blocks"), MAX_CACHE_TOKENS)
    cache = _tokens(given.get("tokens")) or _product(blocks, block)
    running = _count(given.get("running")) or _count(given.get("admitted"))
    return EngineCapacity(cache, block, running)
