"""RoutingTable: full snapshots replace, deltas patch, stale deltas drop, policies persist."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.policies import LeastInFlight, RoundRobin
from gateway.routing import RoutingTable


def test_full_replaces_and_delta_patches(kit: Any) -> None:
    table = RoutingTable()
    assert not table.received and table.models() == []
    table.apply(
        kit.snapshot(
            1,
            [
                kit.route("a", [kit.member("x", "http://h:1")]),
                kit.route("b", [kit.member("y", "http://h:2")]),
            ],
        )
    )
    assert table.received and table.version == 1 and table.models() == ["a", "b"]
    assert table.created_s == 1_700_000_000

    table.apply(
        kit.snapshot(
            2,
            [
                kit.route("b", [kit.member("z", "http://h:3")]),
                kit.route("c", [kit.member("w", "http://h:4")]),
            ],
            full=False,
            removed=["a"],
        )
    )
    assert table.models() == ["b", "c"]
    route_b = table.get("b")
    assert route_b is not None and [m.id for m in route_b.members] == ["z"]

    table.apply(kit.snapshot(3, [kit.route("d", [])]))
    assert table.models() == ["d"] and table.version == 3


def test_stale_delta_ignored_but_full_always_applies(kit: Any) -> None:
    table = RoutingTable()
    table.apply(kit.snapshot(5, [kit.route("a", [])]))
    assert not table.apply(kit.snapshot(4, [kit.route("b", [])], full=False))
    assert table.models() == ["a"]
    # A restarted controller may count from 1 again: its full snapshot wins.
    assert table.apply(kit.snapshot(1, [kit.route("c", [])]))
    assert table.models() == ["c"] and table.version == 1


def test_candidates_and_precomputed_urls(kit: Any) -> None:
    table = RoutingTable()
    table.apply(
        kit.snapshot(
            1,
            [
                kit.route(
                    "m",
                    [
                        kit.member("ok", "http://h:1/"),
                        kit.member("sick", "http://h:2", healthy=False),
                        kit.member("drain", "http://h:3", draining=True),
                        kit.member("alias", "http://h:4/v1", upstream_model="real"),
                        kit.member("same", "http://h:5", upstream_model="m"),
                    ],
                )
            ],
        )
    )
    route = table.get("m")
    assert route is not None
    assert [m.id for m in route.candidates] == ["ok", "alias", "same"]
    ok, alias, same = route.candidates
    assert ok.chat_url == "http://h:1/v1/chat/completions"
    assert alias.embeddings_url == "http://h:4/v1/embeddings"
    assert alias.endpoint_url("/v1/completions") == "http://h:4/v1/completions"
    assert alias.upstream_model == "real"
    assert same.upstream_model is None  # Same name: the body goes unchanged.


def test_policy_object_survives_load_updates(kit: Any) -> None:
    table = RoutingTable()
    table.apply(
        kit.snapshot(1, [kit.route("m", [kit.member("a", "http://h:1")], policy="least_in_flight")])
    )
    first = table.get("m")
    table.apply(
        kit.snapshot(
            2,
            [
                kit.route(
                    "m", [kit.member("a", "http://h:1", in_flight=3)], policy="least_in_flight"
                )
            ],
            full=False,
        )
    )
    second = table.get("m")
    assert first is not None and second is not None
    assert isinstance(second.policy, LeastInFlight) and second.policy is first.policy
    assert second.members[0].in_flight == 3
    table.apply(kit.snapshot(3, [kit.route("m", [kit.member("a", "http://h:1")])], full=False))
    third = table.get("m")
    assert third is not None and isinstance(third.policy, RoundRobin)


def test_unknown_policy_falls_back_and_logs_once(
    kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    table = RoutingTable()
    with caplog.at_level(logging.WARNING, logger="gateway.routing"):
        for version in (1, 2, 3):
            table.apply(
                kit.snapshot(
                    version,
                    [
                        kit.route("m", [], policy="telepathy"),
                        kit.route("n", [], policy="telepathy"),
                    ],
                )
            )
    route = table.get("m")
    assert route is not None and isinstance(route.policy, RoundRobin)
    warnings = [r for r in caplog.records if "unknown routing policy" in r.getMessage()]
    assert len(warnings) == 1


def test_a_restarted_controllers_provisional_tables_merge_until_final(kit: Any) -> None:
    """Members missing from a provisional table may be on agents not yet back: the gateway keeps
    them (and models it lacks) until a final table, which then decides."""
    table = RoutingTable()
    held = [kit.member("r1", "http://h:1"), kit.member("r2", "http://h:2")]
    table.apply(kit.snapshot(10, [kit.route("a", held), kit.route("b", [])]))

    # The restart's first table: pool a without members, b gone, c new.
    table.apply(kit.snapshot(20, [kit.route("a", []), kit.route("c", [])], provisional=True))
    route_a = table.get("a")
    assert route_a is not None and [m.id for m in route_a.candidates] == ["r1", "r2"]
    assert table.models() == ["a", "b", "c"]

    # One agent is back: its replica's fresh state wins, the other one is still carried.
    back = kit.member("r1", "http://h:1", in_flight=3.0)
    table.apply(kit.snapshot(21, [kit.route("a", [back])], full=False, provisional=True))
    route_a = table.get("a")
    assert route_a is not None and [(m.id, m.in_flight) for m in route_a.members] == [
        ("r1", 3.0),
        ("r2", 0.0),
    ]

    # Final: what it says goes, removals included.
    table.apply(kit.snapshot(22, [kit.route("a", [back]), kit.route("c", [])]))
    route_a = table.get("a")
    assert route_a is not None and [m.id for m in route_a.members] == ["r1"]
    assert table.models() == ["a", "c"]


def test_a_new_gateway_takes_a_provisional_table_as_it_is(kit: Any) -> None:
    table = RoutingTable()
    table.apply(kit.snapshot(20, [kit.route("a", [])], provisional=True))
    assert table.received and table.models() == ["a"]
    # Nothing was carried: a later final table replaces it as usual.
    table.apply(kit.snapshot(21, [kit.route("b", [])]))
    assert table.models() == ["b"]
