"""The pure capacity parsers against real-format samples of each engine's metrics, info and argv."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from agent.engines import ADAPTERS
from llmpool.engine_capacity import (
    ARG_DEFAULTS,
    INFO_PATHS,
    UNKNOWN,
    EngineCapacity,
    capacity_from_args,
    capacity_from_info,
    capacity_from_metrics,
)

SAMPLES = Path(__file__).parent / "samples"
CAPACITY = SAMPLES / "capacity"


def text(name: str) -> str:
    return (CAPACITY / name).read_text()


def doc(name: str) -> dict[str, Any]:
    """A JSON sample; the // lines above it say where its format comes from."""
    lines = (CAPACITY / name).read_text().splitlines()
    parsed = json.loads("\n".join(line for line in lines if not line.startswith("//")))
    assert isinstance(parsed, dict)
    return parsed


def cap(cache_tokens: int = 0, block_size: int = 0, max_running: int = 0) -> EngineCapacity:
    return EngineCapacity(cache_tokens, block_size, max_running)


# ---- vLLM and the simulator: vllm:cache_config_info -------------------------------------------


def test_vllm_v1_blocks_times_block_size() -> None:
    # 33,676 blocks of 16 tokens; vLLM exports no batch size.
    assert capacity_from_metrics("vllm", text("vllm_v1.txt")) == cap(538_816, 16, 0)


def test_vllm_v0_info_gauge_without_engine_label() -> None:
    # 27,913 blocks of 16 tokens.
    assert capacity_from_metrics("vllm", (SAMPLES / "vllm_v0.txt").read_text()) == cap(446_608, 16)


def test_vllm_hybrid_model_trusts_kv_cache_size_tokens_over_the_block_product() -> None:
    # 20,377 x 4 = 81,508 would undercount the hybrid cache 14-fold.
    assert capacity_from_metrics("vllm", text("vllm_hybrid.txt")) == cap(1_179_770, 4)


def test_vllm_data_parallel_engine_caches_add_up() -> None:
    # Two engine cores of 27,913 x 16 = 446,608 tokens each.
    assert capacity_from_metrics("vllm", text("vllm_dp2.txt")) == cap(893_216, 16)


def test_vllm_unprofiled_block_count_leaves_the_capacity_unknown() -> None:
    assert capacity_from_metrics("vllm", text("vllm_v1_none.txt")) == cap(0, 16)


def test_vllm_one_unknown_engine_makes_the_total_unknown() -> None:
    series = (
        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0\n'
        'vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="None"} 1.0\n'
    )
    assert capacity_from_metrics("vllm", series) == cap(0, 16)


def test_vllm_prefix_match_unit_is_the_prefix_granularity() -> None:
    line = (
        'vllm:cache_config_info{block_size="1072",kv_cache_size_tokens="3174971",'
        'num_gpu_blocks="3040",prefix_match_unit="32"} 1\n'
    )
    assert capacity_from_metrics("vllm", line) == cap(3_174_971, 32)


def test_vllm_metrics_without_the_info_gauge() -> None:
    assert capacity_from_metrics("vllm", (SAMPLES / "vllm.txt").read_text()) == UNKNOWN
    assert capacity_from_metrics("vllm", "vllm:num_requests_running 1\n") == UNKNOWN


def test_sim_reads_the_proposed_vllm_info_gauge_and_its_batch_extension() -> None:
    # 16,384 blocks of 64 tokens, 64 sequences: the simulator's defaults.
    found = capacity_from_metrics("sim", text("sim_proposed.txt"))
    assert found == cap(1_048_576, 64, 64) == ARG_DEFAULTS["sim"]


# ---- SGLang ------------------------------------------------------------------------------------


def test_sglang_2024_gauges_with_name_label() -> None:
    assert capacity_from_metrics("sglang", text("sglang_2024.txt")) == cap(570_979, 0, 2231)


def test_sglang_tensor_parallel_ranks_count_once() -> None:
    assert capacity_from_metrics("sglang", text("sglang_tp2.txt")) == cap(412_345)


def test_sglang_data_parallel_pools_add_up() -> None:
    series = (
        'sglang:max_total_num_tokens{dp_rank="0",tp_rank="0"} 1000.0\n'
        'sglang:max_total_num_tokens{dp_rank="0",tp_rank="1"} 1000.0\n'
        'sglang:max_total_num_tokens{dp_rank="1",tp_rank="0"} 3000.0\n'
    )
    assert capacity_from_metrics("sglang", series) == cap(4000)


def test_sglang_load_only_scrape_has_no_capacity() -> None:
    assert capacity_from_metrics("sglang", (SAMPLES / "sglang.txt").read_text()) == UNKNOWN


def test_sglang_server_info() -> None:
    # token_capacity 20,480 in the one DP rank's state, page_size 1, 128 running requests.
    assert capacity_from_info("sglang", doc("sglang_server_info.jsonc")) == cap(20_480, 1, 128)


def test_sglang_server_info_of_older_releases_falls_back_to_top_level_fields() -> None:
    info = doc("sglang_server_info.jsonc")
    info["max_running_requests"] = None  # server arg left unset
    info["internal_states"] = [{"model_path": info["model_path"], "last_gen_throughput": 0.0}]
    assert capacity_from_info("sglang", info) == cap(20_480, 1, 0)


def test_sglang_server_info_data_parallel_states_add_up() -> None:
    info = doc("sglang_server_info.jsonc")
    rank = info["internal_states"][0]
    info["internal_states"] = [rank, {**rank, "memory_usage": {"token_capacity": 30_000}}]
    assert capacity_from_info("sglang", info) == cap(50_480, 1, 256)


# ---- TGI ---------------------------------------------------------------------------------------


def test_tgi_3_metrics_batch_total_tokens() -> None:
    assert capacity_from_metrics("tgi", (SAMPLES / "tgi_3.txt").read_text()) == cap(163_840)


def test_tgi_3_info_has_only_the_admission_limit() -> None:
    assert capacity_from_info("tgi", doc("tgi_info_3.jsonc")) == cap(0, 0, 128)


def test_tgi_1_info_has_the_kv_budget() -> None:
    assert capacity_from_info("tgi", doc("tgi_info_1.jsonc")) == cap(163_840, 0, 128)


def test_tgi_max_batch_size_beats_the_admission_limit() -> None:
    info = {**doc("tgi_info_1.jsonc"), "max_batch_size": 32}
    assert capacity_from_info("tgi", info).max_running == 32


# ---- llama.cpp ---------------------------------------------------------------------------------


def test_llama_server_props() -> None:
    assert capacity_from_info("llama-server", doc("llama_server_props.jsonc")) == cap(1024, 0, 1)


def test_llama_server_props_n_ctx_is_one_slot() -> None:
    props = doc("llama_server_props.jsonc")
    props["total_slots"] = 4
    props["default_generation_settings"]["n_ctx"] = 8192
    # With a unified cache (the default without -np) 8,192 is the whole cache; not multiplied.
    assert capacity_from_info("llama-server", props) == cap(8192, 0, 4)
    assert capacity_from_info("llamacpp", props) == cap(8192, 0, 4)


@pytest.mark.parametrize(
    ("engine", "name"), [("llama-server", "llama_server.txt"), ("llamacpp", "llamacpp.txt")]
)
def test_llama_cpp_metrics_have_no_capacity(engine: str, name: str) -> None:
    assert capacity_from_metrics(engine, (SAMPLES / name).read_text()) == UNKNOWN


# ---- engines without a table, paths ------------------------------------------------------------


def test_openai_engine_detects_whatever_server_sits_behind_it() -> None:
    assert capacity_from_metrics("openai", text("vllm_v1.txt")) == cap(538_816, 16)
    assert capacity_from_metrics("openai", text("sglang_2024.txt")).cache_tokens == 570_979
    assert capacity_from_metrics("openai", "# nothing\n") == UNKNOWN
    assert capacity_from_info("openai", doc("tgi_info_1.jsonc")).cache_tokens == 163_840
    assert capacity_from_info("openai", doc("llama_server_props.jsonc")) == cap(1024, 0, 1)
    assert capacity_from_info("openai", {"object": "list", "data": []}) == UNKNOWN


def test_info_paths_cover_every_engine() -> None:
    assert set(INFO_PATHS) == set(ADAPTERS)
    assert {e: p for e, p in INFO_PATHS.items() if p} == {
        "tgi": "/info",
        "llama-server": "/props",
        "sglang": "/get_server_info",
    }


# ---- bad engine output -------------------------------------------------------------------------


def test_non_prometheus_text_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Prometheus"):
        capacity_from_metrics("vllm", 'vllm:cache_config_info{block_size="16" 1\n')


@pytest.mark.parametrize(
    "value", ["NaN", "+Inf", "-Inf", "-5", "0", "1.5", "2e9", "abc", "", "None", "0x10"]
)
def test_bad_label_values_are_unknown(value: str) -> None:
    line = f'vllm:cache_config_info{{block_size="{value}",kv_cache_size_tokens="{value}"}} 1\n'
    assert capacity_from_metrics("vllm", line) == UNKNOWN


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-1", "0", "2e9", "12.5"])
def test_bad_gauge_values_are_unknown(value: str) -> None:
    assert capacity_from_metrics("sglang", f"sglang:max_total_num_tokens {value}\n") == UNKNOWN
    assert capacity_from_metrics("tgi", f"tgi_batch_total_tokens {value}\n") == UNKNOWN


def test_absurd_block_products_are_unknown() -> None:
    line = 'vllm:cache_config_info{block_size="16",num_gpu_blocks="100000000"} 1\n'
    assert capacity_from_metrics("vllm", line) == cap(0, 16)


@pytest.mark.parametrize(
    "bad", [None, True, -3, 0, 1.5, math.nan, math.inf, 10**12, "lots", [1], {"n": 1}]
)
def test_bad_json_values_leave_fields_unknown(bad: object) -> None:
    tgi = {"max_batch_total_tokens": bad, "max_concurrent_requests": bad, "max_batch_size": bad}
    props = {"default_generation_settings": {"n_ctx": bad}, "total_slots": bad}
    sglang = {"max_total_num_tokens": bad, "page_size": bad, "internal_states": [{"x": bad}]}
    assert capacity_from_info("tgi", tgi) == UNKNOWN
    assert capacity_from_info("llama-server", props) == UNKNOWN
    assert capacity_from_info("sglang", sglang) == UNKNOWN


def test_numbers_as_strings_are_read() -> None:
    assert capacity_from_info("tgi", {"max_batch_total_tokens": "4096"}) == cap(4096)


@pytest.mark.parametrize(
    "document",
    [
        [],
        "props",
        None,
        {"default_generation_settings": "n_ctx"},
        {"internal_states": "none"},
        {"internal_states": [1, "x", None]},
        {"internal_states": [{"memory_usage": [20480]}]},
    ],
)
def test_malformed_documents_are_unknown(document: Any) -> None:
    for engine in ("sglang", "llama-server", "tgi", "openai", "vllm"):
        assert capacity_from_info(engine, document) == UNKNOWN


# ---- argv --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "argv", "expected"),
    [
        (
            "sim",
            ["--kv-blocks", "2048", "--block-size", "16", "--max-num-seqs", "8"],
            (32768, 16, 8),
        ),
        ("sim", ["--kv-blocks=2048", "--block-size=16", "--max-num-seqs=8"], (32768, 16, 8)),
        (
            "vllm",
            ["serve", "m", "--num-gpu-blocks-override", "1000", "--block-size", "32"],
            (32000, 32, 0),
        ),
        ("vllm", ["--max_num_seqs=128", "--num_gpu_blocks_override", "10"], (0, 0, 128)),
        ("sglang", ["--max-total-tokens", "200000", "--max-running-requests=48"], (200000, 0, 48)),
        ("sglang", ["--page-size", "16"], (0, 16, 0)),
        (
            "tgi",
            ["--max-batch-total-tokens", "65536", "--max-concurrent-requests", "128"],
            (65536, 0, 128),
        ),
        ("tgi", ["--max-concurrent-requests=128", "--max-batch-size=16"], (0, 0, 16)),
        ("llama-server", ["-m", "x.gguf", "-c", "8192", "-np", "4"], (8192, 0, 4)),
        ("llama-server", ["--ctx-size=32768", "--parallel=2"], (32768, 0, 2)),
        ("llama-server", ["-c", "0", "-np", "-1"], (0, 0, 0)),
        ("llamacpp", ["--model", "m.gguf", "--n_ctx", "4096"], (4096, 0, 0)),
        ("llamacpp", ["--n_ctx=8192"], (8192, 0, 0)),
    ],
)
def test_args(engine: str, argv: list[str], expected: tuple[int, int, int]) -> None:
    assert capacity_from_args(engine, argv) == cap(*expected)


def test_args_last_flag_wins_and_bad_values_are_unknown() -> None:
    assert capacity_from_args("sglang", ["--max-total-tokens", "1", "--max-total-tokens", "9"]) == (
        cap(9)
    )
    assert capacity_from_args("sglang", ["--max-total-tokens", "--page-size", "4"]) == cap(0, 4)
    assert capacity_from_args("sglang", ["--max-total-tokens"]) == UNKNOWN
    assert capacity_from_args("sglang", ["--max-total-tokens", "2000000000"]) == UNKNOWN
    assert capacity_from_args("sglang", ["--max-total-tokens=lots"]) == UNKNOWN
    assert capacity_from_args(
        "vllm", ["--num-gpu-blocks-override", "100000000", "--block-size", "16"]
    ) == (cap(0, 16))


def test_args_that_say_nothing() -> None:
    assert capacity_from_args("vllm", ["serve", "m"]) == UNKNOWN
    assert capacity_from_args("sim", []) == UNKNOWN
    assert capacity_from_args("openai", ["--max-num-seqs", "4"]) == UNKNOWN
    # Block count without block size: vLLM's default block depends on the model.
    assert capacity_from_args("vllm", ["--num-gpu-blocks-override", "10"]) == UNKNOWN


# ---- merging -----------------------------------------------------------------------------------


def test_merged_keeps_own_fields_and_fills_the_rest() -> None:
    engine = cap(cache_tokens=1000)
    args = cap(cache_tokens=5, block_size=16, max_running=8)
    assert engine.merged(args) == cap(1000, 16, 8)
    assert args.merged(engine) == args
    assert UNKNOWN.merged(args) == args and args.merged(UNKNOWN) == args
    assert not UNKNOWN.known and engine.known


def test_llamacpp_capacity_comes_from_args_then_defaults() -> None:
    default = ARG_DEFAULTS["llamacpp"]
    assert capacity_from_args("llamacpp", []).merged(default) == cap(2048, 0, 1)
    assert capacity_from_args("llamacpp", ["--n_ctx", "8192"]).merged(default) == cap(8192, 0, 1)
