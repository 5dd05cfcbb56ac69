"""Builds the controller's objects once at start-up and holds them in one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from llmpool.clock import Clock
from llmpool.config import Config
from llmpool.status import ReplicaState

from .admin import Admin
from .admin_keys import KeysAdmin
from .agents import AgentRegistry
from .apikeys import KeyBook
from .audit import AuditLog
from .autoscale_loop import Autoscaler
from .backend_capacity import BackendCapacities, Fetch
from .backend_urls import BackendUrlPolicy
from .changes import Changes
from .convert import specs_from_config
from .desired import DesiredState
from .ledger import Ledger
from .metrics import ControllerMetrics
from .prefix_homes import PrefixHomes
from .publisher import SnapshotPublisher
from .quotas import QuotaLoop, Quotas
from .reconcile_loop import ReconcileLoop
from .restart_grace import RestartGrace
from .send_relay import SendRelay
from .snapshot import LiveReplica, Routes, build_routes
from .store import Store
from .tails import LogTails
from .tokens import TokenBook
from .usage import UsageAggregator


@dataclass(frozen=True)
class ControllerParts:
    """The objects behind one controller, wired to each other; the server adds gRPC and runs
    the loops. Tests read them through ControllerServer.parts."""

    clock: Clock
    metrics: ControllerMetrics
    changes: Changes
    store: Store
    desired: DesiredState
    registry: AgentRegistry
    usage: UsageAggregator
    tails: LogTails
    publisher: SnapshotPublisher
    reconciler: ReconcileLoop
    admin: Admin
    audit: AuditLog
    tokens: TokenBook
    grace: RestartGrace
    autoscaler: Autoscaler
    ledger: Ledger
    keys: KeyBook
    quotas: QuotaLoop
    keys_admin: KeysAdmin
    capacities: BackendCapacities
    homes: PrefixHomes
    # Gateways' sends passed on to the other gateways (GatewayService.ShareSends).
    send_relay: SendRelay


async def build_parts(
    *,
    store: Store,
    seed: Config | None,
    clock: Clock,
    metrics: ControllerMetrics,
    lease_s: float,
    report_interval_s: float,
    drain_s: float,
    extra_policies: tuple[str, ...],
    urls: BackendUrlPolicy | None = None,
    restart_grace_s: float | None = None,
    fetch: Fetch | None = None,
) -> ControllerParts:
    """Loads the desired state (seeding an empty store from the config) and builds the rest."""
    changes = Changes()
    desired = DesiredState(store, changes)
    await desired.load(specs_from_config(seed) if seed is not None else None)
    registry = AgentRegistry(clock, lease_s, 3 * lease_s, changes)
    # The agents the store says run our replicas; by default three leases to come back.
    grace = RestartGrace(
        {a.agent_id for a in desired.assignments.values()},
        3 * lease_s if restart_grace_s is None else restart_grace_s,
        clock,
        lambda agent_id: registry.get(agent_id) is not None,
    )

    def running() -> list[tuple[str, str, float]]:
        """Managed replicas whose engine runs now, with their template's hourly cost."""
        found = []
        for a in desired.assignments.values():
            record = registry.get(a.agent_id)
            status = record.replicas.get(a.replica_id) if record is not None else None
            pool = desired.pools.get(a.pool)
            if status is None or pool is None or pool.template is None:
                continue
            if status.state is not ReplicaState.STOPPED:
                found.append((a.pool, a.replica_id, pool.template.hourly_cost_usd))
        return found

    ledger = Ledger(store, clock, metrics, running)
    usage = UsageAggregator(clock, metrics, ttl_s=max(5.0, 5 * report_interval_s), ledger=ledger)

    def live() -> dict[str, LiveReplica]:
        replicas: dict[str, LiveReplica] = {}
        for record in registry.all():
            valid = registry.routable(record.agent_id)
            zone = record.labels.get("zone", "")
            for rid, status in record.replicas.items():
                replicas[rid] = LiveReplica(status, record.agent_id, valid, zone)
        return replicas

    capacities = BackendCapacities(
        fetch or _no_fetch, clock, lambda: desired.backends.values(), changes.notify
    )

    homes = PrefixHomes(clock)

    def build() -> Routes:
        return homes.apply(
            build_routes(
                desired.pools,
                desired.backends,
                desired.assignments,
                live(),
                usage.loads(),
                publisher.gateways(),
                capacities.get(),
            )
        )

    keys = KeyBook(store, on_change=changes.notify)
    await keys.load()
    publisher = SnapshotPublisher(
        build,
        changes.listener(),
        clock,
        metrics,
        provisional=lambda: not grace.settled(),
        key_table=keys,
    )
    quotas = Quotas(keys, clock)
    quota_loop = QuotaLoop(quotas, keys, lambda: desired.pools.values(), publisher, store, clock)
    await quota_loop.load()
    publisher.publish()
    reconciler = ReconcileLoop(
        desired,
        registry,
        changes.listener(),
        clock,
        metrics,
        drain_s,
        usage=usage,
        routing_version=lambda: publisher.version,
        grace=grace,
    )
    autoscaler = Autoscaler(desired, registry, usage, clock, metrics, grace=grace)
    tails = LogTails()
    audit = AuditLog(store, clock)
    tokens = TokenBook(store, clock)
    await tokens.load()
    admin = Admin(
        desired,
        registry,
        reconciler,
        publisher,
        tails,
        audit,
        tokens,
        extra_policies=extra_policies,
        urls=urls,
        grace=grace,
        usage=usage,
        autoscaler=autoscaler,
        ledger=ledger,
    )
    return ControllerParts(
        clock=clock,
        metrics=metrics,
        changes=changes,
        store=store,
        desired=desired,
        registry=registry,
        usage=usage,
        tails=tails,
        publisher=publisher,
        reconciler=reconciler,
        admin=admin,
        audit=audit,
        tokens=tokens,
        grace=grace,
        autoscaler=autoscaler,
        ledger=ledger,
        keys=keys,
        quotas=quota_loop,
        keys_admin=KeysAdmin(keys, quotas, audit, store, quota_loop.flush),
        capacities=capacities,
        homes=homes,
        send_relay=SendRelay(),
    )


async def _no_fetch(url: str) -> tuple[int, bytes]:
    """Where no fetch was given (tests of other parts): nothing answers."""
    raise OSError("no HTTP client")
