"""Pure routing-table builder (desired + live + usage -> ModelRoute per model) and diff."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmpool.v1 import gateway_pb2, types_pb2

from .model import Assignment, BackendSpec, PoolSpec
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
    )


def _replica_member(
    a: Assignment, live: LiveReplica, pool: PoolSpec, load: MemberLoad
) -> gateway_pb2.Member:
    s = live.status
    healthy = live.lease_valid and s.state == types_pb2.REPLICA_STATE_READY and s.healthy
    draining = not a.desired or s.state == types_pb2.REPLICA_STATE_DRAINING
    return gateway_pb2.Member(
        id=a.replica_id,
        url=s.url,
        weight=1,
        healthy=healthy and not draining,
        zone=live.zone,
        kind="openai",
        upstream_model=pool.template.served_model if pool.template else "",
        running=s.running,
        waiting=s.waiting,
        kv_usage=s.kv_usage,
        in_flight=load.in_flight,
        latency_ms=load.latency_ms or s.latency_ms,
        draining=draining,
    )


def build_routes(
    pools: Mapping[str, PoolSpec],
    backends: Mapping[str, BackendSpec],
    assignments: Mapping[str, Assignment],
    live: Mapping[str, LiveReplica],
    loads: Mapping[str, MemberLoad],
) -> Routes:
    """Every pool appears, even with no members, so gateways answer 503 rather than 404."""
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
    routes: Routes = {}
    for name in sorted(pools):
        pool, members = pools[name], by_pool[name]
        routes[name] = gateway_pb2.ModelRoute(
            model=name, policy=pool.policy, policy_params=pool.policy_params, members=members
        )
    return routes


def diff_routes(old: Routes, new: Routes) -> tuple[list[gateway_pb2.ModelRoute], list[str]]:
    """Routes that are new or changed, and models that are gone."""
    changed = [route for model, route in sorted(new.items()) if old.get(model) != route]
    removed = sorted(model for model in old if model not in new)
    return changed, removed


def healthy_members(route: gateway_pb2.ModelRoute | None) -> int:
    return 0 if route is None else sum(1 for m in route.members if m.healthy and not m.draining)
