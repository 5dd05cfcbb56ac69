"""Engine adapters: default commands from weights and args, probe paths, registry, GGUF headers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent.engines import ADAPTERS, adapter_for
from agent.gguf import GgufError, read_architecture
from agent.template import ReplicaSpec, render, validate
from controller.model import Template
from controller.validation import check_template
from llmpool.config import ConfigError, parse_config
from llmpool.engines import ENGINES
from llmpool.errors import FailedPreconditionError, InvalidArgumentError
from tests.agent.gguf_header import gguf_header, kv_string, kv_strings, kv_uint32


def never() -> Path:
    raise AssertionError("no lookup of the bundled model")


def argv(engine: str, weights: str = "", args: tuple[str, ...] = ()) -> tuple[str, ...]:
    spec = ReplicaSpec(
        replica_id="r1", pool="chat", engine=engine, served_model="m", weights=weights, args=args
    )
    return render(adapter_for(engine).fill(spec, never), "10.0.0.5", 20001, python="/py").argv


def test_every_engine_name_agrees_everywhere() -> None:
    # One table (llmpool.engines.ENGINES): the agent has an adapter for each kind in it, and
    # the config and the controller accept exactly its kinds.
    assert tuple(ADAPTERS) == tuple(ENGINES)
    assert all(adapter_for(name).name == name for name in ENGINES)
    for kind in ENGINES.values():
        command = ("x",) if kind.needs_command else ()
        weights = "w" if kind.needs_weights else ""
        check_template("p", Template(engine=kind.name, command=command, weights=weights))
        template = f"{{engine: {kind.name}, command: {list(command)}, weights: '{weights}'}}"
        config = parse_config(f"pools:\n  - name: p\n    template: {template}\n")
        assert config.pools[0].template is not None
        assert config.pools[0].template.engine == kind.name
    with pytest.raises(ConfigError, match="known engines are " + ", ".join(ENGINES)):
        parse_config("pools:\n  - name: p\n    template: {engine: trt}\n")
    with pytest.raises(InvalidArgumentError, match="unknown engine 'trt'"):
        check_template("p", Template(engine="trt"))


def test_the_registry_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        ADAPTERS["vllm"] = ADAPTERS["sim"]  # type: ignore[index]


def test_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(InvalidArgumentError, match="known engines are sim, llamacpp, llama-server"):
        adapter_for("tensorrt")


def test_vllm_default_command() -> None:
    assert argv("vllm", "Qwen/Qwen2.5-0.5B-Instruct", ("--max-model-len", "4096")) == (
        "vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct", "--host", "10.0.0.5", "--port", "20001",
        "--served-model-name", "m", "--max-model-len", "4096",
    )  # fmt: skip


def test_sglang_default_command_enables_metrics() -> None:
    assert argv("sglang", "/models/qwen") == (
        "python3", "-m", "sglang.launch_server", "--model-path", "/models/qwen",
        "--host", "10.0.0.5", "--port", "20001", "--served-model-name", "m", "--enable-metrics",
    )  # fmt: skip


def test_tgi_default_command_gives_each_replica_its_own_shard_socket() -> None:
    assert argv("tgi", "HuggingFaceTB/SmolLM2-360M-Instruct", ("--max-total-tokens", "2048")) == (
        "text-generation-launcher", "--model-id", "HuggingFaceTB/SmolLM2-360M-Instruct",
        "--hostname", "10.0.0.5", "--port", "20001",
        "--shard-uds-path", "/tmp/llmpool-tgi-20001", "--max-total-tokens", "2048",
    )  # fmt: skip


def test_llama_server_loads_local_files_and_fetches_hub_repos() -> None:
    assert argv("llama-server", "/models/q.gguf", ("-ngl", "99")) == (
        "llama-server", "-m", "/models/q.gguf", "--host", "10.0.0.5", "--port", "20001",
        "--alias", "m", "--metrics", "-ngl", "99",
    )  # fmt: skip
    assert argv("llama-server", "ggml-org/gemma-3-1b-it-GGUF")[1:3] == (
        "-hf",
        "ggml-org/gemma-3-1b-it-GGUF",
    )


def test_sim_default_command_takes_args() -> None:
    assert argv("sim", args=("--ttft-ms", "5"))[-6:] == (
        "--port", "20001", "--model", "m", "--ttft-ms", "5",
    )  # fmt: skip


@pytest.mark.parametrize("engine", ["llama-server", "vllm", "sglang", "tgi"])
def test_engines_without_a_model_of_their_own_need_weights(engine: str) -> None:
    spec = ReplicaSpec(replica_id="r7", pool="p", engine=engine)
    with pytest.raises(
        InvalidArgumentError, match=f"replica r7: engine '{engine}' needs template.weights"
    ):
        adapter_for(engine).fill(spec, never)
    with pytest.raises(InvalidArgumentError, match=r"needs template\.weights"):
        validate(spec)


def test_openai_engine_has_no_default_command() -> None:
    spec = ReplicaSpec(replica_id="r", pool="p", engine="openai")
    with pytest.raises(InvalidArgumentError, match="no default command"):
        adapter_for("openai").fill(spec, never)


@pytest.mark.parametrize(
    ("engine", "health", "ready", "metrics"),
    [
        ("sim", "/health", "", "/metrics"),
        ("llamacpp", "/docs", "", ""),
        ("llama-server", "/health", "", "/metrics"),
        ("vllm", "/health", "", "/metrics"),
        ("sglang", "/health", "/health_generate", "/metrics"),
        ("tgi", "/health", "", "/metrics"),
        ("openai", "/v1/models", "", ""),
    ],
)
def test_probe_paths(engine: str, health: str, ready: str, metrics: str) -> None:
    adapter = adapter_for(engine)
    assert (adapter.health_path, adapter.ready_path, adapter.metrics_path) == (
        health,
        ready,
        metrics,
    )


def test_default_command_brings_the_engines_paths() -> None:
    spec = ReplicaSpec(
        replica_id="r", pool="p", engine="sglang", weights="w", health_path="/x", metrics_path=""
    )
    filled = adapter_for("sglang").fill(spec, never)
    assert (filled.health_path, filled.ready_path, filled.metrics_path) == (
        "/health",
        "/health_generate",
        "/metrics",
    )


def test_own_command_keeps_its_paths_and_readiness_follows_them() -> None:
    own = ReplicaSpec(replica_id="r", pool="p", engine="sglang", command=("srv",))
    assert adapter_for("sglang").fill(own, never).ready_path == "/health_generate"
    elsewhere = ReplicaSpec(
        replica_id="r", pool="p", engine="sglang", command=("srv",), health_path="/ping"
    )
    filled = adapter_for("sglang").fill(elsewhere, never)
    assert (filled.command, filled.health_path, filled.ready_path) == (("srv",), "/ping", "")


def test_llamacpp_bundled_model_missing_names_the_replica() -> None:
    def absent() -> Path:
        raise FailedPreconditionError("not installed")

    spec = ReplicaSpec(replica_id="r2", pool="p", engine="llamacpp")
    with pytest.raises(FailedPreconditionError, match="replica r2: engine 'llamacpp'"):
        adapter_for("llamacpp").fill(spec, absent)


def test_gguf_architecture_found_past_other_keys_and_arrays() -> None:
    header = gguf_header(
        kv_uint32("general.quantization_version", 2),
        kv_strings("tokenizer.ggml.tokens", ["<s>", "</s>", "hello"]),
        kv_string("general.architecture", "qwen2"),
    )
    assert read_architecture(io.BytesIO(header)) == "qwen2"


def test_gguf_v1_header() -> None:
    header = gguf_header(kv_string("general.architecture", "llama", v1=True), version=1)
    assert read_architecture(io.BytesIO(header)) == "llama"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"PK\x03\x04", "not a GGUF"),
        (gguf_header(kv_uint32("a", 1))[:-2], "ends inside"),
        (gguf_header(kv_uint32("a", 1)), "no general.architecture"),
        (b"GGUF\x00\x00\x00\x03", "unsupported GGUF version"),
    ],
)
def test_gguf_errors_say_why(data: bytes, needle: str) -> None:
    with pytest.raises(GgufError, match=needle):
        read_architecture(io.BytesIO(data))
