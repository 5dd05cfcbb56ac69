"""The pure reconciler: scale up and down, placement, lost agents, restart grace, adoption."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

from controller.model import Assignment, PoolSpec, Template
from controller.reconciler import (
    AdoptReplica,
    AgentView,
    Decision,
    ForgetReplica,
    StartReplica,
    StopReplica,
    Unplaced,
    World,
    decide,
)
from llmpool.capacity import Capacity
from llmpool.status import ReplicaState, ReplicaStatus

TEMPLATE = Template(engine="sim", command=("sim",), cpu_slots=1)
READY = ReplicaState.READY


def ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda pool: f"{pool}-{next(counter):06x}"


def pool(replicas: int, name: str = "p") -> PoolSpec:
    return PoolSpec(name=name, replicas=replicas, template=TEMPLATE)


def agent(
    agent_id: str, slots: int = 4, silent_s: float = 0.0, **replicas: ReplicaState
) -> AgentView:
    statuses = {
        rid.replace("_", "-"): ReplicaStatus(
            replica_id=rid.replace("_", "-"), pool="p", state=state
        )
        for rid, state in replicas.items()
    }
    return AgentView(
        agent_id,
        True,
        silent_s,
        capacity=Capacity(cpu_slots=slots),
        engines=("sim",),
        replicas=statuses,
    )


def world(
    pools: list[PoolSpec],
    agents: list[AgentView],
    assignments: list[Assignment] = (),  # type: ignore[assignment]
    returning: frozenset[str] = frozenset(),
    now: float = 1000.0,
) -> World:
    return World(
        pools={p.name: p for p in pools},
        assignments={a.replica_id: a for a in assignments},
        agents={a.agent_id: a for a in agents},
        now=now,
        returning=returning,
        lease_s=5.0,
        lost_after_s=15.0,
        drain_s=7.0,
    )


def of(kind: type, decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if isinstance(d, kind)]


def test_scale_up_places_on_agent_with_most_free_slots() -> None:
    w = world(
        [pool(3)],
        [agent("a", slots=2, p_1=READY), agent("b", slots=3)],
        [Assignment("p-1", "p", "a", True, 900.0)],
    )
    decisions = decide(w, ids())
    starts = of(StartReplica, decisions)
    assert len(starts) == 2
    # b has 3 free, a has 1 free: first b (3 -> 2 free), then b again (2 > 1).
    assert [s.agent_id for s in starts] == ["b", "b"]  # type: ignore[attr-defined]
    assert all(s.replica_id.startswith("p-") for s in starts)  # type: ignore[attr-defined]
    assert of(StopReplica, decisions) == []


def test_no_capacity_or_wrong_engine_starts_nothing_and_says_why() -> None:
    other = AgentView("gpu", True, 0.0, capacity=Capacity(cpu_slots=8), engines=("vllm",))
    full = agent("full", slots=0)
    decisions = decide(world([pool(2)], [other, full]), ids())
    assert of(StartReplica, decisions) == []
    [short] = of(Unplaced, decisions)
    assert short.pool == "p" and short.missing == 2  # type: ignore[attr-defined]
    assert "'sim'" in short.reason and "1 cpu slot" in short.reason  # type: ignore[attr-defined]


def test_partly_placeable_pool_reports_only_the_rest() -> None:
    decisions = decide(world([pool(3)], [agent("a", slots=2)]), ids())
    assert len(of(StartReplica, decisions)) == 2
    assert [u.missing for u in of(Unplaced, decisions)] == [1]  # type: ignore[attr-defined]


def test_scale_down_drains_newest_first() -> None:
    assignments = [
        Assignment("p-old", "p", "a", True, 100.0),
        Assignment("p-mid", "p", "a", True, 200.0),
        Assignment("p-new", "p", "a", True, 300.0),
    ]
    w = world([pool(1)], [agent("a", p_old=READY, p_mid=READY, p_new=READY)], assignments)
    stops = of(StopReplica, decide(w, ids()))
    assert {s.replica_id for s in stops} == {"p-new", "p-mid"}  # type: ignore[attr-defined]
    assert all(s.drain_s == 7.0 for s in stops)  # type: ignore[attr-defined]


def test_lost_agent_replicas_are_forgotten_and_replaced() -> None:
    assignments = [Assignment("p-1", "p", "gone", True, 100.0)]
    silent = agent("gone", silent_s=20.0, p_1=READY)
    decisions = decide(world([pool(1)], [silent, agent("b")], assignments), ids())
    assert ForgetReplica("p-1", "agent lost") in decisions
    starts = of(StartReplica, decisions)
    assert [s.agent_id for s in starts] == ["b"]  # type: ignore[attr-defined]


def test_silent_but_not_lost_agent_keeps_its_replicas() -> None:
    assignments = [Assignment("p-1", "p", "slow", True, 100.0)]
    silent = agent("slow", silent_s=8.0, p_1=READY)
    assert decide(world([pool(1)], [silent, agent("b")], assignments), ids()) == []


def test_failed_replica_is_left_to_its_agent() -> None:
    assignments = [Assignment("p-1", "p", "a", True, 100.0)]
    w = world([pool(1)], [agent("a", p_1=ReplicaState.FAILED), agent("b")], assignments)
    assert decide(w, ids()) == []


def test_restart_grace_waits_for_agents_then_replaces() -> None:
    assignments = [Assignment("p-1", "p", "away", True, 100.0)]
    in_grace = world([pool(1)], [agent("b")], assignments, returning=frozenset({"away"}))
    assert decide(in_grace, ids()) == []
    after = world([pool(1)], [agent("b")], assignments)
    decisions = decide(after, ids())
    assert ForgetReplica("p-1", "agent lost") in decisions
    assert len(of(StartReplica, decisions)) == 1


def test_unknown_replica_adopted_when_pool_needs_it_else_stopped() -> None:
    w = world([pool(1)], [agent("a", p_x=READY, p_y=READY)])
    decisions = decide(w, ids())
    assert decisions == [
        AdoptReplica("p-x", "p", "a"),
        StopReplica("p-y", "a", 0.0, "unknown replica"),
    ]


def test_unknown_replica_of_unknown_pool_is_stopped() -> None:
    stray = ReplicaStatus(replica_id="q-1", pool="nope", state=READY)
    a = AgentView(
        "a", True, 0.0, capacity=Capacity(cpu_slots=4), engines=("sim",), replicas={"q-1": stray}
    )
    assert decide(world([], [a]), ids()) == [StopReplica("q-1", "a", 0.0, "unknown replica")]


def test_drained_replica_forgotten_once_gone_and_replaced() -> None:
    assignments = [Assignment("p-1", "p", "a", False, 100.0)]
    decisions = decide(world([pool(1)], [agent("a")], assignments), ids())
    assert ForgetReplica("p-1", "gone after drain") in decisions
    assert len(of(StartReplica, decisions)) == 1


def test_undesired_replica_still_running_gets_stop_again() -> None:
    assignments = [Assignment("p-1", "p", "a", False, 100.0)]
    decisions = decide(world([pool(0)], [agent("a", p_1=READY)], assignments), ids())
    assert decisions == [StopReplica("p-1", "a", 7.0, "draining")]


def test_new_assignment_not_yet_reported_counts_until_too_old() -> None:
    fresh = [Assignment("p-1", "p", "a", True, 995.0)]
    assert decide(world([pool(1)], [agent("a")], fresh), ids()) == []
    stale = [Assignment("p-1", "p", "a", True, 900.0)]
    decisions = decide(world([pool(1)], [agent("a")], stale), ids())
    assert ForgetReplica("p-1", "agent does not run it") in decisions
    assert len(of(StartReplica, decisions)) == 1


def test_deleted_pool_replicas_are_stopped() -> None:
    assignments = [Assignment("p-1", "p", "a", True, 100.0)]
    assert decide(world([], [agent("a", p_1=READY)], assignments), ids()) == [
        StopReplica("p-1", "a", 0.0, "pool deleted")
    ]


def test_stopped_report_forgets_and_replaces() -> None:
    assignments = [Assignment("p-1", "p", "a", True, 100.0)]
    w = world([pool(1)], [agent("a", p_1=ReplicaState.STOPPED)], assignments)
    decisions = decide(w, ids())
    assert decisions[0] == ForgetReplica("p-1", "stopped")
    assert len(of(StartReplica, decisions)) == 1


def test_assignment_missing_from_a_later_register_is_forgotten_at_once() -> None:
    # Placed at 990 (e.g. while the agent was shutting down); the agent registered again at 995
    # without it: it does not run it, so it is replaced without waiting lost_after_s.
    assignments = [Assignment("p-1", "p", "a", True, 990.0)]
    back = AgentView(
        "a", True, 0.0, capacity=Capacity(cpu_slots=4), engines=("sim",), registered_at=995.0
    )
    decisions = decide(world([pool(1)], [back], assignments), ids())
    assert decisions[0] == ForgetReplica("p-1", "agent does not run it")
    assert len(of(StartReplica, decisions)) == 1


def test_pool_with_no_agent_connected_says_so() -> None:
    [short] = of(Unplaced, decide(world([pool(2)], []), ids()))
    assert short.reason == "no agent is connected"  # type: ignore[attr-defined]


def test_a_disconnected_agents_replicas_are_replaced_after_one_lease() -> None:
    """A closed stream is certain: one lease, not lost_after_s, before replacing."""
    assignments = [Assignment("p-1", "p", "gone", True, 100.0)]
    gone = dataclasses.replace(agent("gone", silent_s=5.0, p_1=READY), connected=False)
    decisions = decide(world([pool(1)], [gone, agent("b")], assignments), ids())
    assert ForgetReplica("p-1", "agent lost") in decisions
    assert [d.agent_id for d in of(StartReplica, decisions)] == ["b"]  # type: ignore[attr-defined]


def test_replicas_spread_over_agents_when_room_ties() -> None:
    roomless = [agent("a", slots=0), agent("b", slots=0)]
    free = PoolSpec(name="p", replicas=4, template=Template(engine="sim", cpu_slots=0))
    starts = of(StartReplica, decide(world([free], roomless), ids()))
    assert sorted(d.agent_id for d in starts) == ["a", "a", "b", "b"]  # type: ignore[attr-defined]


def test_a_pool_spreads_over_hosts_before_filling_the_roomiest() -> None:
    starts = of(StartReplica, decide(world([pool(4)], [agent("big", 8), agent("small", 4)]), ids()))
    assert sorted(d.agent_id for d in starts) == ["big", "big", "small", "small"]  # type: ignore[attr-defined]


def test_a_pool_spreads_over_zones_then_hosts() -> None:
    agents = [
        dataclasses.replace(agent("a1", 8), zone="a"),
        dataclasses.replace(agent("a2", 8), zone="a"),
        dataclasses.replace(agent("b1", 2), zone="b"),
    ]
    starts = of(StartReplica, decide(world([pool(4)], agents), ids()))
    placed = [d.agent_id for d in starts]  # type: ignore[attr-defined]
    # Zone b gets half though its one host is the smallest; zone a's two share the rest.
    assert sorted(placed) == ["a1", "a2", "b1", "b1"]
