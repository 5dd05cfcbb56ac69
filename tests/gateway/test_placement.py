"""Placement of new and spilling prefixes: the same member on every gateway, in proportion to
reported caches, and stable when a member comes or goes."""

from __future__ import annotations

import dataclasses
from collections import Counter

from gateway.members import Member, idle_member
from gateway.policies import PickContext, PolicyRegistry, PrefixAware
from gateway.policies.placement import Placement
from gateway.policies.ticket import Ticket
from llmpool.clock import FakeClock

MEMBERS = [idle_member(f"m{i}") for i in range(4)]


def ids(members: list[Member]) -> list[str]:
    return [m.id for m in members]


def warmed() -> PrefixAware:
    """A prefix_aware gateway over MEMBERS that learned the prefill speed (0.1 s a prompt) from
    six expected misses."""
    g = PolicyRegistry(clock=FakeClock()).build("prefix_aware")
    assert isinstance(g, PrefixAware)
    g.on_members(MEMBERS)
    g.on_snapshot(MEMBERS)
    for n in range(6):
        ctx = PickContext(model="m", payload={"prompt": f"warm-up {n} " * 900, "stream": True})
        g.pick(MEMBERS, ctx)
        g.settle(ctx.ticket, 0.1, 0)
    g.drain_missed()
    return g


def test_every_instance_places_a_prefix_on_the_same_member_whatever_the_order() -> None:
    one, two = Placement(), Placement()
    one.update(MEMBERS)
    two.update(list(reversed(MEMBERS)))
    for key in range(1, 2000, 7):
        a = MEMBERS[one.choose(key, ids(MEMBERS))].id
        flipped = list(reversed(MEMBERS))
        b = flipped[two.choose(key, ids(flipped))].id
        assert a == b


def test_members_that_report_more_cache_take_more_prefixes() -> None:
    members = [
        idle_member("small", cache_tokens=8192),
        idle_member("large", cache_tokens=65536),
    ]
    place = Placement()
    place.update(members)
    won = Counter(members[place.choose(k * 7919, ids(members))].id for k in range(4000))
    # Weights 1:8 (rendezvous with weights): the large one wins about 8 in 9.
    assert 0.84 < won["large"] / 4000 < 0.94


def test_learned_caches_weigh_members_that_report_nothing_in_powers_of_two() -> None:
    members = [idle_member("small"), idle_member("large")]
    place = Placement()
    place.update(members)
    even = Counter(members[place.choose(k * 7919, ids(members))].id for k in range(4000))
    assert 0.45 < even["large"] / 4000 < 0.55
    # Learned 8,000 and 70,000 tokens: weighed as 4,096 and 65,536 (1:16).
    place.learn("small", 8000)
    place.learn("large", 70000)
    won = Counter(members[place.choose(k * 7919, ids(members))].id for k in range(4000))
    assert 0.91 < won["large"] / 4000 < 0.97
    # Another gateway that learned a little differently weighs them the same.
    other = Placement()
    other.update(members)
    other.learn("small", 6000)
    other.learn("large", 100000)
    assert all(
        place.choose(k, ids(members)) == other.choose(k, ids(members)) for k in range(1, 2000, 3)
    )
    # A report outweighs what was learned.
    reported = [idle_member("small", cache_tokens=65536), idle_member("large")]
    place.update(reported)
    won = Counter(reported[place.choose(k * 7919, ids(reported))].id for k in range(4000))
    assert 0.45 < won["large"] / 4000 < 0.55


def test_caches_gateways_learned_weigh_alike_on_every_gateway() -> None:
    """Gateways that learned different sizes themselves place alike once the controller hands
    them what gateways learned (Member.learned_cache_tokens): it outweighs their own."""
    shared = [
        idle_member("small", learned_cache_tokens=8000),
        idle_member("large", learned_cache_tokens=70000),
    ]
    one, two = Placement(), Placement()
    one.learn("small", 70000)
    two.learn("large", 2000)
    one.update(shared)
    two.update(shared)
    assert all(one.choose(k, ids(shared)) == two.choose(k, ids(shared)) for k in range(1, 4000, 3))
    won = Counter(shared[one.choose(k * 7919, ids(shared))].id for k in range(4000))
    assert 0.91 < won["large"] / 4000 < 0.97  # 4,096 against 65,536


def test_removing_a_member_moves_only_its_prefixes() -> None:
    place = Placement()
    place.update(MEMBERS)
    before = {k: place.choose(k, ids(MEMBERS)) for k in range(1, 3000)}
    rest = MEMBERS[:3]
    place.update(rest)
    for key, was in before.items():
        now = place.choose(key, ids(rest))
        if was != 3:
            assert now == was


def test_two_gateways_put_each_new_prefix_on_one_member() -> None:
    """Two prefix_aware policies (two gateways, separate indexes, separate processes' worth of
    state) given the same new prefixes with the same loads choose the same members."""
    gateways = [PolicyRegistry(clock=FakeClock()).build("prefix_aware") for _ in range(2)]
    for g in gateways:
        assert isinstance(g, PrefixAware)
        g.on_members(MEMBERS)
        g.on_snapshot(MEMBERS)
    for n in range(40):
        text = f"system prompt of group {n}. " * 200
        picks = {
            g.pick(MEMBERS, PickContext(model="m", payload={"prompt": text})).id for g in gateways
        }
        assert len(picks) == 1


def test_a_member_learned_small_weighs_less_than_those_nothing_is_known_of() -> None:
    """The others weigh as the policy's starting guess, not as the one learned: a member found
    thrashing must not keep taking its share of new prefixes."""
    members = [idle_member(f"m{i}") for i in range(4)]
    place = Placement(default_tokens=262144)
    place.update(members)
    place.learn("m0", 4096)
    won = Counter(members[place.choose(k * 7919, ids(members))].id for k in range(8000))
    # 4,096 against 3 x 262,144: about 1 in 193.
    assert won["m0"] / 8000 < 0.02
    assert all(0.3 < won[f"m{i}"] / 8000 < 0.37 for i in (1, 2, 3))
    # Where some members report, one of no kind weighs as their median report.
    reporting = [
        idle_member("a", cache_tokens=8192),
        idle_member("b", cache_tokens=8192),
        idle_member("c"),
    ]
    place = Placement(default_tokens=262144)
    place.update(reporting)
    won = Counter(reporting[place.choose(k * 7919, ids(reporting))].id for k in range(6000))
    assert all(0.28 < won[m] / 6000 < 0.39 for m in "abc")


def test_a_prefix_that_missed_at_a_member_is_placed_elsewhere_next() -> None:
    """A static member (no report) that lost a prefix the index said it held: the next request
    of that prefix, placed afresh, passes over it (its rendezvous place would send it straight
    back to the member that could not keep it), and every gateway that saw the miss agrees on
    where it goes instead."""
    text = "a session's context " * 800
    moved: set[str] = set()
    for g in (warmed(), warmed()):
        ctx = PickContext(model="m", payload={"prompt": text, "stream": True})
        home = g.pick(MEMBERS, ctx).id
        g.settle(ctx.ticket, 0.1, 0)
        # The next turn goes home, expecting a hit; it prefilled it all again, alone there.
        ctx = PickContext(model="m", payload={"prompt": text + " next", "stream": True})
        assert g.pick(MEMBERS, ctx).id == home
        assert isinstance(ctx.ticket, Ticket) and ctx.ticket.held > 0
        g.settle(ctx.ticket, 0.3, 0)
        ctx = PickContext(model="m", payload={"prompt": text + " again", "stream": True})
        moved.add(g.pick(MEMBERS, ctx).id)
        assert home not in moved
    assert len(moved) == 1


def test_a_miss_is_judged_at_the_first_byte_and_what_it_pushed_out_goes_elsewhere() -> None:
    """Two prompt groups on one static member too small for both: the older group's request
    that comes back slow at its first byte is a miss, judged there and then (its answer may
    take seconds more): the newer group, which its prefill pushed out, is placed elsewhere
    from the next request on, the older stays; the answer's end judges nothing again."""
    g = warmed()
    one = MEMBERS[:1]
    home = one[0].id
    a = "group a's system prompt " * 700
    b = "group b's system prompt " * 700
    for text in (a, b):
        ctx = PickContext(model="m", payload={"prompt": text, "stream": True})
        assert g.pick(one, ctx).id == home
        g.began(ctx.ticket, 0.1)
        g.settle(ctx.ticket, 0.1, 0)
    ctx = PickContext(model="m", payload={"prompt": a + " q2", "stream": True})
    assert g.pick(MEMBERS, ctx).id == home
    slow = ctx.ticket
    assert isinstance(slow, Ticket) and slow.held > 0 and slow.reach > slow.held
    g.began(slow, 0.4)
    assert slow.judged and g.sizer.outcomes[home].misses == 1
    ctx = PickContext(model="m", payload={"prompt": b + " q3", "stream": True})
    assert g.pick(MEMBERS, ctx).id != home
    ctx = PickContext(model="m", payload={"prompt": a + " q3", "stream": True})
    assert g.pick(MEMBERS, ctx).id == home
    g.settle(slow, 0.4, 0)
    assert g.sizer.outcomes[home].misses == 1


def test_misses_other_gateways_found_move_the_prefix_here_too() -> None:
    """A gateway reports the prefixes it found members no longer held (drain_missed, once
    each); one handed such a prefix on a member (Member.missed_prefixes) forgets it there and
    places it where the gateway that found the miss does."""
    finder, other = warmed(), warmed()
    text = "a session's context " * 800
    ctx = PickContext(model="m", payload={"prompt": text, "stream": True})
    home = other.pick(MEMBERS, ctx).id
    other.settle(ctx.ticket, 0.1, 0)
    assert finder.pick(MEMBERS, PickContext(model="m", payload={"prompt": text})).id == home
    # The finder's next request of it expected a hit there and prefilled it all again.
    ctx = PickContext(model="m", payload={"prompt": text + " next", "stream": True})
    assert finder.pick(MEMBERS, ctx).id == home
    assert isinstance(ctx.ticket, Ticket) and ctx.ticket.held > 0
    prefix = ctx.ticket.hashes[0]
    finder.settle(ctx.ticket, 0.3, 0)
    other.drain_missed()
    assert finder.drain_missed() == {home: [prefix]} and finder.drain_missed() == {}
    moved = finder.pick(MEMBERS, PickContext(model="m", payload={"prompt": text + " again"})).id
    assert moved != home
    # The controller hands it to the other gateway on that member.
    told = [
        dataclasses.replace(m, missed_prefixes=(prefix,)) if m.id == home else m for m in MEMBERS
    ]
    ctx = PickContext(model="m", payload={"prompt": text + " more"})
    other.on_snapshot(told)
    assert other.pick(told, ctx).id == moved
    # Handed again with the next snapshot, it is not acted on twice (the prefix may have come
    # back there since), and is not reported again.
    other.index.insert(home, other.index.match(text))
    other.on_snapshot(told)
    assert home in other.index.match(text).depth and other.drain_missed() == {}
    # Once the controller stopped handing it out, a new miss there is acted on again.
    other.on_snapshot(MEMBERS)
    other.on_snapshot(told)
    assert home not in other.index.match(text).depth


def test_a_new_prefix_that_waited_for_room_at_its_place_goes_elsewhere_next() -> None:
    """The first request of a prefix goes to its place (presumed); one that waited there over
    twice its prefill beside another prefix is forgotten there, reported, and placed elsewhere."""
    g = warmed()
    text = "a second prompt group " * 400
    ctx = PickContext(model="m", payload={"prompt": text, "stream": True})
    place = g.pick(MEMBERS, ctx).id
    assert isinstance(ctx.ticket, Ticket) and ctx.ticket.presumed
    # The member held another group beside it.
    other = "another group already there " * 400
    g.index.insert(place, g.index.match(other))
    g.settle(ctx.ticket, 0.6, 0)
    prefix = ctx.ticket.hashes[0]
    assert g.missed.passes_over(prefix) == (place,)
    assert g.drain_missed() == {place: [prefix]}
    ctx = PickContext(model="m", payload={"prompt": text + " next", "stream": True})
    assert g.pick(MEMBERS, ctx).id != place


def _homes(gateways: int, caps_known: bool = False) -> Counter[str]:
    """Where eight prompt groups of one size go from a gateway that knows no member's cache
    (or knows every one's), each group's first request answered before the next arrives."""
    policy = PolicyRegistry(clock=FakeClock()).build("prefix_aware")
    assert isinstance(policy, PrefixAware)
    policy.on_gateways(gateways)
    policy.on_members(MEMBERS)
    policy.on_snapshot(MEMBERS)
    if caps_known:
        for m in MEMBERS:
            policy.index.set_cap(m.id, 1 << 20)
    homes: Counter[str] = Counter()
    for g in range(8):
        ctx = PickContext(model="m", payload={"prompt": f"group {g} system prompt " * 300})
        homes[policy.pick(MEMBERS, ctx).id] += 1
    return homes


def test_a_gateway_alone_spreads_new_prefix_groups_evenly_while_caches_are_unknown() -> None:
    # Rendezvous (the same member on every gateway) puts three of these eight groups on one
    # member and one on another: with every cache the same, the first thrashes.
    rendezvous = _homes(gateways=3)
    assert sorted(rendezvous.values()) != [2, 2, 2, 2]
    # A gateway alone knows all that was sent: it evens them out.
    assert sorted(_homes(gateways=1).values()) == [2, 2, 2, 2]
    # Several gateways each count only their own sends until the controller tells them the
    # others' (a second later): balancing on that would place a group differently on each,
    # so they keep to rendezvous.
    assert _homes(gateways=2) == rendezvous
    # Where every cache is known the costs weigh what each holds: rendezvous again.
    assert _homes(gateways=1, caps_known=True) == rendezvous
