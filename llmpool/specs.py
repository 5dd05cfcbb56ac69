"""Parts of a pool spec shared by the controller and the config file: replica templates (how an
agent starts one replica; an agent's ReplicaSpec, agent/template.py, is one with the replica's
identity) and autoscale policies."""

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
    cached_input_cost_per_mtok: float = 0.0
    # US dollars an hour per running replica (the controller's ledger).
    hourly_cost_usd: float = 0.0


# Autoscale metrics and their default targets (types.proto Autoscale).
AUTOSCALE_METRICS = {"waiting": 2.0, "kv": 0.8, "ttft": 0.0}


@dataclass(frozen=True)
class Autoscale:
    """How an autoscaled pool follows its load (mirrors llmpool.v1.Autoscale)."""

    min_replicas: int = 1
    max_replicas: int = 0
    metric: str = "waiting"
    # 0: the metric's default (AUTOSCALE_METRICS; ttft: the pool's ttft_slo_ms).
    target: float = 0.0
    up_window_s: float = 10.0
    down_window_s: float = 300.0
    up_cooldown_s: float = 30.0
    down_cooldown_s: float = 60.0
    cold_start_timeout_s: float = 120.0

    def target_for(self, ttft_slo_ms: float) -> float:
        if self.target > 0:
            return self.target
        return ttft_slo_ms if self.metric == "ttft" else AUTOSCALE_METRICS.get(self.metric, 0.0)


def autoscale_problem(autoscale: Autoscale, ttft_slo_ms: float, has_template: bool) -> str | None:
    """What is wrong with a pool's autoscale policy, for people; None when nothing is."""
    a = autoscale
    if a.metric not in AUTOSCALE_METRICS:
        return f"autoscale.metric {a.metric!r} is not one of {', '.join(AUTOSCALE_METRICS)}"
    if a.max_replicas < 1:
        return "autoscale.max_replicas must be at least 1"
    if a.min_replicas > a.max_replicas:
        return f"autoscale.min_replicas ({a.min_replicas}) is above max_replicas ({a.max_replicas})"
    if not has_template:
        return "an autoscaled pool needs a template to start replicas from"
    if a.metric == "ttft" and a.target <= 0 and ttft_slo_ms <= 0:
        return "autoscale.metric 'ttft' needs the pool's ttft_slo_ms (or autoscale.target)"
    if a.metric == "kv" and a.target > 1:
        return "autoscale.target for 'kv' is a share of the KV cache: at most 1"
    for name in ("up_window_s", "down_window_s", "up_cooldown_s", "down_cooldown_s", "target"):
        if getattr(a, name) < 0:
            return f"autoscale.{name} must be >= 0"
    if not a.cold_start_timeout_s > 0:
        return "autoscale.cold_start_timeout_s must be > 0"
    return None
