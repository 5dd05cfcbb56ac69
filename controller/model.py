"""Domain types of the desired state: pools, templates, backends, replica assignments."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmpool.specs import Autoscale, Template

__all__ = [
    "Assignment",
    "Autoscale",
    "BackendSpec",
    "PoolSpec",
    "RouteRule",
    "SplitArm",
    "Template",
]


@dataclass(frozen=True)
class RouteRule:
    """A content rule (mirrors llmpool.v1.RouteRule): every set condition must hold."""

    target: str
    min_prompt_chars: int = 0
    max_prompt_chars: int = 0
    prompt_regex: str = ""
    header: str = ""
    header_regex: str = ""
    metadata_key: str = ""
    metadata_regex: str = ""


@dataclass(frozen=True)
class SplitArm:
    """One arm of an A/B split: a target pool and its relative weight."""

    target: str
    weight: int = 1


@dataclass(frozen=True)
class PoolSpec:
    """One model name served to clients."""

    name: str
    policy: str = "round_robin"
    policy_params: dict[str, str] = field(default_factory=dict)
    replicas: int = 0
    template: Template | None = None
    description: str = ""
    rules: tuple[RouteRule, ...] = ()
    splits: tuple[SplitArm, ...] = ()
    split_header: str = ""
    # Passive health in the gateways (types.proto Pool).
    ttfb_timeout_s: float = 30.0
    eject_after_failures: int = 5
    eject_base_s: float = 5.0
    autoscale: Autoscale | None = None
    ttft_slo_ms: float = 0.0
    # Pools that serve, in order, when this one cannot or is saturated (types.proto Pool).
    fallbacks: tuple[str, ...] = ()
    spill_waiting: float = 0.0
    # Gateways pick members in their own zone first (types.proto Pool.prefer_zone).
    prefer_zone: bool = False
    # Owning tenant ("" shared), limits over every gateway, redaction profile for backends,
    # fair-queue bound (types.proto Pool).
    tenant: str = ""
    rpm: int = 0
    tpm: int = 0
    redaction: dict[str, str] = field(default_factory=dict)
    max_in_flight_per_member: int = 0

    def route_targets(self) -> set[str]:
        """Pools this pool's rules, split arms and fallbacks send requests to."""
        return (
            {r.target for r in self.rules} | {a.target for a in self.splits} | set(self.fallbacks)
        )


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
    # US dollars per million tokens (the cost policy; cost accounting later).
    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
    # A credential name (never the key: gateways resolve it) and Azure's api-version.
    credential: str = ""
    api_version: str = ""
    cached_input_cost_per_mtok: float = 0.0
    tenant: str = ""


@dataclass(frozen=True)
class Assignment:
    """A managed replica the controller placed (or adopted) on an agent.

    desired=False while it is being drained away. created_at is wall-clock seconds, so it
    survives a controller restart. gpu_indices: the agent's GPUs (its host numbers, as it
    offers them) the replica holds; () for CPU replicas and adopted ones."""

    replica_id: str
    pool: str
    agent_id: str
    desired: bool = True
    created_at: float = 0.0
    gpu_indices: tuple[int, ...] = ()
