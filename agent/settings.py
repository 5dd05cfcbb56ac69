"""Knobs shared by every replica and attached engine on this agent."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.allow import EngineAllowList
from llmpool.backoff import Backoff


def restart_backoff() -> Backoff:
    return Backoff(base=0.5, cap=30.0)


@dataclass
class SupervisorSettings:
    """probe_interval_s may change at run time (the controller's Welcome)."""

    # Address engines bind ({host}) and the host in the URLs the agent reports and probes.
    engine_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    probe_interval_s: float = 1.0
    ready_poll_s: float = 0.25
    probe_timeout_s: float = 2.0
    # Consecutive failed liveness probes before a READY replica is marked unhealthy.
    unhealthy_after: int = 3
    kill_timeout_s: float = 10.0
    # A replica READY this long before it fails restarts with the shortest backoff again.
    stable_s: float = 30.0
    drain_poll_s: float = 0.2
    log_lines: int = 1000
    python: str = sys.executable
    backoff: Callable[[], Backoff] = field(default=restart_backoff)
    # The engine commands this agent runs (agent/allow.py): the built-in engines' by default.
    allow: EngineAllowList = field(default_factory=EngineAllowList)
