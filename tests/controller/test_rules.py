"""Content rules and A/B splits in the control plane: checks, config, store, admin, snapshot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiosqlite
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from controller.convert import specs_from_config
from controller.model import PoolSpec, RouteRule, SplitArm
from controller.server import ControllerServer
from controller.snapshot import build_routes
from controller.store import DB_FILE, SCHEMA_VERSION, Store
from llmpool.config import ConfigError, parse_config
from llmpool.rule_checks import MAX_ROUTE_HOPS, RouteGraphError, check_route_graph
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.support import eventually, refused


@pytest.mark.parametrize(
    ("edges", "needle"),
    [
        ({"a": ["a"]}, "routes to itself"),
        ({"a": ["nope"]}, "'nope', which is not a pool"),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, "cycle: a -> b -> c -> a"),
        (
            {f"p{i}": [f"p{i + 1}"] for i in range(MAX_ROUTE_HOPS + 1)}
            | {f"p{MAX_ROUTE_HOPS + 1}": []},
            f"gateways follow at most {MAX_ROUTE_HOPS}",
        ),
    ],
)
def test_route_graph_errors_name_the_pools(edges: dict[str, list[str]], needle: str) -> None:
    with pytest.raises(RouteGraphError, match=needle):
        check_route_graph(edges)


def test_route_graph_accepts_diamonds_and_the_longest_allowed_chain() -> None:
    check_route_graph({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []})
    chain = {f"p{i}": [f"p{i + 1}"] for i in range(MAX_ROUTE_HOPS)} | {f"p{MAX_ROUTE_HOPS}": []}
    check_route_graph(chain)


CONFIG = """
pools:
  - name: chat
    rules:
      - {target: chat-long, min_prompt_chars: 4000}
      - {target: chat-eu, header: X-Region, header_regex: "^eu"}
      - {target: chat-long, metadata_key: tier, metadata_regex: "^gold$"}
    splits:
      - {target: chat-v1, weight: 90}
      - {target: chat-v2, weight: 10}
    split_header: x-user
  - name: chat-long
  - name: chat-eu
  - name: chat-v1
  - name: chat-v2
"""


def test_config_rules_and_splits_become_pool_specs() -> None:
    pools, _ = specs_from_config(parse_config(CONFIG))
    chat = {p.name: p for p in pools}["chat"]
    assert chat.rules == (
        RouteRule(target="chat-long", min_prompt_chars=4000),
        RouteRule(target="chat-eu", header="X-Region", header_regex="^eu"),
        RouteRule(target="chat-long", metadata_key="tier", metadata_regex="^gold$"),
    )
    assert chat.splits == (SplitArm("chat-v1", 90), SplitArm("chat-v2", 10))
    assert chat.split_header == "x-user"
    assert chat.route_targets() == {"chat-long", "chat-eu", "chat-v1", "chat-v2"}


@pytest.mark.parametrize(
    ("pools", "needle"),
    [
        ("- {name: a, rules: [{target: b}]}", "'b', which is not a pool"),
        ("- {name: a, rules: [{target: b, prompt_regex: '(x'}]}\n- {name: b}", "not a valid regex"),
        ("- {name: a, rules: [{target: b, header_regex: x}]}\n- {name: b}", "needs header"),
        ("- {name: a, rules: [{target: b, metadata_regex: x}]}\n- {name: b}", "needs metadata_key"),
        ("- {name: a, rules: [{target: b, header: 'bad name'}]}\n- {name: b}", "header name"),
        (
            "- {name: a, rules: [{target: b, min_prompt_chars: 9, max_prompt_chars: 3}]}\n"
            "- {name: b}",
            "below min_prompt_chars",
        ),
        ("- {name: a, rules: [{target: b, colour: red}]}\n- {name: b}", "colour"),
        ("- {name: a, splits: [{target: b, weight: 0}]}\n- {name: b}", "weight 0"),
        ("- {name: a, splits: [{target: b, weight: -1}]}\n- {name: b}", "greater than or equal"),
        ("- {name: a, splits: [{target: b}, {target: b}]}\n- {name: b}", "same target twice"),
        ("- {name: a, splits: [{target: b}]}\n- {name: b, rules: [{target: a}]}", "cycle"),
    ],
)
def test_config_errors_say_where_and_why(pools: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config("pools:\n" + "\n".join("  " + line for line in pools.splitlines()))


ROUTED = PoolSpec(
    name="chat",
    rules=(RouteRule(target="long", min_prompt_chars=10, prompt_regex="a+", header="x-h"),),
    splits=(SplitArm("v1", 3), SplitArm("v2", 1)),
    split_header="x-user",
)


async def test_store_round_trips_rules_and_splits(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    await store.put_pool(ROUTED)
    await store.close()
    again = await Store.open(tmp_path)
    try:
        assert await again.load_pools() == [ROUTED]
    finally:
        await again.close()


_V2 = """
CREATE TABLE pools (name TEXT PRIMARY KEY, policy TEXT NOT NULL, policy_params TEXT NOT NULL,
    replicas INTEGER NOT NULL, template TEXT, description TEXT NOT NULL);
CREATE TABLE backends (id TEXT PRIMARY KEY, pool TEXT NOT NULL, url TEXT NOT NULL,
    weight INTEGER NOT NULL, enabled INTEGER NOT NULL, kind TEXT NOT NULL, zone TEXT NOT NULL,
    upstream_model TEXT NOT NULL, labels TEXT NOT NULL, draining INTEGER NOT NULL);
CREATE TABLE replicas (replica_id TEXT PRIMARY KEY, pool TEXT NOT NULL, agent_id TEXT NOT NULL,
    desired INTEGER NOT NULL, created_at REAL NOT NULL, gpu_indices TEXT NOT NULL DEFAULT '[]');
INSERT INTO pools VALUES ('old', 'least_in_flight', '{"k": "v"}', 0, NULL, 'kept');
INSERT INTO backends VALUES ('b1', 'old', 'http://h:1', 1, 1, 'openai', '', '', '{}', 0);
PRAGMA user_version = 2;
"""


async def test_version_2_data_dir_gets_empty_rules_and_takes_new_ones(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / DB_FILE) as db:
        await db.executescript(_V2)
        await db.commit()
    store = await Store.open(tmp_path)
    try:
        (old,) = await store.load_pools()
        assert old == PoolSpec(
            name="old", policy="least_in_flight", policy_params={"k": "v"}, description="kept"
        )
        await store.put_pool(ROUTED)
        assert {p.name: p for p in await store.load_pools()}["chat"] == ROUTED
        # Backends gained prices in version 4: old rows cost nothing, new ones keep theirs.
        (b1,) = await store.load_backends()
        assert (b1.id, b1.input_cost_per_mtok, b1.output_cost_per_mtok) == ("b1", 0.0, 0.0)
        priced = dataclasses.replace(b1, input_cost_per_mtok=0.15, output_cost_per_mtok=0.6)
        await store.put_backend(priced)
        assert await store.load_backends() == [priced]
    finally:
        await store.close()
    async with aiosqlite.connect(tmp_path / DB_FILE) as db:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
    assert row is not None and row[0] == SCHEMA_VERSION == 8


def test_snapshot_carries_rules_splits_and_header() -> None:
    pools = {"chat": ROUTED, "long": PoolSpec(name="long")}
    routes = build_routes(pools, {}, {}, {}, {})
    chat = routes["chat"]
    assert [r.target for r in chat.rules] == ["long"]
    assert chat.rules[0].min_prompt_chars == 10 and chat.rules[0].prompt_regex == "a+"
    assert chat.rules[0].header == "x-h"
    assert [(a.target, a.weight) for a in chat.splits] == [("v1", 3), ("v2", 1)]
    assert chat.split_header == "x-user"
    # A pool with nothing of its own still has a route, so it is listed and answers 503.
    assert not chat.members and not routes["long"].rules


def pool(name: str, **fields: object) -> admin_pb2.CreatePoolRequest:
    return admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name=name, **fields))  # type: ignore[arg-type]


async def test_admin_round_trip_and_snapshot(
    admin: admin_pb2_grpc.AdminServiceAsyncStub, controller: ControllerServer
) -> None:
    for name in ("v1", "v2", "long"):
        await admin.CreatePool(pool(name))
    rule = types_pb2.RouteRule(target="long", min_prompt_chars=100, metadata_key="tier")
    arms = [types_pb2.SplitArm(target="v1", weight=9), types_pb2.SplitArm(target="v2", weight=1)]
    created = await admin.CreatePool(pool("ab", rules=[rule], splits=arms, split_header="x-u"))
    got = await admin.GetPool(admin_pb2.GetPoolRequest(name="ab"))
    assert got == created
    assert list(got.rules) == [rule] and list(got.splits) == arms and got.split_header == "x-u"

    # An empty mask changes only what is set: the policy switches, the rules stay.
    updated = await admin.UpdatePool(
        admin_pb2.UpdatePoolRequest(pool=types_pb2.Pool(name="ab", policy="least_in_flight"))
    )
    assert updated.policy == "least_in_flight" and list(updated.rules) == [rule]
    # A mask naming splits with none given clears them; rules stay.
    cleared = await admin.UpdatePool(
        admin_pb2.UpdatePoolRequest(
            pool=types_pb2.Pool(name="ab"), update_mask=FieldMask(paths=["splits"])
        )
    )
    assert not cleared.splits and list(cleared.rules) == [rule]

    def carried() -> bool:
        route = controller.parts.publisher.routes.get("ab")
        return route is not None and not route.splits and route.policy == "least_in_flight"

    await eventually(carried, 5, "the snapshot follows the update")
    route = controller.parts.publisher.routes["ab"]
    assert [r.target for r in route.rules] == ["long"]


async def test_admin_refuses_bad_rules_with_actionable_errors(
    admin: admin_pb2_grpc.AdminServiceAsyncStub,
) -> None:
    await admin.CreatePool(pool("b"))
    cases = [
        (pool("a", rules=[types_pb2.RouteRule(target="nope")]), "'nope', which is not a pool"),
        (pool("a", rules=[types_pb2.RouteRule(target="")]), "rules[0].target is required"),
        (pool("a", rules=[types_pb2.RouteRule(target="a")]), "routes to itself"),
        (
            pool("a", rules=[types_pb2.RouteRule(target="b", prompt_regex="[")]),
            "rules[0]: prompt_regex '[' is not a valid regex",
        ),
        (pool("a", splits=[types_pb2.SplitArm(target="b", weight=0)]), "weight 0"),
        (pool("a", split_header="no spaces"), "not a valid HTTP header name"),
    ]
    for request, needle in cases:
        err = await refused(admin.CreatePool(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, needle
        assert needle in (err.details() or ""), err.details()

    await admin.CreatePool(pool("a", splits=[types_pb2.SplitArm(target="b", weight=1)]))
    cycle = admin_pb2.UpdatePoolRequest(
        pool=types_pb2.Pool(name="b", rules=[types_pb2.RouteRule(target="a")])
    )
    err = await refused(admin.UpdatePool(cycle))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cycle: a -> b -> a" in (err.details() or "")

    err = await refused(admin.DeletePool(admin_pb2.DeletePoolRequest(name="b")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "target of 'a'" in (err.details() or "")
    await admin.DeletePool(admin_pb2.DeletePoolRequest(name="a"))
    await admin.DeletePool(admin_pb2.DeletePoolRequest(name="b"))
