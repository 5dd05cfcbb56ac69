"""Pure routing-table builder (desired + live + usage -> ModelRoute per model) and diff."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmpool.v1 import gateway_pb2, types_pb2

from .convert import arm_to_proto, rule_to_proto
from .model import Assignment, BackendSpec, PoolSpec, Template
from .usage import MemberLoad

Routes = dict[str, gateway_pb2.ModelRoute]
_NO_LOAD = MemberLoad()


@dataclass(frozen=True)
class LiveReplica:
    """A replica's latest status from its agent, and whether that agent's lease is valid."""

    status: types_pb2.ReplicaStatus
    agent_id: str
    lease_valid: bool
    zone: str = ""


def _backend_member(b: BackendSpec, load: MemberLoad) -> gateway_pb2.Member:
    return gateway_pb2.Member(
        id=b.id,
        url=b.url,
        weight=b.weight,
        healthy=not b.draining,
        zone=b.zone,
        kind=b.kind,
        upstream_model=b.upstream_model,
        in_flight=load.in_flight,
        latency_ms=load.latency_ms,
        draining=b.draining,
        labels=b.labels,
        input_cost_per_mtok=b.input_cost_per_mtok,
        output_cost_per_mtok=b.output_cost_per_mtok,
        kv_usage=-1.0,
        prefix_cache_hit_rate=-1.0,
    )


def _live_member(
    member_id: str,
    live: LiveReplica,
    upstream_model: str,
    load: MemberLoad,
    draining: bool,
    template: Template | None,
) -> gateway_pb2.Member:
    """A member for a replica an agent reports, managed or attached."""
    s = live.status
    healthy = live.lease_valid and s.state == types_pb2.REPLICA_STATE_READY and s.healthy
    return gateway_pb2.Member(
        id=member_id,
        url=s.url,
        weight=1,
        healthy=healthy and not draining,
        zone=live.zone,
        kind="openai",
        upstream_model=upstream_model,
        running=s.running,
        waiting=s.waiting,
        kv_usage=s.kv_usage,
        prefix_cache_hit_rate=s.prefix_cache_hit_rate,
        in_flight=load.in_flight,
        latency_ms=load.latency_ms or s.latency_ms,
        draining=draining,
        input_cost_per_mtok=template.input_cost_per_mtok if template else 0.0,
        output_cost_per_mtok=template.output_cost_per_mtok if template else 0.0,
    )


def _replica_member(
    a: Assignment, live: LiveReplica, pool: PoolSpec, load: MemberLoad
) -> gateway_pb2.Member:
    draining = not a.desired or live.status.state == types_pb2.REPLICA_STATE_DRAINING
    upstream = pool.template.served_model if pool.template else ""
    return _live_member(a.replica_id, live, upstream, load, draining, pool.template)


def routed_attached(live: LiveReplica, pools: Mapping[str, PoolSpec]) -> bool:
    """An attached replica is routed while its pool exists and its agent's lease holds."""
    s = live.status
    return (
        s.attached
        and s.pool in pools
        and bool(s.url)
        and live.lease_valid
        and s.state != types_pb2.REPLICA_STATE_STOPPED
    )


def build_routes(
    pools: Mapping[str, PoolSpec],
    backends: Mapping[str, BackendSpec],
    assignments: Mapping[str, Assignment],
    live: Mapping[str, LiveReplica],
    loads: Mapping[str, MemberLoad],
) -> Routes:
    """Every pool appears, even with no members, so gateways answer 503 rather than 404.
    Members: static backends, managed replicas (by assignment) and attached replicas."""
    by_pool: dict[str, list[gateway_pb2.Member]] = {name: [] for name in pools}
    for b in sorted(backends.values(), key=lambda b: b.id):
        if b.pool in by_pool and b.enabled:
            by_pool[b.pool].append(_backend_member(b, loads.get(b.id, _NO_LOAD)))
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
    routes: Routes = {}
    for name in sorted(pools):
        pool, members = pools[name], by_pool[name]
        routes[name] = gateway_pb2.ModelRoute(
            model=name,
            policy=pool.policy,
            policy_params=pool.policy_params,
            members=members,
            rules=[rule_to_proto(r) for r in pool.rules],
            splits=[arm_to_proto(a) for a in pool.splits],
            split_header=pool.split_header,
        )
    return routes


def diff_routes(old: Routes, new: Routes) -> tuple[list[gateway_pb2.ModelRoute], list[str]]:
    """Routes that are new or changed, and models that are gone."""
    changed = [route for model, route in sorted(new.items()) if old.get(model) != route]
    removed = sorted(model for model in old if model not in new)
    return changed, removed


def healthy_members(route: gateway_pb2.ModelRoute | None) -> int:
    return 0 if route is None else sum(1 for m in route.members if m.healthy and not m.draining)
