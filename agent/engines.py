"""Engine adapters: per engine kind, its default command, readiness path and load parser.

SKELETON written by the lead so that other work can code against adapter_for(); the adapters
helper fills in the real adapters (llama-server, vLLM, SGLang, TGI) and moves the defaults of
agent/template.py here."""

from __future__ import annotations

from dataclasses import dataclass

from agent.engine_metrics import EngineLoad, parse_engine_metrics
from llmpool.engines import ENGINES
from llmpool.errors import InvalidArgumentError


@dataclass(frozen=True)
class EngineAdapter:
    """What the agent needs to know about one engine kind."""

    name: str
    # Readiness and liveness path; 200 means ready.
    health_path: str = "/health"
    # Prometheus metrics path; "" when the engine has none (load then comes from gateways).
    metrics_path: str = "/metrics"

    def parse_load(self, text: str) -> EngineLoad:
        """The load in one scrape of this engine's metrics text (ValueError if not Prometheus)."""
        return parse_engine_metrics(self.name, text)


_ADAPTERS: dict[str, EngineAdapter] = {
    "sim": EngineAdapter("sim"),
    # llama_cpp.server: /v1/models waits for the model lock (seconds behind a generation), so a
    # probe there fails while the replica is busy. The app loads the model before it listens, and
    # /docs never takes the lock: answering there means ready. No /metrics.
    "llamacpp": EngineAdapter("llamacpp", health_path="/docs", metrics_path=""),
    "llama-server": EngineAdapter("llama-server"),
    "vllm": EngineAdapter("vllm"),
    "sglang": EngineAdapter("sglang"),
    "tgi": EngineAdapter("tgi"),
    "openai": EngineAdapter("openai", health_path="/v1/models", metrics_path=""),
}


def adapter_for(engine: str) -> EngineAdapter:
    """The adapter of an engine kind; InvalidArgumentError naming the known kinds otherwise."""
    adapter = _ADAPTERS.get(engine)
    if adapter is None:
        raise InvalidArgumentError(
            f"unknown engine {engine!r}: known engines are {', '.join(ENGINES)}"
        )
    return adapter
