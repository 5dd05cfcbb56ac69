"""Live status of one replica, as its agent reports it and the controller keeps it (protobuf only
at the edges: llmpool.protoconv converts it to and from llmpool.v1.ReplicaStatus)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ReplicaState(enum.Enum):
    # Not reported (yet): what the controller shows for a replica its agent has not listed.
    UNSPECIFIED = "unspecified"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    pool: str
    engine: str = ""
    served_model: str = ""
    state: ReplicaState = ReplicaState.UNSPECIFIED
    # Base URL of the engine, e.g. "http://127.0.0.1:41234".
    url: str = ""
    healthy: bool = False
    # Requests being decoded, and queued in the engine.
    running: float = 0.0
    waiting: float = 0.0
    # 0..1, or -1 when the engine does not say.
    kv_usage: float = -1.0
    latency_ms: float = 0.0
    restarts: int = 0
    # Why the replica is in its state (last error, exit code); for people.
    message: str = ""
    pid: int = 0
    # An engine the agent watches but did not start (--attach).
    attached: bool = False
    # Prefix cache hit rate over recent requests, 0..1, or -1 when the engine does not say.
    prefix_cache_hit_rate: float = -1.0
    # The engine's KV cache in tokens, tokens per cache block, requests it runs at once, as it
    # says or its command line sets them; 0: unknown.
    cache_tokens: int = 0
    cache_block_size: int = 0
    max_running: int = 0
