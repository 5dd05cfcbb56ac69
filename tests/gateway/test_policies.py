"""The policy registry and the round_robin and least_in_flight policies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from gateway.members import Member
from gateway.policies import (
    LeastInFlight,
    PickContext,
    Policy,
    RoundRobin,
    UnknownPolicyError,
    build_policy,
    policy_names,
)


def mk(member_id: str, in_flight: float = 0.0) -> Member:
    return Member(
        id=member_id,
        url="http://h",
        weight=1,
        healthy=True,
        draining=False,
        zone="",
        kind="openai",
        upstream_model=None,
        running=0,
        waiting=0,
        kv_usage=-1,
        in_flight=in_flight,
        latency_ms=0,
        chat_url="",
        completions_url="",
        embeddings_url="",
    )


def ctx(in_flight: Mapping[str, int] | None = None) -> PickContext:
    return PickContext(model="m", in_flight=in_flight or {})


def test_registry_builds_by_name() -> None:
    assert {"round_robin", "least_in_flight"} <= set(policy_names())
    assert isinstance(build_policy("round_robin"), RoundRobin)
    policy = build_policy("least_in_flight", {"k": "v"})
    assert isinstance(policy, LeastInFlight) and policy.params == {"k": "v"}
    with pytest.raises(UnknownPolicyError, match="round_robin"):
        build_policy("nope")


def test_subclass_registers_itself() -> None:
    class First(Policy, name="test_first_only"):
        def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
            return candidates[0]

    built = build_policy("test_first_only")
    assert isinstance(built, First) and built.name == "test_first_only"
    with pytest.raises(ValueError, match="twice"):

        class Again(Policy, name="test_first_only"):
            pass


def test_round_robin_cycles() -> None:
    members = [mk("a"), mk("b"), mk("c")]
    rr = build_policy("round_robin")
    assert [rr.pick(members, ctx()).id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_least_in_flight_adds_own_and_controller_counts() -> None:
    members = [mk("a", in_flight=2), mk("b", in_flight=0), mk("c", in_flight=1)]
    lif = build_policy("least_in_flight")
    assert lif.pick(members, ctx()).id == "b"
    # b is busy on this gateway: a (2) vs b (0+3) vs c (1) -> c.
    assert lif.pick(members, ctx({"b": 3})).id == "c"


def test_least_in_flight_breaks_ties_round_robin() -> None:
    members = [mk("a"), mk("b"), mk("c", in_flight=5)]
    lif = build_policy("least_in_flight")
    picks = [lif.pick(members, ctx()).id for _ in range(4)]
    assert set(picks) == {"a", "b"} and picks.count("a") == picks.count("b") == 2


def test_context_prompt_text() -> None:
    chat = PickContext(
        model="m",
        payload={
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}],
                },
            ],
            "user": "u1",
        },
    )
    assert chat.prompt_text == "be brief\nhi" and chat.user == "u1"
    assert PickContext(model="m", payload={"prompt": "abc"}).prompt_text == "abc"
    assert PickContext(model="m", payload={"input": ["x", "y"]}).prompt_text == "x\ny"
    assert PickContext(model="m").user is None
