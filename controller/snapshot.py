"""Pure routing-table builder (desired + live + usage -> a ModelRoute per model) and diff.

Routes and members are domain types that mirror llmpool.v1.ModelRoute and Member; the gateway
service converts them (llmpool.protoconv). A member takes every field of the same name from
its backend, or from its replica's status and its pool's template, so a field added to both
sides reaches gateways with no line here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmpool.engine_capacity import UNKNOWN, EngineCapacity
from llmpool.protoconv import shared_fields
from llmpool.status import ReplicaState, ReplicaStatus

from .model import Assignment, BackendSpec, PoolSpec, RouteRule, SplitArm, Template
from .usage import MemberLoad

_NO_LOAD = MemberLoad()


@dataclass(frozen=True)
class RouteMember:
    """One place a model's requests can go, as gateways get it (mirrors llmpool.v1.Member)."""

    id: str
    url: str
    weight: int = 1
    healthy: bool = True
    draining: bool = False
    zone: str = ""
    kind: str = "openai"
    # Model name to send upstream; "" means the pool's.
    upstream_model: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    running: float = 0.0
    waiting: float = 0.0
    # 0..1; negative when unknown.
    kv_usage: float = -1.0
    prefix_cache_hit_rate: float = -1.0
    # Summed over every gateway's latest report.
    in_flight: float = 0.0
    latency_ms: float = 0.0
    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
    credential: str = ""
    api_version: str = ""
    cached_input_cost_per_mtok: float = 0.0
    # A static backend (redaction applies to those).
    backend: bool = False
    # The engine's capacity as its agent reports it (a static backend's: as its engine said,
    # BackendCapacities); 0: unknown.
    cache_tokens: int = 0
    cache_block_size: int = 0
    max_running: int = 0
    # The cache gateways learned it has (lower median, UsageAggregator), and the prefill speed
    # they learned there, seconds a token.
    learned_cache_tokens: int = 0
    learned_prefill_s_per_token: float = 0.0
    # Prompt prefixes gateways found it no longer held (UsageAggregator), latest last.
    missed_prefixes: tuple[int, ...] = ()
    # Prompt prefixes gateways sent it lately, and their prompts' tokens (UsageAggregator).
    sent_prefixes: tuple[int, ...] = ()
    sent_prefix_tokens: tuple[int, ...] = ()
    sent_prefix_senders: tuple[int, ...] = ()
    # Prompt prefixes whose home it is (prefix_homes.py; several gateways only).
    home_prefixes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelRoute:
    """Everything a gateway needs to route one model (mirrors llmpool.v1.ModelRoute)."""

    model: str
    policy: str
    policy_params: Mapping[str, str] = field(default_factory=dict)
    members: tuple[RouteMember, ...] = ()
    rules: tuple[RouteRule, ...] = ()
    splits: tuple[SplitArm, ...] = ()
    split_header: str = ""
    ttfb_timeout_s: float = 30.0
    eject_after_failures: int = 5
    eject_base_s: float = 5.0
    # Seconds gateways hold a request while the pool has no member (a pool scaled to zero).
    hold_s: float = 0.0
    fallbacks: tuple[str, ...] = ()
    spill_waiting: float = 0.0
    prefer_zone: bool = False
    ttft_slo_ms: float = 0.0
    tenant: str = ""
    rpm: int = 0
    tpm: int = 0
    redaction: Mapping[str, str] = field(default_factory=dict)
    max_in_flight_per_member: int = 0
    gateways: int = 0


Routes = dict[str, ModelRoute]


def hold_s(pool: PoolSpec) -> float:
    """How long gateways hold a request for a pool with no member: a pool the autoscaler may
    take to zero gets its cold start; any other answers 503 at once."""
    a = pool.autoscale
    return a.cold_start_timeout_s if a is not None and a.min_replicas == 0 else 0.0


@dataclass(frozen=True)
class LiveReplica:
    """A replica's latest status from its agent, and whether gateways may reach that agent's
    replicas (lease valid and stream open: AgentRegistry.routable)."""

    status: ReplicaStatus
    agent_id: str
    routable: bool
    zone: str = ""


def _backend_member(b: BackendSpec, load: MemberLoad, capacity: EngineCapacity) -> RouteMember:
    return RouteMember(
        **{
            **shared_fields(b, RouteMember),
            "cache_tokens": capacity.cache_tokens,
            "cache_block_size": capacity.block_size,
            "max_running": capacity.max_running,
            "healthy": not b.draining,
            "backend": True,
            "in_flight": load.in_flight,
            "latency_ms": load.latency_ms,
            "learned_cache_tokens": load.learned_cache_tokens,
            "learned_prefill_s_per_token": load.learned_prefill_s_per_token,
            "missed_prefixes": load.missed_prefixes,
            "sent_prefixes": load.sent_prefixes,
            "sent_prefix_tokens": load.sent_prefix_tokens,
            "sent_prefix_senders": load.sent_prefix_senders,
        }
    )


def _live_member(
    member_id: str,
    live: LiveReplica,
    upstream_model: str,
    load: MemberLoad,
    draining: bool,
    template: Template | None,
) -> RouteMember:
    """A member for a replica an agent reports, managed or attached: its template's fields
    (prices), then its status's (URL, load), then what the controller decides."""
    s = live.status
    healthy = live.routable and s.state is ReplicaState.READY and s.healthy
    values: dict[str, Any] = shared_fields(template, RouteMember) if template else {}
    values.update(shared_fields(s, RouteMember))
    values.update(
        id=member_id,
        healthy=healthy and not draining,
        draining=draining,
        zone=live.zone,
        upstream_model=upstream_model,
        in_flight=load.in_flight,
        latency_ms=load.latency_ms or s.latency_ms,
        learned_cache_tokens=load.learned_cache_tokens,
        learned_prefill_s_per_token=load.learned_prefill_s_per_token,
        missed_prefixes=load.missed_prefixes,
        sent_prefixes=load.sent_prefixes,
        sent_prefix_tokens=load.sent_prefix_tokens,
        sent_prefix_senders=load.sent_prefix_senders,
    )
    return RouteMember(**values)


def _replica_member(
    a: Assignment, live: LiveReplica, pool: PoolSpec, load: MemberLoad
) -> RouteMember:
    draining = not a.desired or live.status.state is ReplicaState.DRAINING
    upstream = pool.template.served_model if pool.template else ""
    return _live_member(a.replica_id, live, upstream, load, draining, pool.template)


def routed_attached(live: LiveReplica, pools: Mapping[str, PoolSpec]) -> bool:
    """An attached replica is routed while its pool exists and its agent is routable."""
    s = live.status
    return (
        s.attached
        and s.pool in pools
        and bool(s.url)
        and live.routable
        and s.state is not ReplicaState.STOPPED
    )


def build_routes(
    pools: Mapping[str, PoolSpec],
    backends: Mapping[str, BackendSpec],
    assignments: Mapping[str, Assignment],
    live: Mapping[str, LiveReplica],
    loads: Mapping[str, MemberLoad],
    gateways: int = 0,
    capacities: Mapping[str, EngineCapacity] | None = None,
) -> Routes:
    """Every pool appears, even with no members, so gateways answer 503 rather than 404.
    Members: static backends, managed replicas (by assignment) and attached replicas.
    `gateways`: how many watch routes (each route tells them); `capacities`: what static
    backends' engines said of their cache (BackendCapacities)."""
    said = capacities or {}
    by_pool: dict[str, list[RouteMember]] = {name: [] for name in pools}
    for b in sorted(backends.values(), key=lambda b: b.id):
        if b.pool in by_pool and b.enabled:
            by_pool[b.pool].append(
                _backend_member(b, loads.get(b.id, _NO_LOAD), said.get(b.id, UNKNOWN))
            )
    for a in sorted(assignments.values(), key=lambda a: a.replica_id):
        replica = live.get(a.replica_id)
        if a.pool not in by_pool or replica is None or not replica.status.url:
            continue
        load = loads.get(a.replica_id, _NO_LOAD)
        by_pool[a.pool].append(_replica_member(a, replica, pools[a.pool], load))
    for rid in sorted(live):
        replica = live[rid]
        if rid in assignments or not routed_attached(replica, pools):
            continue
        load = loads.get(rid, _NO_LOAD)
        by_pool[replica.status.pool].append(
            _live_member(
                rid,
                replica,
                replica.status.served_model,
                load,
                draining=False,
                template=pools[replica.status.pool].template,
            )
        )
    return {
        name: ModelRoute(
            **shared_fields(pools[name], ModelRoute),
            model=name,
            members=tuple(by_pool[name]),
            hold_s=hold_s(pools[name]),
            gateways=gateways,
        )
        for name in sorted(pools)
    }


def diff_routes(old: Routes, new: Routes) -> tuple[list[ModelRoute], list[str]]:
    """Routes that are new or changed, and models that are gone."""
    changed = [route for model, route in sorted(new.items()) if old.get(model) != route]
    removed = sorted(model for model in old if model not in new)
    return changed, removed


def healthy_members(route: ModelRoute | None) -> int:
    return 0 if route is None else sum(1 for m in route.members if m.healthy and not m.draining)
