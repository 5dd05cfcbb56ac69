"""Admin operations: validated changes to desired state and views of live state."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass

from llmpool.capacity import Capacity
from llmpool.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from llmpool.status import ReplicaStatus

from .agents import AgentRegistry
from .audit import AuditLog
from .audit_event import AuditEvent, AuditQuery
from .auth import LOCAL, Caller
from .autoscale_loop import Autoscaler, AutoscaleView
from .backend_urls import BackendUrlPolicy
from .commands import CancelTailCommand, TailCommand
from .desired import DesiredState
from .ledger import Ledger, UsageRow
from .model import BackendSpec, PoolSpec, Template
from .publisher import SnapshotPublisher
from .reconcile_loop import ReconcileLoop
from .restart_grace import RestartGrace
from .snapshot import healthy_members
from .tails import LogTails
from .tokens import TokenBook, TokenRecord
from .usage import MemberCondition, UsageAggregator
from .validation import (
    check_backend,
    check_name,
    check_not_routed_to,
    check_pool,
    check_pool_routes,
)

log = logging.getLogger(__name__)

MAX_DRAIN_S = 86400.0
MAX_TAIL_LINES = 10_000


@dataclass(frozen=True)
class ReplicaView:
    """One replica as ListReplicas shows it (mirrors llmpool.v1.ReplicaInfo). desired: the
    reconciler wants it running; always False for attached replicas, which it neither starts
    nor stops (status.attached says so)."""

    status: ReplicaStatus
    agent_id: str
    desired: bool


@dataclass(frozen=True)
class PoolStatusView:
    """Mirrors llmpool.v1.PoolStatus; message says why a pool is short of replicas."""

    pool: PoolSpec
    backends: tuple[BackendSpec, ...]
    replicas: tuple[ReplicaView, ...]
    healthy_members: int
    snapshot_version: int
    message: str = ""
    member_conditions: tuple[MemberCondition, ...] = ()
    autoscale: AutoscaleView | None = None


@dataclass(frozen=True)
class AgentSummary:
    """One agent as ListAgents shows it (mirrors llmpool.v1.AgentInfo)."""

    agent_id: str
    hostname: str
    labels: dict[str, str]
    capacity: Capacity
    connected: bool
    # Seconds since its last message.
    last_seen_s: float
    # Managed replicas placed on it plus the engines it watches (attached).
    replicas: int


class Admin:
    def __init__(
        self,
        desired: DesiredState,
        registry: AgentRegistry,
        reconciler: ReconcileLoop,
        publisher: SnapshotPublisher,
        tails: LogTails,
        audit: AuditLog,
        tokens: TokenBook,
        extra_policies: Collection[str] = (),
        urls: BackendUrlPolicy | None = None,
        grace: RestartGrace | None = None,
        usage: UsageAggregator | None = None,
        autoscaler: Autoscaler | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._ledger = ledger
        self._autoscaler = autoscaler
        self._usage = usage
        self._grace = grace
        self._urls = urls or BackendUrlPolicy()
        self._audit = audit
        self._tokens = tokens
        # Policy names only gateways know (their --policy-plugin): accepted unchecked.
        self._extra_policies = tuple(extra_policies)
        self._desired = desired
        self._registry = registry
        self._reconciler = reconciler
        self._publisher = publisher
        self._tails = tails

    # --- backends ---

    def list_backends(self, pool: str = "") -> list[BackendSpec]:
        found = sorted(self._desired.backends.values(), key=lambda b: b.id)
        return [b for b in found if not pool or b.pool == pool]

    def get_backend(self, backend_id: str) -> BackendSpec:
        backend = self._desired.backends.get(backend_id)
        if backend is None:
            raise NotFoundError(f"backend {backend_id!r} not found: ListBackends shows the ids")
        return backend

    async def add_backend(self, spec: BackendSpec, by: Caller = LOCAL) -> BackendSpec:
        # weight and enabled have presence: unset they are 1 and true, given they count.
        spec = dataclasses.replace(spec, draining=False)
        check_backend(spec)
        spec = dataclasses.replace(spec, url=await self._urls.check(spec.url))
        async with self._desired.lock:
            if spec.id in self._desired.backends:
                raise AlreadyExistsError(
                    f"backend {spec.id!r} already exists: use UpdateBackend to change it"
                )
            if spec.pool not in self._desired.pools:
                await self._desired.put_pool(PoolSpec(name=spec.pool))
                log.info("pool created for backend", extra={"pool": spec.pool})
            await self._desired.put_backend(spec)
        log.info("backend added", extra={"backend_id": spec.id, "pool": spec.pool})
        await self._audit.record(by, "AddBackend", f"backend/{spec.id}", after=spec)
        return spec

    async def update_backend(
        self, spec: BackendSpec, paths: set[str], by: Caller = LOCAL
    ) -> BackendSpec:
        if "url" in paths:
            spec = dataclasses.replace(spec, url=await self._urls.check(spec.url))
        async with self._desired.lock:
            current = self.get_backend(spec.id)
            updated = dataclasses.replace(current, **{p: getattr(spec, p) for p in paths})
            check_backend(updated)
            if updated.pool not in self._desired.pools:
                await self._desired.put_pool(PoolSpec(name=updated.pool))
            await self._desired.put_backend(updated)
        log.info("backend updated", extra={"backend_id": spec.id, "fields": sorted(paths)})
        await self._audit.record(
            by, "UpdateBackend", f"backend/{spec.id}", before=current, after=updated
        )
        return updated

    async def delete_backend(self, backend_id: str, by: Caller = LOCAL) -> None:
        async with self._desired.lock:
            current = self.get_backend(backend_id)
            await self._desired.delete_backend(backend_id)
        log.info("backend deleted", extra={"backend_id": backend_id})
        await self._audit.record(by, "DeleteBackend", f"backend/{backend_id}", before=current)

    async def set_backend_enabled(
        self, backend_id: str, enabled: bool, by: Caller = LOCAL
    ) -> BackendSpec:
        async with self._desired.lock:
            # Enabling also ends a drain: the person wants it to take traffic again.
            current = self.get_backend(backend_id)
            updated = dataclasses.replace(current, enabled=enabled, draining=False)
            await self._desired.put_backend(updated)
        log.info(
            "backend enabled" if enabled else "backend disabled", extra={"backend_id": backend_id}
        )
        await self._audit.record(
            by, "SetBackendEnabled", f"backend/{backend_id}", before=current, after=updated
        )
        return updated

    async def drain(self, member_id: str, drain_s: float, by: Caller = LOCAL) -> str:
        if not 0 <= drain_s <= MAX_DRAIN_S:
            raise InvalidArgumentError(f"drain_s must be from 0 to {MAX_DRAIN_S:g} seconds")
        async with self._desired.lock:
            backend = self._desired.backends.get(member_id)
            if backend is not None:
                draining = dataclasses.replace(backend, draining=True)
                await self._desired.put_backend(draining)
                log.info("backend draining", extra={"backend_id": member_id})
                await self._audit.record(
                    by, "DrainBackend", f"backend/{member_id}", before=backend, after=draining
                )
                return (
                    f"backend {member_id!r} is draining: gateways send it nothing new; "
                    "SetBackendEnabled(enabled=true) undoes it"
                )
            assignment = self._desired.assignments.get(member_id)
            self._refuse_attached(
                member_id,
                assignment is None,
                "stop it where it runs, or remove the agent's --attach flag to stop routing to it",
            )
            if assignment is None:
                raise NotFoundError(
                    f"no backend or replica {member_id!r}: "
                    "ListBackends and ListReplicas show the ids"
                )
            await self._reconciler.stop(member_id, assignment.agent_id, drain_s, "admin drain")
        await self._audit.record(
            by, "DrainBackend", f"replica/{member_id}", detail=f"drain {drain_s:g}s"
        )
        return (
            f"replica {member_id!r} is draining and stops after {drain_s:g}s; "
            "a replacement starts if its pool is below its replica count"
        )

    # --- pools ---

    @property
    def pools(self) -> Mapping[str, PoolSpec]:
        return self._desired.pools

    def list_pools(self) -> list[PoolSpec]:
        return [self._desired.pools[n] for n in sorted(self._desired.pools)]

    def get_pool(self, name: str) -> PoolSpec:
        pool = self._desired.pools.get(name)
        if pool is None:
            raise NotFoundError(f"pool {name!r} not found: ListPools shows the names")
        return pool

    async def create_pool(self, spec: PoolSpec, by: Caller = LOCAL) -> PoolSpec:
        check_pool(spec, self._extra_policies)
        async with self._desired.lock:
            if spec.name in self._desired.pools:
                raise AlreadyExistsError(
                    f"pool {spec.name!r} already exists: use UpdatePool or ScalePool to change it"
                )
            check_pool_routes(spec, self._desired.pools)
            await self._desired.put_pool(spec)
        log.info("pool created", extra={"pool": spec.name, "replicas": spec.replicas})
        await self._audit.record(by, "CreatePool", f"pool/{spec.name}", after=spec)
        return spec

    async def update_pool(self, spec: PoolSpec, paths: set[str], by: Caller = LOCAL) -> PoolSpec:
        async with self._desired.lock:
            current = self.get_pool(spec.name)
            changes = {p: getattr(spec, p) for p in paths if "." not in p}
            sub = {p.split(".", 1)[1] for p in paths if p.startswith("template.")}
            if sub and "template" not in changes:
                base = current.template or Template()
                given = spec.template or Template()
                changes["template"] = dataclasses.replace(
                    base, **{f: getattr(given, f) for f in sub}
                )
            updated = check_pool(dataclasses.replace(current, **changes), self._extra_policies)
            check_pool_routes(updated, self._desired.pools)
            await self._desired.put_pool(updated)
        relearn = (updated.policy, updated.policy_params) != (current.policy, current.policy_params)
        if relearn and self._usage is not None:
            # What gateways learned of the members (caches, prefill speed, prompts they lost)
            # was learned under the old policy or its params: the new one starts afresh, as
            # it does on every gateway.
            self._usage.forget_learned(self._pool_member_ids(spec.name))
        log.info("pool updated", extra={"pool": spec.name, "fields": sorted(paths)})
        await self._audit.record(
            by, "UpdatePool", f"pool/{spec.name}", before=current, after=updated
        )
        return updated

    def _pool_member_ids(self, pool: str) -> set[str]:
        """The ids of the pool's static backends, managed replicas and attached replicas."""
        ids = {b.id for b in self._desired.backends.values() if b.pool == pool}
        ids.update(a.replica_id for a in self._desired.assignments.values() if a.pool == pool)
        for record in self._registry.all():
            ids.update(rid for rid, s in record.replicas.items() if s.pool == pool)
        return ids

    async def delete_pool(self, name: str, by: Caller = LOCAL) -> None:
        async with self._desired.lock:
            current = self.get_pool(name)
            check_not_routed_to(name, self._desired.pools)
            await self._desired.delete_pool(name)
        # A pool made again under this name starts without the old one's start failures.
        self._registry.start_failures.pop(name, None)
        log.info("pool deleted", extra={"pool": name})
        await self._audit.record(by, "DeletePool", f"pool/{name}", before=current)

    async def scale_pool(self, name: str, replicas: int, by: Caller = LOCAL) -> PoolSpec:
        async with self._desired.lock:
            current = self.get_pool(name)
            auto = current.autoscale
            if auto is not None and not auto.min_replicas <= replicas <= auto.max_replicas:
                # The autoscaler would move it back within a second: say so instead.
                raise FailedPreconditionError(
                    f"pool {name!r} is autoscaled between {auto.min_replicas} and "
                    f"{auto.max_replicas} replicas; scale within that, or change or remove its "
                    "autoscale policy (UpdatePool, path autoscale)"
                )
            updated = check_pool(
                dataclasses.replace(current, replicas=replicas), self._extra_policies
            )
            await self._desired.put_pool(updated)
        log.info("pool scaled", extra={"pool": name, "replicas": replicas})
        await self._audit.record(by, "ScalePool", f"pool/{name}", before=current, after=updated)
        return updated

    # --- tokens and audit ---

    async def create_token(
        self, name: str, role: str, ttl_s: float, tenant: str = "", by: Caller = LOCAL
    ) -> tuple[TokenRecord, str]:
        record, token = await self._tokens.create(name, role, ttl_s, tenant)
        await self._audit.record(by, "CreateToken", f"token/{record.id}", after=_public(record))
        return _public(record), token

    def list_tokens(self) -> list[TokenRecord]:
        return [_public(r) for r in self._tokens.list()]

    async def revoke_token(self, token_id: str, by: Caller = LOCAL) -> TokenRecord:
        record = _public(await self._tokens.revoke(token_id))
        await self._audit.record(by, "RevokeToken", f"token/{token_id}", before=record)
        return record

    async def audit_events(self, query: AuditQuery) -> list[AuditEvent]:
        return await self._audit.query(query)

    async def usage(self, since: float, until: float, pool: str = "") -> list[UsageRow]:
        for name, value in (("since", since), ("until", until)):
            if not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"{name} must be unix seconds >= 0 (0: unbounded)")
        if since and until and until < since:
            raise InvalidArgumentError("until is before since")
        if pool:
            check_name("pool", pool)
        if self._ledger is None:
            raise FailedPreconditionError("this controller keeps no ledger")
        return await self._ledger.usage(since, until, pool)

    def pool_status(self, name: str) -> PoolStatusView:
        route = self._publisher.routes.get(name)
        member_ids = {m.id for m in route.members} if route is not None else set()
        return PoolStatusView(
            autoscale=self._autoscaler.status(name) if self._autoscaler is not None else None,
            member_conditions=(
                tuple(self._usage.conditions(member_ids)) if self._usage is not None else ()
            ),
            pool=self.get_pool(name),
            backends=tuple(self._desired.pool_backends(name)),
            replicas=tuple(self.list_replicas(name)),
            healthy_members=healthy_members(self._publisher.routes.get(name)),
            snapshot_version=self._publisher.version,
            message="; ".join(
                m
                for m in (
                    self._reconciler.unplaced.get(name, ""),
                    self._registry.start_failures.get(name, ""),
                    self._grace.message() if self._grace is not None else "",
                )
                if m
            ),
        )

    # --- live state ---

    def list_agents(self) -> list[AgentSummary]:
        registry = self._registry
        # One pass over replicas, not one per agent: linear in agents plus replicas.
        per_agent = Counter(a.agent_id for a in self._desired.assignments.values())
        per_agent.update(v.agent_id for v in self._attached_views())
        views = []
        for r in registry.all():
            views.append(
                AgentSummary(
                    agent_id=r.agent_id,
                    hostname=r.hostname,
                    labels=r.labels,
                    capacity=r.capacity,
                    connected=r.connected,
                    last_seen_s=registry.silent_s(r),
                    replicas=per_agent[r.agent_id],
                )
            )
        return views

    def _refuse_attached(self, replica_id: str, unmanaged: bool, why: str) -> None:
        found = self._registry.find_replica(replica_id)
        if unmanaged and found is not None and found[1].attached:
            raise FailedPreconditionError(
                f"replica {replica_id!r} is attached: agent {found[0]!r} watches it but did not "
                f"start it; {why}"
            )

    def _attached_views(self, pool: str = "") -> list[ReplicaView]:
        """Attached replicas of agents not lost; those of a missing pool say so (not routed)."""
        views = []
        for record in self._registry.all():
            if self._registry.silent_s(record) >= self._registry.lost_after_s:
                continue
            for rid in sorted(record.replicas):
                status = record.replicas[rid]
                if not status.attached or rid in self._desired.assignments:
                    continue
                if pool and status.pool != pool:
                    continue
                if status.pool not in self._desired.pools:
                    status = dataclasses.replace(
                        status,
                        message=f"pool {status.pool!r} does not exist: it is not routed until "
                        "CreatePool makes it" + (f"; {status.message}" if status.message else ""),
                    )
                views.append(ReplicaView(status, record.agent_id, desired=False))
        return views

    def list_replicas(self, pool: str = "") -> list[ReplicaView]:
        """Managed replicas (by assignment) and attached ones, by replica id."""
        views = self._attached_views(pool)
        for a in sorted(self._desired.assignments.values(), key=lambda a: a.replica_id):
            if pool and a.pool != pool:
                continue
            record = self._registry.get(a.agent_id)
            status = record.replicas.get(a.replica_id) if record is not None else None
            if status is None:
                status = ReplicaStatus(
                    replica_id=a.replica_id, pool=a.pool, message="not reported by its agent yet"
                )
            views.append(ReplicaView(status, a.agent_id, a.desired))
        return sorted(views, key=lambda v: v.status.replica_id)

    async def tail_logs(self, replica_id: str, lines: int, follow: bool) -> AsyncIterator[str]:
        """Lines from the replica's agent; tells the agent to stop when the caller goes away."""
        check_name("replica_id", replica_id)
        if lines > MAX_TAIL_LINES:
            raise InvalidArgumentError(f"lines must be at most {MAX_TAIL_LINES}")
        assignment = self._desired.assignments.get(replica_id)
        self._refuse_attached(
            replica_id, assignment is None, "it has no logs here; read them where it runs"
        )
        found = self._registry.find_replica(replica_id)
        agent_id = assignment.agent_id if assignment else (found[0] if found else None)
        if agent_id is None:
            raise NotFoundError(f"replica {replica_id!r} not found: ListReplicas shows the ids")
        tail = self._tails.open(agent_id)
        done = False
        try:
            sent = self._registry.send(
                agent_id, TailCommand(tail.request_id, replica_id, lines or 100, follow)
            )
            if not sent:
                done = True
                raise UnavailableError(
                    f"agent {agent_id!r} of replica {replica_id!r} is not connected; "
                    "try again when it is (ListAgents shows it)"
                )
            while True:
                chunk = await tail.chunks.get()
                if chunk is None:
                    done = True
                    raise UnavailableError(f"agent {agent_id!r} disconnected while tailing logs")
                for line in chunk.lines:
                    yield line
                if chunk.error:
                    done = True
                    raise UnavailableError(f"agent {agent_id!r} cannot tail logs: {chunk.error}")
                if chunk.done:
                    done = True
                    return
        finally:
            self._tails.close(tail.request_id)
            if not done:
                self._registry.send(agent_id, CancelTailCommand(tail.request_id))


def _public(record: TokenRecord) -> TokenRecord:
    """The record without its hash: what admin answers and audit events show."""
    return dataclasses.replace(record, secret_sha256="")
