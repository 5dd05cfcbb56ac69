"""One home per recurring prompt prefix, per pool, that every gateway follows (several
gateways, prefix_aware): balanced over the members' caches, kept while sent, moved off a member
shown not to keep it."""

from __future__ import annotations

import dataclasses

from controller.prefix_homes import (
    HOME_TTL_S,
    LEFT_S,
    MOVE_GAP_S,
    PER_MEMBER,
    PER_POOL,
    PrefixHomes,
    with_homes,
)
from controller.snapshot import ModelRoute, RouteMember
from llmpool.clock import FakeClock

TOKENS = 6000


def member(mid: str, sent: dict[int, int] | None = None, **fields: object) -> RouteMember:
    """A member gateways sent these prefixes (prefix -> how many gateways) of TOKENS each."""
    sent = sent or {}
    fields.setdefault("cache_tokens", 262_144)  # Its engine reports its cache.
    return RouteMember(
        id=mid,
        url=f"http://{mid}",
        sent_prefixes=tuple(sent),
        sent_prefix_tokens=(TOKENS,) * len(sent),
        sent_prefix_senders=tuple(sent.values()),
        **fields,  # type: ignore[arg-type]
    )


def route(
    members: list[RouteMember], gateways: int = 3, policy: str = "prefix_aware"
) -> ModelRoute:
    return ModelRoute(model="p", policy=policy, members=tuple(members), gateways=gateways)


def by_member(homes: PrefixHomes) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for prefix, home in homes.homes("p").items():
        out.setdefault(home.member, []).append(prefix)
    return out


def test_prefixes_gateways_keep_sending_get_homes_balanced_over_the_members() -> None:
    homes = PrefixHomes(FakeClock())
    # Rendezvous put four of 8 groups on m0 and none on m3; every one sent by two gateways.
    members = [
        member("m0", {1: 2, 2: 2, 3: 2, 4: 2}),
        member("m1", {5: 2, 6: 2}),
        member("m2", {7: 2, 8: 2}),
        member("m3"),
    ]
    routes = homes.apply({"p": route(members)})
    placed = by_member(homes)
    assert sorted(len(v) for v in placed.values()) == [2, 2, 2, 2]
    # Those that fit stayed where they were sent: two of m0's moved, nothing else.
    assert sorted(placed["m1"]) == [5, 6] and sorted(placed["m2"]) == [7, 8]
    assert len(set(placed["m0"]) & {1, 2, 3, 4}) == 2
    # Every gateway reads them off the members.
    told = {m.id: set(m.home_prefixes) for m in routes["p"].members}
    assert told == {mid: set(v) for mid, v in placed.items()}


def test_a_prompt_sent_once_gets_no_home() -> None:
    homes = PrefixHomes(FakeClock())
    routes = homes.apply({"p": route([member("m0", {1: 1}), member("m1", {2: 1})])})
    assert homes.homes("p") == {}
    assert all(not m.home_prefixes for m in routes["p"].members)
    # Sent by a second gateway (to another member, even): it recurs.
    homes.apply({"p": route([member("m0", {1: 1}), member("m1", {2: 1, 1: 1})])})
    assert list(homes.homes("p")) == [1]


def test_bigger_caches_take_more_homes() -> None:
    homes = PrefixHomes(FakeClock())
    sent = {p: 2 for p in range(1, 11)}
    members = [
        member("small", sent, cache_tokens=16384),
        member("big", cache_tokens=65536),
    ]
    homes.apply({"p": route(members)})
    placed = by_member(homes)
    # 10 prompts of 6,000 tokens over 16k and 64k: a fifth and four fifths.
    assert len(placed["small"]) == 2 and len(placed["big"]) == 8


def test_homes_stay_while_sent_and_go_when_no_longer_sent() -> None:
    clock = FakeClock()
    homes = PrefixHomes(clock)
    first = [member("m0", {1: 2}), member("m1", {2: 2})]
    homes.apply({"p": route(first)})
    was = {p: h.member for p, h in homes.homes("p").items()}
    # A gateway's miss refuted its send there: the controller stops handing that send out, but
    # the home stays.
    clock.advance(1.0)
    homes.apply({"p": route([member("m0"), member("m1", {2: 2})])})
    assert {p: h.member for p, h in homes.homes("p").items()} == was
    clock.advance(HOME_TTL_S + 1.0)
    homes.apply({"p": route([member("m0"), member("m1", {2: 2})])})
    assert list(homes.homes("p")) == [2]


def test_a_home_found_missing_beside_others_moves_and_its_member_counts_as_small() -> None:
    clock = FakeClock()
    homes = PrefixHomes(clock)
    # Four sessions homed on m0 while it was the only member.
    sent = {1: 2, 2: 2, 3: 2, 4: 2}
    homes.apply({"p": route([member("m0", sent)])})
    clock.advance(1.0)
    # Now m0 has company, and gateways found one of them missing there: it keeps no more than
    # the other three.
    told = [member("m0", sent, missed_prefixes=(4,)), member("m1"), member("m2")]
    homes.apply({"p": route(told)})
    moved = homes.homes("p")[4].member
    assert moved != "m0"
    assert sorted(by_member(homes)["m0"]) == [1, 2, 3]
    # m0 counts as holding 18,000 tokens at most: a new group goes elsewhere, and the moved
    # one does not come back.
    clock.advance(1.0)
    more = [member("m0", {**sent, 9: 2}, missed_prefixes=(4,)), *told[1:]]
    homes.apply({"p": route(more)})
    assert homes.homes("p")[9].member != "m0"
    assert homes.homes("p")[4].member == moved
    # A miss told before a prefix was homed somewhere says nothing of it there.
    assert len(by_member(homes)["m0"]) == 3


def test_a_miss_on_a_member_holding_little_else_moves_nothing() -> None:
    clock = FakeClock()
    homes = PrefixHomes(clock)
    members = [member("m0", {1: 2, 2: 2}), member("m1", {3: 2, 4: 2})]
    homes.apply({"p": route(members)})
    placed = by_member(homes)
    clock.advance(MOVE_GAP_S + 1.0)
    # Two groups a member: a miss there is a slow hit or running requests' room, not the
    # other group pushing it out (it would be pushed out wherever it went).
    told = [dataclasses.replace(members[0], missed_prefixes=(placed["m0"][0],)), members[1]]
    homes.apply({"p": route(told)})
    assert by_member(homes) == placed


def test_what_gateways_learned_of_a_reported_cache_moves_no_home() -> None:
    # A start-up's misses taught the gateways a bound far below m0's report (3,744 tokens of a
    # 16k-token engine was seen): homes stay balanced over the reports.
    clock = FakeClock()
    homes = PrefixHomes(clock)
    members = [member("m0", {1: 2, 2: 2}), member("m1", {3: 2, 4: 2})]
    homes.apply({"p": route(members)})
    placed = by_member(homes)
    assert sorted(len(v) for v in placed.values()) == [2, 2]
    small = [dataclasses.replace(members[0], learned_cache_tokens=3744), members[1]]
    for _ in range(3):
        clock.advance(10.0)
        homes.apply({"p": route(small)})
    assert by_member(homes) == placed


def test_a_pool_with_an_engine_that_says_nothing_of_its_cache_gets_no_homes() -> None:
    homes = PrefixHomes(FakeClock())
    members = [member("m0", {1: 2, 2: 2}), member("m1", cache_tokens=0)]
    routes = homes.apply({"p": route(members)})
    assert homes.homes("p") == {}
    assert all(not m.home_prefixes for m in routes["p"].members)


def test_one_gateway_or_another_policy_gets_no_homes() -> None:
    homes = PrefixHomes(FakeClock())
    members = [member("m0", {1: 2}), member("m1")]
    alone = route(members, gateways=1)
    other = route(members, policy="least_in_flight")
    assert homes.apply({"p": alone})["p"] is alone
    assert homes.apply({"p": other})["p"] is other
    assert homes.homes("p") == {}


def test_homes_leave_members_that_leave_and_are_bounded_per_member() -> None:
    clock = FakeClock()
    homes = PrefixHomes(clock)
    homes.apply({"p": route([member("m0", {1: 2}), member("m1", {2: 2})])})
    gone = dataclasses.replace(member("m1", {2: 2}), healthy=False)
    homes.apply({"p": route([member("m0", {1: 2}), gone])})
    assert {h.member for h in homes.homes("p").values()} == {"m0"}
    many = {p: 2 for p in range(1, 2 * PER_MEMBER)}
    big = homes.apply({"p": route([member("m0", many)])})
    assert len(big["p"].members[0].home_prefixes) == PER_MEMBER
    assert LEFT_S > 0
    assert with_homes(route([member("m0")]), {}).members[0].home_prefixes == ()


def test_an_asked_prefix_is_homed_at_once_alike_for_every_gateway_that_asks() -> None:
    clock = FakeClock()
    homes = PrefixHomes(clock)
    # Before any rebuild the pool gives no homes: the gateway places the prompt itself.
    assert homes.ask("p", 1, TOKENS) == ""
    members = [member(f"m{i}", cache_tokens=16_384) for i in range(4)]
    homes.apply({"p": route(members)})
    # Four prompts of 6,000 tokens: one a member, where each fits.
    first = [homes.ask("p", p, TOKENS) for p in (11, 12, 13, 14)]
    assert sorted(first) == ["m0", "m1", "m2", "m3"]
    # Another gateway asking for one gets the same member, and so does the next rebuild.
    assert [homes.ask("p", p, TOKENS) for p in (11, 12, 13, 14)] == first
    routes = homes.apply({"p": route(members)})
    told = {p: m.id for m in routes["p"].members for p in m.home_prefixes}
    assert told == dict(zip((11, 12, 13, 14), first, strict=True))
    # A fifth goes where a second prompt leaves most room; a claim past every cache counts as
    # the largest cache only.
    assert homes.ask("p", 15, 10**9) in first
    assert homes.homes("p")[15].tokens == 16_384
    # Not sent within HOME_TTL_S, an asked home goes like any other.
    clock.advance(HOME_TTL_S + 1)
    homes.apply({"p": route(members)})
    assert homes.homes("p") == {}


def test_asks_get_no_home_where_the_pool_gives_none() -> None:
    homes = PrefixHomes(FakeClock())
    silent = [member("m0", cache_tokens=0), member("m1")]
    homes.apply({"p": route(silent), "q": route([member("m0")], gateways=1)})
    assert homes.ask("p", 1, TOKENS) == ""
    assert homes.ask("q", 1, TOKENS) == ""
    assert homes.ask("unknown", 1, TOKENS) == ""
    assert homes.homes("p") == {} and homes.homes("q") == {}


def test_asked_homes_are_bounded_per_pool() -> None:
    homes = PrefixHomes(FakeClock())
    homes.apply({"p": route([member("m0"), member("m1")])})
    for p in range(PER_POOL + 10):
        homes.ask("p", p, 100)
    held = homes.homes("p")
    assert len(held) == PER_POOL
    assert 0 not in held and PER_POOL + 9 in held
