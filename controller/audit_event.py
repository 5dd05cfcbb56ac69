"""One audit record and one query over them (stored by Store, written by AuditLog)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuditEvent:
    """Mirrors llmpool.v1.AuditEvent. before and after are JSON documents ("" when none)."""

    id: int
    time: float
    # Certificate common name or token name; "anonymous" under --insecure.
    actor: str
    role: str
    # The RPC's name, such as "AddBackend".
    action: str
    # "kind/key", such as "backend/gpu-1", or the full method of a denied call.
    object: str
    # "ok", "denied" (the role may not) or "unauthenticated" (a bad token or certificate).
    outcome: str
    detail: str = ""
    before: str = ""
    after: str = ""


@dataclass(frozen=True)
class AuditQuery:
    since: float = 0.0
    until: float = 0.0
    actor: str = ""
    object: str = ""
    before_id: int = 0
    limit: int = 100
