"""Engine kinds every service knows by name, and what a template of each must give to be started."""

from __future__ import annotations

from collections.abc import Sequence

# "llamacpp" is llama-cpp-python's llama_cpp.server; "llama-server" is llama.cpp's own binary;
# "openai" is any OpenAI-compatible server started by the template's command.
ENGINES: tuple[str, ...] = ("sim", "llamacpp", "llama-server", "vllm", "sglang", "tgi", "openai")

# Engines whose default command loads template.weights: they have no model of their own.
WEIGHTS_REQUIRED: frozenset[str] = frozenset({"llama-server", "vllm", "sglang", "tgi"})

# Engines with no default command: the template's command is the only way to start them.
COMMAND_REQUIRED: frozenset[str] = frozenset({"openai"})


def unknown_engine(engine: str) -> str | None:
    """Why engine is not a kind llm-pool knows; None when it is."""
    if engine in ENGINES:
        return None
    return f"unknown engine {engine!r}: known engines are {', '.join(ENGINES)}"


def launch_problem(engine: str, command: Sequence[str], weights: str) -> str | None:
    """Why a template of engine with this command and weights cannot be started; None when it
    can. The controller (at AddPool, UpdatePool and config load) and the agent both ask."""
    unknown = unknown_engine(engine)
    if unknown is not None:
        return unknown
    if command:
        return None
    if engine in COMMAND_REQUIRED:
        return (
            f"engine {engine!r} has no default command: set template.command to the server's"
            " argv, with {host} {port} {model} where they go"
        )
    if engine in WEIGHTS_REQUIRED and not weights:
        return (
            f"engine {engine!r} needs template.weights (a local path or a hub id of the model to"
            " load) when template.command is empty"
        )
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
