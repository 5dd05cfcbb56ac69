"""The engine kinds every service knows by name: one table that config validation, the controller
and the agent read, and what a template of each must give to be started."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class EngineKind:
    name: str
    # Its default command loads template.weights: it has no model of its own.
    needs_weights: bool = False
    # It has no default command: the template's command is the only way to start it.
    needs_command: bool = False


# "llamacpp" is llama-cpp-python's llama_cpp.server; "llama-server" is llama.cpp's own binary;
# "openai" is any OpenAI-compatible server started by the template's command. The agent's
# adapters (agent/engines.py) cover every name here; a test keeps them equal.
ENGINES: Mapping[str, EngineKind] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            EngineKind("sim"),
            EngineKind("llamacpp"),
            EngineKind("llama-server", needs_weights=True),
            EngineKind("vllm", needs_weights=True),
            EngineKind("sglang", needs_weights=True),
            EngineKind("tgi", needs_weights=True),
            EngineKind("openai", needs_command=True),
        )
    }
)


def unknown_engine(engine: str) -> str | None:
    """Why engine is not a kind llm-pool knows; None when it is."""
    if engine in ENGINES:
        return None
    return f"unknown engine {engine!r}: known engines are {', '.join(ENGINES)}"


def weights_problem(engine: str) -> str:
    return (
        f"engine {engine!r} needs template.weights (a local path or a hub id of the model to"
        " load) when template.command is empty"
    )


def launch_problem(engine: str, command: Sequence[str], weights: str) -> str | None:
    """Why a template of engine with this command and weights cannot be started; None when it
    can. The controller (at AddPool, UpdatePool and config load) and the agent both ask."""
    kind = ENGINES.get(engine)
    if kind is None:
        return unknown_engine(engine)
    if command:
        return None
    if kind.needs_command:
        return (
            f"engine {engine!r} has no default command: set template.command to the server's"
            " argv, with {host} {port} {model} where they go"
        )
    if kind.needs_weights and not weights:
        return weights_problem(engine)
    return None


def template_problem(
    engine: str, command: Sequence[str], weights: str, args: Sequence[str]
) -> str | None:
    """launch_problem, and weights or args given next to a command (both only shape the
    engine's default command, so a command makes them dead letters)."""
    problem = launch_problem(engine, command, weights)
    if problem is not None or not command:
        return problem
    unused = [name for name, value in (("weights", weights), ("args", args)) if value]
    if unused:
        fields = " and ".join(f"template.{name}" for name in unused)
        return (
            f"{fields} only shape the engine's default command; with template.command set,"
            " write them into the command (or clear template.command)"
        )
    return None
