"""The audit log: every admin change and every refused call, in the store and as a log line."""

from __future__ import annotations

import logging
from typing import Any

from llmpool.clock import Clock
from llmpool.protoconv import to_json

from .audit_event import AuditEvent, AuditQuery
from .auth import Caller
from .store import Store

log = logging.getLogger("llmpool.audit")

# Events kept in the store; the oldest go first. Log lines keep the full history elsewhere.
KEEP_EVENTS = 100_000
MAX_LIMIT = 1000


def as_json(value: Any) -> str:
    """A dataclass (or None) as the JSON document an event keeps of it."""
    if value is None:
        return ""
    return to_json(value).decode()


class AuditLog:
    def __init__(self, store: Store | None, clock: Clock, keep: int = KEEP_EVENTS) -> None:
        self._store = store
        self._clock = clock
        self._keep = keep

    async def record(
        self,
        caller: Caller,
        action: str,
        obj: str,
        outcome: str = "ok",
        *,
        detail: str = "",
        before: Any = None,
        after: Any = None,
    ) -> AuditEvent:
        event = AuditEvent(
            id=0,
            time=self._clock.wall(),
            actor=caller.identity,
            role=caller.role,
            action=action,
            object=obj,
            outcome=outcome,
            detail=detail,
            before=as_json(before),
            after=as_json(after),
        )
        if self._store is not None:
            event_id = await self._store.add_audit_event(event, self._keep)
            event = AuditEvent(**{**event.__dict__, "id": event_id})
        log.info(
            "audit",
            extra={
                "audit_id": event.id,
                "actor": event.actor,
                "role": event.role,
                "via": caller.via,
                "action": event.action,
                "object": event.object,
                "outcome": event.outcome,
                "detail": event.detail,
                "before": event.before,
                "after": event.after,
            },
        )
        return event

    async def query(self, q: AuditQuery) -> list[AuditEvent]:
        if self._store is None:
            return []
        limit = q.limit if 0 < q.limit <= MAX_LIMIT else (MAX_LIMIT if q.limit else 100)
        return await self._store.audit_events(AuditQuery(**{**q.__dict__, "limit": limit}))
