"""Live status of one supervised replica in the agent's own types (protobuf only at the edge)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ReplicaState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    pool: str
    engine: str
    served_model: str
    state: ReplicaState
    url: str
    healthy: bool
    running: float
    waiting: float
    # 0..1, or -1 when the engine does not say.
    kv_usage: float
    latency_ms: float
    restarts: int
    message: str
    pid: int
    # An engine the agent watches but did not start (--attach).
    attached: bool = False
    # Prefix cache hit rate over recent requests, 0..1, or -1 when the engine does not say.
    prefix_cache_hit_rate: float = -1.0
