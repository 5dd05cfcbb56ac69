"""Replica templates: how an agent starts one replica of a pool. The controller stores and
sends them; an agent's ReplicaSpec (agent/template.py) is one with the replica's identity."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Template:
    """How an agent starts one replica of a pool (mirrors llmpool.v1.ReplicaTemplate)."""

    engine: str = "sim"
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # "" means the engine's own paths (the agent's engine adapter knows them).
    health_path: str = ""
    metrics_path: str = ""
    ready_timeout_s: float = 60.0
    served_model: str = ""
    gpus: int = 0
    cpu_slots: int = 1
    # Shape the engine's default command only: the model it loads and arguments appended.
    weights: str = ""
    args: tuple[str, ...] = ()
    # What a token these replicas serve costs, US dollars per million (the cost policy).
    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
