"""Commands the controller sends to agents, in its own types (the agent registry converts them:
controller/convert.py). Each mirrors its llmpool.v1 message; the edge adds command ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import Template


@dataclass(frozen=True)
class StartCommand:
    """Run one replica of pool from template; env (CUDA_VISIBLE_DEVICES) is the placement's."""

    replica_id: str
    pool: str
    template: Template
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StopCommand:
    """Drain for at most drain_s (0: at once), then stop; a shorter one ends a drain early."""

    replica_id: str
    drain_s: float


@dataclass(frozen=True)
class TailCommand:
    """Send the last `lines` log lines of a replica, then new ones while `follow`."""

    request_id: str
    replica_id: str
    lines: int
    follow: bool


@dataclass(frozen=True)
class CancelTailCommand:
    request_id: str


AgentCommand = StartCommand | StopCommand | TailCommand | CancelTailCommand
