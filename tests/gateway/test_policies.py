"""Policy basics: the registry's factory, params, round_robin, weighted_round_robin,
least_connections, and the prompt texts policies read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from gateway.members import Member, idle_member
from gateway.policies import (
    BUILTIN_POLICIES,
    LeastConnections,
    LeastInFlight,
    ParamReader,
    PickContext,
    Policy,
    PolicyRegistry,
    RoundRobin,
    UnknownPolicyError,
)


def mk(member_id: str, **fields: Any) -> Member:
    return idle_member(member_id, **fields)


def ctx(in_flight: Mapping[str, int] | None = None, **payload: Any) -> PickContext:
    return PickContext(model="m", payload=payload, in_flight=in_flight or {})


def test_registry_builds_every_builtin_by_name() -> None:
    registry = PolicyRegistry()
    names = {
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "least_in_flight",
        "response_time",
        "queue_aware",
        "prefix_aware",
        "session",
        "cost",
    }
    assert set(registry.names()) == names == {cls.name for cls in BUILTIN_POLICIES}
    for name in names:
        assert registry.build(name).name == name
    assert isinstance(registry.build("least_in_flight"), LeastConnections)
    with pytest.raises(UnknownPolicyError, match=r"unknown routing policy 'nope'.*round_robin"):
        registry.build("nope")


def test_registries_are_independent_objects() -> None:
    class Mine(Policy, name="mine_only"):
        def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
            return candidates[0]

    one, two = PolicyRegistry(), PolicyRegistry()
    one.register("mine_only", Mine)
    assert "mine_only" in one and "mine_only" not in two
    # Defining a subclass registers nothing anywhere by itself.
    assert "mine_only" not in PolicyRegistry()


def test_params_unknown_and_bad_values_are_clear() -> None:
    registry = PolicyRegistry()
    with pytest.raises(
        ValueError, match=r"'least_in_flight': unknown param\(s\) k; it takes: none"
    ):
        registry.build("least_in_flight", {"k": "v"})
    with pytest.raises(ValueError, match=r"'prefix_aware': unknown param\(s\) blok_chars"):
        registry.build("prefix_aware", {"blok_chars": "64"})
    with pytest.raises(ValueError, match="block_chars='x' is not valid: expected an integer"):
        registry.build("prefix_aware", {"block_chars": "x"})
    with pytest.raises(ValueError, match=r"evict_weight='-1' is not valid: must be >= 0"):
        registry.build("prefix_aware", {"evict_weight": "-1"})
    with pytest.raises(ValueError, match="alpha='nan' is not valid: expected a finite number"):
        registry.build("response_time", {"alpha": "nan"})
    with pytest.raises(ValueError, match="header='' is not valid: must not be empty"):
        registry.build("session", {"header": ""})
    policy = registry.build("prefix_aware", {"block_chars": "32", "request_blocks": "2"})
    assert policy.params == {"block_chars": "32", "request_blocks": "2"}


def test_param_reader_reads_typed_values() -> None:
    reader = ParamReader("p", {"a": "1.5", "b": "7", "c": "x"})
    assert reader.number("a", 0.0, min=0.0) == 1.5
    assert reader.integer("b", 0, max=10) == 7
    assert reader.text("c", "d") == "x"
    assert reader.number("missing", 2.5) == 2.5
    reader.finish()


def test_observes_flag_is_set_only_by_an_observe_override() -> None:
    registry = PolicyRegistry()
    observing = {n for n in registry.names() if registry.build(n).observes}
    assert observing == {"response_time", "cost"}


def test_round_robin_cycles() -> None:
    members = [mk("a"), mk("b"), mk("c")]
    rr = PolicyRegistry().build("round_robin")
    assert isinstance(rr, RoundRobin)
    assert [rr.pick(members, ctx()).id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_weighted_round_robin_exact_smooth_sequence() -> None:
    members = [mk("a", weight=5), mk("b", weight=1), mk("c", weight=1)]
    wrr = PolicyRegistry().build("weighted_round_robin")
    picks = [wrr.pick(members, ctx()).id for _ in range(14)]
    # nginx's smooth WRR: a's five turns are interleaved, not five in a row.
    assert picks == ["a", "a", "b", "a", "c", "a", "a"] * 2


def test_weighted_round_robin_weight_zero_gets_nothing_unless_all_are_zero() -> None:
    wrr = PolicyRegistry().build("weighted_round_robin")
    members = [mk("a", weight=2), mk("z", weight=0), mk("b", weight=1)]
    picks = [wrr.pick(members, ctx()).id for _ in range(30)]
    assert picks.count("z") == 0 and picks.count("a") == 20 and picks.count("b") == 10
    zeros = [mk("x", weight=0), mk("y", weight=0)]
    picks = [wrr.pick(zeros, ctx()).id for _ in range(4)]
    assert sorted(picks) == ["x", "x", "y", "y"]


def test_weighted_round_robin_forgets_removed_members() -> None:
    wrr = PolicyRegistry().build("weighted_round_robin")
    members = [mk("a", weight=3), mk("b", weight=1)]
    # Smooth scores after a, a: a -2, b +2.
    assert [wrr.pick(members, ctx()).id for _ in range(2)] == ["a", "a"]
    wrr.on_members([mk("b")])
    # a comes back from 0 and b keeps its +2: a (3 vs 3, first wins), then b (2 vs 4), then a.
    # Kept, a's -2 would make b first; b's +2 forgotten too would give a, a, b.
    assert [wrr.pick(members, ctx()).id for _ in range(3)] == ["a", "b", "a"]


def test_least_connections_adds_own_and_controller_counts() -> None:
    members = [mk("a", in_flight=2), mk("b", in_flight=0), mk("c", in_flight=1)]
    lc = PolicyRegistry().build("least_connections")
    assert lc.pick(members, ctx()).id == "b"
    # b is busy on this gateway: a (2) vs b (0+3) vs c (1) -> c.
    assert lc.pick(members, ctx({"b": 3})).id == "c"


def test_least_connections_counts_this_gateways_requests_once() -> None:
    # The aggregate (a: 3) already holds the 3 this gateway reported; 1 of them has ended since.
    members = [mk("a", in_flight=3), mk("b", in_flight=2)]
    lc = PolicyRegistry().build("least_connections")
    own = PickContext(model="m", in_flight={"a": 2}, reported_in_flight={"a": 3})
    # a: 2 live + 0 elsewhere = 2; b: 2 elsewhere -> a tie, broken in turn: a first.
    assert [lc.pick(members, own).id for _ in range(2)] == ["a", "b"]
    # Adding the live count to the whole aggregate would count a's requests twice (5).
    assert lc.pick(members, PickContext(model="m", in_flight={"a": 2})).id == "b"


def test_pick_context_load_counts_each_request_once() -> None:
    member = mk("a", in_flight=5)
    # The aggregate's 5 hold the 3 this gateway reported; 4 are live here now.
    both = PickContext(model="m", in_flight={"a": 4}, reported_in_flight={"a": 3})
    assert both.load(member) == 4 + 2
    # Only ours: none elsewhere, and a report older than our latest ends cannot go negative.
    assert PickContext(model="m", in_flight={"a": 1}, reported_in_flight={"a": 9}).load(member) == 1
    assert PickContext(model="m").load(member) == 5
    assert PickContext(model="m").load(mk("idle")) == 0


@pytest.mark.parametrize(
    "name", ["least_connections", "session", "cost", "response_time", "prefix_aware"]
)
def test_every_load_based_policy_counts_this_gateways_requests_once(name: str) -> None:
    # a: 3 in flight, all this gateway's (reported and live); b: 4 from other gateways. Adding
    # our live count to the aggregate, which already holds it, would make a look like 6.
    members = [mk("a", in_flight=3), mk("b", in_flight=4)]
    policy = PolicyRegistry().build(name)
    policy.on_members(members)
    context = PickContext(
        model="m",
        payload={"prompt": "hello"},
        in_flight={"a": 3},
        reported_in_flight={"a": 3},
    )
    assert policy.pick(members, context).id == "a"
    # a: 2 from other gateways plus 2 of ours sent since our last report (4); b: 3 elsewhere.
    # Taking the larger of ours and the aggregate would make a look like 2.
    members = [mk("a", in_flight=2), mk("b", in_flight=3)]
    policy = PolicyRegistry().build(name)
    policy.on_members(members)
    context = PickContext(model="m", payload={"prompt": "hello"}, in_flight={"a": 2})
    assert policy.pick(members, context).id == "b"


def test_in_turn_rotates_only_through_real_ties() -> None:
    policy = PolicyRegistry().build("least_connections")
    assert policy.in_turn(["x"]) == "x"
    assert [policy.in_turn(["p", "q", "r"]) for _ in range(4)] == ["p", "q", "r", "p"]


def test_least_connections_breaks_ties_in_turn() -> None:
    members = [mk("a"), mk("b"), mk("c", in_flight=5)]
    lc = PolicyRegistry().build("least_in_flight")
    assert isinstance(lc, LeastInFlight)
    picks = [lc.pick(members, ctx()).id for _ in range(4)]
    assert picks == ["a", "b", "a", "b"]


def test_context_prompt_text_and_prefix_key() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
    ]
    chat = ctx(messages=messages, user="u1")
    assert chat.prompt_text == "be brief\nhi" and chat.user == "u1"
    assert PickContext(model="m", payload={"prompt": "abc"}).prompt_text == "abc"
    assert PickContext(model="m", payload={"input": ["x", "y"]}).prompt_text == "x\ny"
    assert PickContext(model="m").user is None
    # The next turn's key extends this turn's key; roles and order are part of it.
    turn2 = ctx(
        messages=[
            *messages,
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"},
        ]
    )
    # (less the list's closing bracket).
    assert turn2.prefix_key.startswith(chat.prefix_key[:-1]) and len(turn2.prefix_key) > len(
        chat.prefix_key
    )
    swapped = ctx(messages=[{"role": "user", "content": "be brief"}, messages[1]])
    assert swapped.prefix_key != chat.prefix_key
    assert PickContext(model="m", payload={"prompt": "abc"}).prefix_key == b"abc"


def test_prefix_key_comes_from_the_raw_body_as_the_client_sent_it() -> None:
    """The key is the body from its messages on (not serialized again): the next turn's body
    extends it, and a field after the messages only changes its tail."""

    def keyed(payload: dict[str, Any]) -> bytes:
        body = json.dumps(payload).encode()  # spaces after separators, as Python's json
        key = PickContext(model="m", body=body, payload=json.loads(body)).prefix_key
        return bytes(key)

    turn1 = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    first = keyed({"model": "m", "messages": turn1, "stream": True})
    assert first.startswith(b'"messages": [{"role": "system"')
    assert first.endswith(b'"stream": true}')
    second = keyed({"model": "m", "messages": turn2, "max_tokens": 9})
    shared = b'"messages": ' + json.dumps(turn1).encode()[:-1]
    assert first.startswith(shared) and second.startswith(shared + b", ")
    # Anthropic's system prompt sits beside the messages: in the key when it comes first,
    # and when it comes after them (serialized then, so that it still leads).
    before = keyed({"model": "m", "system": "be brief", "messages": turn1[1:]})
    assert before.startswith(b'"system": "be brief", "messages"')
    after = keyed({"model": "m", "messages": turn1[1:], "system": "be brief"})
    assert after.startswith(b'["be brief",[{"role":"user"')
    # No body (a policy called directly): the messages serialized.
    assert PickContext(model="m", payload={"messages": turn1}).prefix_key == orjson.dumps(turn1)
