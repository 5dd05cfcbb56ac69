"""Engine adapters: per engine kind, its default command, probe paths and load parser."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from agent.engine_metrics import EngineLoad, parse_engine_metrics
from agent.gguf import GgufError, gguf_architecture
from agent.template import ReplicaSpec
from llmpool.engines import ENGINES, unknown_engine, weights_problem
from llmpool.errors import FailedPreconditionError, InvalidArgumentError
from llmpool.models import smollm2_gguf_path

ModelFinder = Callable[[], Path]


@dataclass(frozen=True)
class EngineAdapter:
    """What the agent knows about one engine kind. Default commands keep {host} {port} {model}
    {python} for render() to fill; the weights go in as given."""

    name: str
    # Readiness and liveness path; 200 means ready.
    health_path: str = "/health"
    # Prometheus metrics path; "" when the engine has none (load then comes from gateways).
    metrics_path: str = "/metrics"
    # Polled instead of health_path until the replica is first ready; "" means health_path.
    ready_path: str = ""

    def parse_load(self, text: str) -> EngineLoad:
        """The load in one scrape of this engine's metrics text (ValueError if not Prometheus)."""
        return parse_engine_metrics(self.name, text)

    def default_command(self, weights: str, find_model: ModelFinder) -> tuple[str, ...]:
        """The argv a template with no command runs, before its args. InvalidArgumentError when
        the engine has none; FailedPreconditionError when its model is not on this host."""
        raise InvalidArgumentError(
            f"engine {self.name!r} has no default command: set template.command"
        )

    def fill(self, spec: ReplicaSpec, find_model: ModelFinder = smollm2_gguf_path) -> ReplicaSpec:
        """spec ready to render. An empty command becomes this engine's default command plus
        spec.args, probed on this engine's own paths (the template's paths are for commands it
        names itself). find_model locates the bundled model of engines that have one."""
        if spec.command:
            uses_own_health = spec.health_path == self.health_path
            return dataclasses.replace(spec, ready_path=self.ready_path if uses_own_health else "")
        if ENGINES[self.name].needs_weights and not spec.weights:
            raise InvalidArgumentError(f"replica {spec.replica_id}: {weights_problem(self.name)}")
        try:
            command = self.default_command(spec.weights, find_model)
        except FailedPreconditionError as exc:
            raise FailedPreconditionError(
                f"replica {spec.replica_id}: engine {self.name!r} with the default command: {exc}"
            ) from exc
        return dataclasses.replace(
            spec,
            command=command + spec.args,
            health_path=self.health_path,
            metrics_path=self.metrics_path,
            ready_path=self.ready_path,
        )


@dataclass(frozen=True)
class SimAdapter(EngineAdapter):
    """llm-pool's simulated engine; speaks vLLM's metric names."""

    def default_command(self, weights: str, find_model: ModelFinder) -> tuple[str, ...]:
        return (
            "{python}", "-m", "llmpool.cli", "sim-engine",
            "--host", "{host}", "--port", "{port}", "--model", "{model}",
        )  # fmt: skip


@dataclass(frozen=True)
class LlamaCppPythonAdapter(EngineAdapter):
    """llama-cpp-python's llama_cpp.server on a GGUF: template.weights, else the bundled SmolLM2."""

    def default_command(self, weights: str, find_model: ModelFinder) -> tuple[str, ...]:
        model = Path(weights) if weights else find_model()
        try:
            # The pooling override key is per architecture ("llama.pooling_type" for SmolLM2).
            architecture = gguf_architecture(model)
        except GgufError as exc:
            raise FailedPreconditionError(
                f"template.weights must be a local GGUF file: {exc}"
            ) from exc
        return (
            "{python}", "-m", "llama_cpp.server", "--model", str(model),
            "--host", "{host}", "--port", "{port}", "--model_alias", "{model}",
            # By default llama_cpp.server ends a running stream with [DONE] as soon as another
            # request waits for the model: in a pool that silently truncates streams.
            "--interrupt_requests", "false",
            # One replica serves chat and /v1/embeddings; mean pooling gives one vector per input
            # (SmolLM2's GGUF says no pooling, so it would return one vector per token).
            "--embedding", "true",
            "--kv_overrides", f"{architecture}.pooling_type=int:1",
        )  # fmt: skip


@dataclass(frozen=True)
class LlamaServerAdapter(EngineAdapter):
    """llama.cpp's llama-server binary (on PATH) with its Prometheus endpoint on."""

    def default_command(self, weights: str, find_model: ModelFinder) -> tuple[str, ...]:
        # A hub repo ("ggml-org/gemma-3-1b-it-GGUF[:Q4_K_M]") is fetched by llama-server itself.
        source = "-m" if _is_local_file(weights) else "-hf"
        return (
            "llama-server", source, weights, "--host", "{host}", "--port", "{port}",
            "--alias", "{model}", "--metrics",
        )  # fmt: skip


@dataclass(frozen=True)
class VllmAdapter(EngineAdapter):
    """vLLM's OpenAI-compatible server (`vllm serve` on PATH)."""

    def default_command(self, weights: str, find_model: ModelFinder) -> tuple[str, ...]:
        return (
            "vllm", "serve", weights, "--host", "{host}", "--port", "{port}",
            "--served-model-name", "{model}",
        )  # fmt: skip


@dataclass(frozen=True)
class SglangAdapter(EngineAdapter):
    """SGLang's server (python3 on PATH must import sglang), metrics switched on."""

    def default_command(self, weights: str, find_model: ModelFinder) -> tuple[str, ...]:
        return (
            "python3", "-m", "sglang.launch_server", "--model-path", weights,
            "--host", "{host}", "--port", "{port}", "--served-model-name", "{model}",
            "--enable-metrics",
        )  # fmt: skip


@dataclass(frozen=True)
class TgiAdapter(EngineAdapter):
    """Hugging Face TGI's launcher (on PATH); it answers whatever model name a request gives."""

    def default_command(self, weights: str, find_model: ModelFinder) -> tuple[str, ...]:
        return (
            "text-generation-launcher", "--model-id", weights,
            "--hostname", "{host}", "--port", "{port}",
            # The shard socket defaults to one path per host: two replicas would share it.
            "--shard-uds-path", "/tmp/llmpool-tgi-{port}",
        )  # fmt: skip


def _is_local_file(weights: str) -> bool:
    return weights.endswith(".gguf") or weights.startswith(("/", "./", "../"))


ADAPTERS: Mapping[str, EngineAdapter] = MappingProxyType(
    {
        "sim": SimAdapter("sim"),
        # llama_cpp.server: /v1/models waits for the model lock (seconds behind a generation),
        # so a probe there fails while the replica is busy. The app loads the model before it
        # listens, and /docs never takes the lock: answering there means ready. No /metrics.
        "llamacpp": LlamaCppPythonAdapter("llamacpp", health_path="/docs", metrics_path=""),
        # /health answers 503 while the model loads.
        "llama-server": LlamaServerAdapter("llama-server"),
        # The API server listens only once the engine is built: /health 200 means ready.
        "vllm": VllmAdapter("vllm"),
        # /health answered 200 before warm-up in older releases; /health_generate runs (or waits
        # for) a real generation, so it is the readiness check and /health the cheap liveness.
        "sglang": SglangAdapter("sglang", ready_path="/health_generate"),
        # The router starts after the shards have warmed up; /health 503 when they fail.
        "tgi": TgiAdapter("tgi"),
        "openai": EngineAdapter("openai", health_path="/v1/models", metrics_path=""),
    }
)


def adapter_for(engine: str) -> EngineAdapter:
    """The adapter of an engine kind; InvalidArgumentError naming the known kinds otherwise."""
    adapter = ADAPTERS.get(engine)
    if adapter is None:
        raise InvalidArgumentError(str(unknown_engine(engine)))
    return adapter
