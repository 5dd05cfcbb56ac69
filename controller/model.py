"""Domain types of the desired state: pools, templates, backends, replica assignments."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Template:
    """How an agent starts one replica of a pool (mirrors llmpool.v1.ReplicaTemplate)."""

    engine: str = "sim"
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    ready_timeout_s: float = 60.0
    served_model: str = ""
    gpus: int = 0
    cpu_slots: int = 1


@dataclass(frozen=True)
class PoolSpec:
    """One model name served to clients."""

    name: str
    policy: str = "round_robin"
    policy_params: dict[str, str] = field(default_factory=dict)
    replicas: int = 0
    template: Template | None = None
    description: str = ""


@dataclass(frozen=True)
class BackendSpec:
    """A static OpenAI-compatible endpoint; draining: gateways send it nothing new."""

    id: str
    pool: str
    url: str
    weight: int = 1
    enabled: bool = True
    kind: str = "openai"
    zone: str = ""
    upstream_model: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    draining: bool = False


@dataclass(frozen=True)
class Assignment:
    """A managed replica the controller placed (or adopted) on an agent.

    desired=False while it is being drained away. created_at is wall-clock seconds, so it
    survives a controller restart. gpu_indices: the agent's GPUs (numbered 0..n-1 as it
    offers them) the replica holds; () for CPU replicas and adopted ones."""

    replica_id: str
    pool: str
    agent_id: str
    desired: bool = True
    created_at: float = 0.0
    gpu_indices: tuple[int, ...] = ()
