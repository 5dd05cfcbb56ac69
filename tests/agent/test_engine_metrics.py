"""The pure /metrics parsers against recorded-style samples of each engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engine_metrics import NO_LOAD, EngineLoad, parse_engine_metrics
from agent.engines import adapter_for

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_vllm_v1_names() -> None:
    load = parse_engine_metrics("vllm", sample("vllm.txt"))
    assert load == EngineLoad(
        running=7.0,
        waiting=3.0,
        kv_usage=pytest.approx(0.4321),  # type: ignore[arg-type]
        prefix_cache_hits=15360.0,
        prefix_cache_queries=20480.0,
    )
    assert load.known


def test_vllm_older_gpu_cache_usage_name() -> None:
    load = parse_engine_metrics("vllm", sample("vllm_v0.txt"))
    assert (load.running, load.waiting, load.kv_usage) == (12.0, 5.0, 0.875)
    assert load.prefix_cache_hits is None and load.prefix_cache_queries is None


def test_vllm_data_parallel_engines_sum_counts_and_average_kv() -> None:
    load = parse_engine_metrics("vllm", sample("vllm_dp2.txt"))
    assert (load.running, load.waiting) == (6.0, 1.0)
    assert load.kv_usage == pytest.approx(0.4)


def test_sim_speaks_vllm_names() -> None:
    assert parse_engine_metrics("sim", sample("vllm.txt")) == parse_engine_metrics(
        "vllm", sample("vllm.txt")
    )


def test_llamacpp_server() -> None:
    load = parse_engine_metrics("llamacpp", sample("llamacpp.txt"))
    assert (load.running, load.waiting, load.kv_usage) == (2.0, 1.0, 0.25)
    assert load.prefix_cache_hits is None


def test_llamacpp_newer_build_without_kv_ratio() -> None:
    load = parse_engine_metrics("llamacpp", sample("llamacpp_new.txt"))
    assert (load.running, load.waiting, load.kv_usage, load.known) == (1.0, 0.0, None, True)


def test_sglang() -> None:
    load = parse_engine_metrics("sglang", sample("sglang.txt"))
    assert (load.running, load.waiting) == (28.0, 6.0)
    assert load.kv_usage == pytest.approx(0.28)
    assert load.prefix_cache_hit_rate == pytest.approx(0.0075, abs=1e-4)
    assert load.prefix_cache_hits is None


def test_tgi_has_no_kv() -> None:
    load = parse_engine_metrics("tgi", sample("tgi.txt"))
    assert (load.running, load.waiting, load.kv_usage, load.known) == (9.0, 4.0, None, True)


def test_openai_engine_detects_whatever_server_sits_behind_it() -> None:
    assert parse_engine_metrics("openai", sample("sglang.txt")).running == 28.0
    assert parse_engine_metrics("openai", sample("tgi.txt")).waiting == 4.0


def test_wrong_engine_names_give_no_load() -> None:
    assert parse_engine_metrics("tgi", sample("vllm.txt")) is NO_LOAD
    assert parse_engine_metrics("openai", "# nothing here\n") is NO_LOAD
    assert not NO_LOAD.known and NO_LOAD.kv_usage is None


def test_kv_usage_is_clamped_to_a_ratio() -> None:
    text = "vllm:num_requests_running 1\nvllm:kv_cache_usage_perc 1.7\n"
    assert parse_engine_metrics("vllm", text).kv_usage == 1.0


def test_garbage_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Prometheus"):
        parse_engine_metrics("vllm", "vllm:num_requests_running{oops 1\n")


def test_llama_server_current_build() -> None:
    load = parse_engine_metrics("llama-server", sample("llama_server.txt"))
    assert (load.running, load.waiting, load.kv_usage, load.known) == (4.0, 2.0, None, True)
    assert load.prefix_cache_hits is None and load.prefix_cache_hit_rate is None


def test_tgi_3_with_histograms_and_labelled_counters() -> None:
    load = parse_engine_metrics("tgi", sample("tgi_3.txt"))
    assert (load.running, load.waiting, load.kv_usage, load.known) == (12.0, 3.0, None, True)


def test_sglang_tensor_parallel_ranks_count_once_and_priorities_are_not_added() -> None:
    load = parse_engine_metrics("sglang", sample("sglang_tp2.txt"))
    # Two TP ranks and a per-priority breakdown of 14 running requests are still 14.
    assert (load.running, load.waiting) == (14.0, 3.0)
    assert load.kv_usage == pytest.approx(0.61)
    assert load.prefix_cache_hit_rate == pytest.approx(0.42)


def test_sglang_data_parallel_ranks_add_up() -> None:
    text = (
        "# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{dp_rank="0",tp_rank="0"} 3.0\n'
        'sglang:num_running_reqs{dp_rank="0",tp_rank="1"} 3.0\n'
        'sglang:num_running_reqs{dp_rank="1",tp_rank="0"} 5.0\n'
        "# TYPE sglang:token_usage gauge\n"
        'sglang:token_usage{dp_rank="0"} 0.2\n'
        'sglang:token_usage{dp_rank="1"} 0.6\n'
    )
    load = parse_engine_metrics("sglang", text)
    assert (load.running, load.waiting) == (8.0, 0.0)
    assert load.kv_usage == pytest.approx(0.4)


def test_created_series_and_unknown_families_are_ignored() -> None:
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        "# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.\n"
        "# TYPE vllm:prefix_cache_hits counter\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 64.0\n'
        'vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7640e+09\n'
        "# TYPE http_requests_total counter\n"
        'http_requests_total{handler="/v1/chat/completions"} 9.0\n'
    )
    load = parse_engine_metrics("vllm", text)
    assert (load.running, load.waiting, load.prefix_cache_hits) == (2.0, 0.0, 64.0)
    assert load.prefix_cache_queries is None and load.kv_usage is None


def test_each_sample_parses_through_its_adapter() -> None:
    for engine, name in [
        ("vllm", "vllm.txt"),
        ("sglang", "sglang.txt"),
        ("tgi", "tgi_3.txt"),
        ("llama-server", "llama_server.txt"),
        ("sim", "vllm_dp2.txt"),
    ]:
        assert adapter_for(engine).parse_load(sample(name)).known, name
