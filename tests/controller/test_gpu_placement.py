"""GPU-aware placement: GPU counts, the numbers chosen, held until stopped, unplaced reasons."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from controller.model import Assignment, PoolSpec, Template
from controller.reconcile_loop import placement_env
from controller.reconciler import (
    AgentView,
    Decision,
    StartReplica,
    StopReplica,
    Unplaced,
    World,
    decide,
)
from llmpool.capacity import Capacity
from llmpool.status import ReplicaState, ReplicaStatus

READY = ReplicaState.READY
STOPPED = ReplicaState.STOPPED


def ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda pool: f"{pool}-{next(counter)}"


def gpu_pool(replicas: int, gpus: int, name: str = "p") -> PoolSpec:
    template = Template(engine="vllm", command=("vllm",), gpus=gpus, cpu_slots=1)
    return PoolSpec(name=name, replicas=replicas, template=template)


def agent(
    agent_id: str, gpus: int, slots: int = 8, states: dict[str, ReplicaState] | None = None
) -> AgentView:
    statuses = {
        rid: ReplicaStatus(replica_id=rid, pool="p", state=state)
        for rid, state in (states or {}).items()
    }
    capacity = Capacity(cpu_slots=slots, gpus=gpus)
    return AgentView(agent_id, True, 0.0, capacity, engines=("vllm",), replicas=statuses)


def world(
    pools: list[PoolSpec], agents: list[AgentView], assignments: list[Assignment] | None = None
) -> World:
    return World(
        pools={p.name: p for p in pools},
        assignments={a.replica_id: a for a in assignments or []},
        agents={a.agent_id: a for a in agents},
        now=1000.0,
        lease_s=5.0,
        lost_after_s=15.0,
    )


def starts(decisions: list[Decision]) -> list[tuple[str, tuple[int, ...]]]:
    return [(d.agent_id, d.gpu_indices) for d in decisions if isinstance(d, StartReplica)]


def unplaced(decisions: list[Decision]) -> list[Unplaced]:
    return [d for d in decisions if isinstance(d, Unplaced)]


def test_gpu_replicas_get_distinct_indices_across_two_agents() -> None:
    # a has 2 GPUs, b has 4; 2-GPU replicas: the slot-richest agent first, lowest free numbers.
    decisions = decide(world([gpu_pool(3, gpus=2)], [agent("a", 2), agent("b", 4)]), ids())
    assert sorted(starts(decisions)) == [("a", (0, 1)), ("b", (0, 1)), ("b", (2, 3))]
    assert unplaced(decisions) == []


def test_cpu_replicas_get_no_gpus_and_no_env() -> None:
    decisions = decide(world([gpu_pool(2, gpus=0)], [agent("a", 2)]), ids())
    assert starts(decisions) == [("a", ()), ("a", ())]
    assert placement_env(()) == {}
    assert placement_env((0, 2)) == {"CUDA_VISIBLE_DEVICES": "0,2"}


def test_held_indices_are_not_reused_and_are_freed_on_stop() -> None:
    held = Assignment("p-old", "p", "a", True, 900.0, gpu_indices=(1,))
    w = world([gpu_pool(3, gpus=1)], [agent("a", 3, states={"p-old": READY})], [held])
    assert starts(decide(w, ids())) == [("a", (0,)), ("a", (2,))]

    # Draining (not desired) still holds its GPU until the agent says it stopped.
    draining = Assignment("p-old", "p", "a", False, 900.0, gpu_indices=(1,))
    w = world([gpu_pool(2, gpus=1)], [agent("a", 2, states={"p-old": READY})], [draining])
    decisions = decide(w, ids())
    assert starts(decisions) == [("a", (0,))]
    assert [u.missing for u in unplaced(decisions)] == [1]

    # Once stopped, the assignment is forgotten and GPU 1 is free again.
    w = world([gpu_pool(2, gpus=1)], [agent("a", 2, states={"p-old": STOPPED})], [draining])
    assert starts(decide(w, ids())) == [("a", (0,)), ("a", (1,))]


def test_indices_survive_as_assignments_and_replicas_are_not_restarted() -> None:
    kept = [
        Assignment("p-1", "p", "a", True, 900.0, gpu_indices=(0, 1)),
        Assignment("p-2", "p", "a", True, 901.0, gpu_indices=(2, 3)),
    ]
    w = world([gpu_pool(2, gpus=2)], [agent("a", 4, states={"p-1": READY, "p-2": READY})], kept)
    decisions = decide(w, ids())
    assert starts(decisions) == [] and unplaced(decisions) == []
    assert not [d for d in decisions if isinstance(d, StopReplica)]


def test_replica_without_indices_still_counts_against_capacity() -> None:
    # Adopted, or stored before GPU numbers were kept: it holds one GPU, number unknown.
    legacy = Assignment("p-1", "p", "a", True, 900.0)
    w = world([gpu_pool(3, gpus=1)], [agent("a", 2, states={"p-1": READY})], [legacy])
    decisions = decide(w, ids())
    assert len(starts(decisions)) == 1
    assert [u.missing for u in unplaced(decisions)] == [1]


def test_unplaced_when_no_gpus_are_free() -> None:
    decisions = decide(world([gpu_pool(2, gpus=1)], [agent("a", 0), agent("b", 1)]), ids())
    assert starts(decisions) == [("b", (0,))]
    (short,) = unplaced(decisions)
    assert short.missing == 1 and "1 GPU(s)" in short.reason

    # A GPU host with free GPUs but no free slots does not take it either.
    decisions = decide(world([gpu_pool(1, gpus=1)], [agent("a", 4, slots=0)]), ids())
    assert starts(decisions) == [] and len(unplaced(decisions)) == 1


def test_placement_hands_out_the_agents_own_gpu_numbers() -> None:
    capacity = Capacity(cpu_slots=8, gpus=2, gpu_indices=(4, 6))
    host = AgentView("a", True, 0.0, capacity, engines=("vllm",))
    chosen = starts(decide(world([gpu_pool(2, 1)], [host]), ids()))
    assert sorted(chosen) == [("a", (4,)), ("a", (6,))]
    assert placement_env((6,)) == {"CUDA_VISIBLE_DEVICES": "6"}


def test_placement_prefers_free_memory_and_skips_gpus_others_fill() -> None:
    gib = 1 << 30
    host = AgentView(
        "a",
        True,
        0.0,
        Capacity(
            cpu_slots=8,
            gpus=3,
            gpu_indices=(0, 1, 2),
            gpu_memory_bytes=(80 * gib, 80 * gib, 80 * gib),
            # GPU 0: a foreign process holds 70 GiB; GPU 2 has more free memory than GPU 1.
            gpu_memory_used_bytes=(70 * gib, 10 * gib, 1 * gib),
        ),
        engines=("vllm",),
    )
    assert starts(decide(world([gpu_pool(1, 1)], [host]), ids())) == [("a", (2,))]
    decisions = decide(world([gpu_pool(3, 1)], [host]), ids())
    assert sorted(starts(decisions)) == [("a", (1,)), ("a", (2,))]
    assert [u.missing for u in unplaced(decisions)] == [1]
