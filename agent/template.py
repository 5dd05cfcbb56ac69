"""Replica specs and template substitution of {port} {host} {model} {replica_id} {pool} {python}."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from llmpool.engines import launch_problem
from llmpool.errors import InvalidArgumentError
from llmpool.specs import Template

__all__ = ["Launch", "ReplicaSpec", "render", "substitute", "validate"]

# Only these names are placeholders; other braces (JSON arguments, shell snippets) pass through.
_PLACEHOLDER = re.compile(r"\{(port|host|model|replica_id|pool|python)\}")


@dataclass(frozen=True, kw_only=True)
class ReplicaSpec(Template):
    """What the controller asked to run: one replica of a pool from its template (every field
    of which it has), with the placement's env merged into the template's (placement wins)."""

    replica_id: str
    pool: str
    # A spec made here without paths probes the usual ones; the controller's empty paths are
    # replaced with the engine's own on arrival (agent/convert.py).
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    # Polled until the replica is first ready, when the engine's readiness differs from its
    # liveness (SGLang); "" polls health_path for both.
    ready_path: str = ""

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
    problem = launch_problem(spec.engine, spec.command, spec.weights)
    if problem is not None:
        raise InvalidArgumentError(f"replica {spec.replica_id}: {problem}")
    if spec.ready_timeout_s <= 0:
        raise InvalidArgumentError(f"replica {spec.replica_id}: ready_timeout_s must be > 0")


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replaces the known {placeholders} in text; unknown braces are left alone."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render(spec: ReplicaSpec, host: str, port: int, python: str = sys.executable) -> Launch:
    """The command and env for one start of spec on host:port."""
    if not spec.command:
        raise InvalidArgumentError(
            f"replica {spec.replica_id}: engine {spec.engine!r} has no command;"
            " adapter_for(engine).fill() puts in the engine's default"
        )
    values = {
        "port": str(port),
        "host": host,
        "model": spec.model,
        "replica_id": spec.replica_id,
        "pool": spec.pool,
        "python": python,
    }
    return Launch(
        argv=tuple(substitute(arg, values) for arg in spec.command),
        env={key: substitute(value, values) for key, value in spec.env.items()},
    )
