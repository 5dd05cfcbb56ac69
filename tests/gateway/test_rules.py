"""Content rules, A/B splits and their resolution, as pure functions (gateway/rules.py)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gateway.policies.base import PickContext
from gateway.routing import RoutingTable
from gateway.rules import Rule, Split, compile_rules, compile_split, resolve, sticky_hash
from llmpool.rule_checks import MAX_ROUTE_HOPS
from llmpool.v1 import gateway_pb2, types_pb2


def ctx(
    text: str = "hello",
    headers: dict[str, str] | None = None,
    user: str | None = None,
    metadata: Any = None,
) -> PickContext:
    payload: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if user is not None:
        payload["user"] = user
    if metadata is not None:
        payload["metadata"] = metadata
    return PickContext(model="m", payload=payload, headers=headers or {})


def rule(**fields: Any) -> Rule:
    (compiled,) = compile_rules("m", [types_pb2.RouteRule(target="t", **fields)])
    return compiled


def test_a_rule_with_no_condition_matches_everything() -> None:
    assert rule().matches(ctx())


@pytest.mark.parametrize(
    ("fields", "text", "expected"),
    [
        ({"min_prompt_chars": 5}, "1234", False),
        ({"min_prompt_chars": 5}, "12345", True),
        ({"max_prompt_chars": 5}, "12345", True),
        ({"max_prompt_chars": 5}, "123456", False),
        ({"min_prompt_chars": 2, "max_prompt_chars": 3}, "123", True),
        ({"prompt_regex": r"def \w+\("}, "please fix def f(x): pass", True),
        ({"prompt_regex": r"def \w+\("}, "no code here", False),
        # Searched, not anchored; flags inline.
        ({"prompt_regex": r"(?i)translate"}, "Please TRANSLATE this", True),
    ],
)
def test_prompt_conditions(fields: dict[str, Any], text: str, expected: bool) -> None:
    assert rule(**fields).matches(ctx(text)) is expected


def test_prompt_length_counts_every_message_content() -> None:
    both = PickContext(
        model="m",
        payload={
            "messages": [
                {"role": "system", "content": "x" * 6},
                {"role": "user", "content": [{"type": "text", "text": "y" * 6}]},
            ]
        },
    )
    assert rule(min_prompt_chars=12).matches(both)
    completion = PickContext(model="m", payload={"prompt": "z" * 20})
    assert rule(min_prompt_chars=20).matches(completion)
    assert not rule(min_prompt_chars=21).matches(completion)


def test_header_conditions_are_case_insensitive_on_the_name() -> None:
    r = rule(header="X-Region", header_regex="^eu-")
    assert r.matches(ctx(headers={"x-region": "eu-west"}))
    assert not r.matches(ctx(headers={"x-region": "us-east"}))
    assert not r.matches(ctx())
    present = rule(header="x-beta")
    assert present.matches(ctx(headers={"x-beta": ""}))
    assert not present.matches(ctx(headers={"x-other": "1"}))


def test_metadata_conditions() -> None:
    r = rule(metadata_key="tier", metadata_regex="^(gold|platinum)$")
    assert r.matches(ctx(metadata={"tier": "gold"}))
    assert not r.matches(ctx(metadata={"tier": "bronze"}))
    assert not r.matches(ctx(metadata={"other": "gold"}))
    assert not r.matches(ctx(metadata="not an object"))
    assert not r.matches(ctx())
    assert rule(metadata_key="n", metadata_regex="^4$").matches(ctx(metadata={"n": 4}))
    assert rule(metadata_key="b", metadata_regex="^true$").matches(ctx(metadata={"b": True}))
    assert not rule(metadata_key="o").matches(ctx(metadata={"o": {"nested": 1}}))


def test_every_set_condition_must_hold() -> None:
    r = rule(header="x-team", min_prompt_chars=10, prompt_regex="SQL")
    assert r.matches(ctx("write SQL for me", headers={"x-team": "data"}))
    assert not r.matches(ctx("write SQL for me"))
    assert not r.matches(ctx("SQL", headers={"x-team": "data"}))
    assert not r.matches(ctx("write Python now", headers={"x-team": "data"}))


def test_prompt_text_is_not_built_when_a_cheap_condition_already_failed() -> None:
    c = ctx("x" * 1000)
    assert not rule(header="x-absent", min_prompt_chars=1, prompt_regex="x").matches(c)
    assert c._prompt_text is None
    assert rule(min_prompt_chars=1).matches(c)
    assert c._prompt_text is not None


def test_a_rule_whose_regex_does_not_compile_is_dropped() -> None:
    msgs = [types_pb2.RouteRule(target="a", prompt_regex="("), types_pb2.RouteRule(target="b")]
    assert [r.target for r in compile_rules("m", msgs)] == ["b"]


def split(*arms: tuple[str, int], header: str = "") -> Split:
    compiled = compile_split([types_pb2.SplitArm(target=t, weight=w) for t, w in arms], header)
    assert compiled is not None
    return compiled


def everyone(name: str) -> bool:
    return True


def test_split_is_sticky_per_user_whatever_the_random_state() -> None:
    s = split(("v1", 50), ("v2", 50))
    for user in ("alice", "bob", "carol", "dave"):
        arms = {s.choose("m", ctx(user=user), random.Random(seed), everyone) for seed in range(20)}
        assert len(arms) == 1, (user, arms)


def test_split_key_is_the_header_then_the_user_then_random() -> None:
    s = split(("v1", 50), ("v2", 50), header="X-Tenant")
    assert s.key(ctx(user="u1", headers={"x-tenant": "t1"})) == "t1"
    assert s.key(ctx(user="u1")) == "u1"
    assert s.key(ctx(headers={"x-session-id": "s"})) is None
    assert split(("v1", 1)).key(ctx(headers={"x-session-id": "s"})) == "s"
    by_header = {
        s.choose("m", ctx(headers={"x-tenant": "t1"}), random.Random(seed), everyone)
        for seed in range(20)
    }
    assert len(by_header) == 1
    keyless = {s.choose("m", ctx(), random.Random(seed), everyone) for seed in range(40)}
    assert keyless == {"v1", "v2"}


@pytest.mark.parametrize("keyed", [True, False])
def test_split_shares_follow_the_weights(keyed: bool) -> None:
    s = split(("v1", 80), ("v2", 15), ("v3", 5))
    rng = random.Random(7)
    n = 20_000
    got = Counter(
        s.choose("m", ctx(user=f"user-{i}" if keyed else None), rng, everyone) for i in range(n)
    )
    for arm, share in (("v1", 0.80), ("v2", 0.15), ("v3", 0.05)):
        assert abs(got[arm] / n - share) < 0.015, got


def test_raising_a_weight_moves_users_one_way_only() -> None:
    before = split(("v1", 90), ("v2", 10))
    after = split(("v1", 80), ("v2", 20))
    rng = random.Random(0)
    users = [f"user-{i}" for i in range(5000)]
    moved = Counter(
        (
            before.choose("m", ctx(user=u), rng, everyone),
            after.choose("m", ctx(user=u), rng, everyone),
        )
        for u in users
    )
    # Nobody leaves v2; about a tenth of everyone moves v1 -> v2.
    assert moved[("v2", "v1")] == 0
    assert 0.08 < moved[("v1", "v2")] / len(users) < 0.12, moved


def test_zero_weight_and_ineligible_arms_get_nothing() -> None:
    s = split(("v1", 0), ("v2", 1), ("v3", 1))
    rng = random.Random(1)
    picks = {s.choose("m", ctx(user=f"u{i}"), rng, lambda t: t != "v3") for i in range(200)}
    assert picks == {"v2"}
    assert s.choose("m", ctx(user="u"), rng, lambda t: False) is None


def test_sticky_hash_is_stable_across_processes_and_salted_by_model() -> None:
    # A fixed value: every gateway process (each with its own hash() seed) must agree.
    assert sticky_hash("chat", "alice") == 0x72CC8ECB629F82DD
    assert sticky_hash("m", "alice") != sticky_hash("n", "alice")


def table(*routes: gateway_pb2.ModelRoute) -> RoutingTable:
    t = RoutingTable(rng=random.Random(3))
    t.apply(gateway_pb2.RoutingSnapshot(version=1, full=True, routes=list(routes)))
    return t


def model_route(
    model: str,
    members: int = 1,
    rules: list[types_pb2.RouteRule] | None = None,
    splits: list[tuple[str, int]] | None = None,
) -> gateway_pb2.ModelRoute:
    return gateway_pb2.ModelRoute(
        model=model,
        policy="round_robin",
        members=[
            gateway_pb2.Member(id=f"{model}-{i}", url=f"http://127.0.0.1:{9000 + i}", healthy=True)
            for i in range(members)
        ],
        rules=rules or [],
        splits=[types_pb2.SplitArm(target=t, weight=w) for t, w in splits or []],
    )


def served(t: RoutingTable, model: str, c: PickContext) -> tuple[str, list[tuple[str, str, str]]]:
    route = t.get(model)
    assert route is not None
    target, hops = t.resolve(route, c)
    return target.model, [(h.kind, h.source, h.target) for h in hops]


def test_rules_come_first_then_the_split_then_the_pool_itself() -> None:
    t = table(
        model_route(
            "chat",
            rules=[
                types_pb2.RouteRule(target="long", min_prompt_chars=100),
                types_pb2.RouteRule(target="eu", header="x-region"),
            ],
            splits=[("v2", 1)],
        ),
        model_route("long"),
        model_route("eu"),
        model_route("v2"),
        model_route("plain"),
    )
    assert served(t, "chat", ctx("x" * 100, headers={"x-region": "eu"})) == (
        "long",
        [("rule", "chat", "long")],
    )
    assert served(t, "chat", ctx(headers={"x-region": "eu"})) == ("eu", [("rule", "chat", "eu")])
    assert served(t, "chat", ctx()) == ("v2", [("split", "chat", "v2")])
    assert served(t, "plain", ctx()) == ("plain", [])


def test_chains_are_followed_and_unknown_targets_skipped() -> None:
    t = table(
        model_route(
            "front", members=0, rules=[types_pb2.RouteRule(target="gone")], splits=[("mid", 1)]
        ),
        model_route("mid", members=0, splits=[("back", 1)]),
        model_route("back"),
    )
    assert served(t, "front", ctx()) == (
        "back",
        [("split", "front", "mid"), ("split", "mid", "back")],
    )


def test_a_cycle_or_a_long_chain_stops_within_the_hop_bound() -> None:
    t = table(
        model_route("a", splits=[("b", 1)]),
        model_route("b", rules=[types_pb2.RouteRule(target="a")]),
    )
    assert served(t, "a", ctx()) == ("b", [("split", "a", "b")])
    chain = [model_route(f"p{i}", splits=[(f"p{i + 1}", 1)]) for i in range(10)]
    t = table(*chain, model_route("p10"))
    target, hops = served(t, "p0", ctx())
    assert len(hops) == MAX_ROUTE_HOPS and target == f"p{MAX_ROUTE_HOPS}"


def test_a_split_arm_with_nothing_to_serve_gives_way() -> None:
    t = table(
        model_route("ab", members=0, splits=[("v1", 99), ("v2", 1)]),
        model_route("v1", members=0),
        model_route("v2"),
    )
    assert {served(t, "ab", ctx(user=f"u{i}"))[0] for i in range(20)} == {"v2"}
    # No arm can serve: the request stays on the split pool (which then answers 503).
    t = table(model_route("ab", members=0, splits=[("v1", 1)]), model_route("v1", members=0))
    assert served(t, "ab", ctx()) == ("ab", [])


def test_the_routing_table_compiles_rules_once_per_route() -> None:
    t = table(
        model_route(
            "chat", rules=[types_pb2.RouteRule(target="x", prompt_regex="a+")], splits=[("x", 2)]
        ),
        model_route("x"),
    )
    route = t.get("chat")
    assert route is not None and route.redirects
    assert route.rules[0].prompt_re is not None and route.rules[0].prompt_re.pattern == "a+"
    assert route.split is not None and route.split.weights == (2,)
    plain = t.get("x")
    assert plain is not None and not plain.redirects and plain.split is None


def test_resolve_works_on_any_lookup() -> None:
    t = table(model_route("a", splits=[("b", 1)]), model_route("b"))
    route = t.get("a")
    assert route is not None
    target, _ = resolve(route, {"b": t.get("b")}.get, ctx(), random.Random(0))
    assert target.model == "b"
