"""What other gateways sent members: counted in their caches here, and followed."""

from __future__ import annotations

import dataclasses
import math

from gateway.cache_metrics import sent_prefixes
from gateway.members import Member, idle_member
from gateway.policies import PickContext, PolicyRegistry, PrefixAware
from gateway.policies.cache_estimate import REPORTED_USABLE
from gateway.policies.prefix_aware import CHARS_PER_TOKEN
from gateway.policies.shared_sends import MINE_S, STALE_S, TO_REPORT
from gateway.routing import RoutingTable
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2

# Two engines whose reported caches hold 8,192 tokens of prompts (REPORTED_USABLE of them).
MEMBERS = [idle_member(f"m{i}", cache_tokens=math.ceil(8192 / REPORTED_USABLE)) for i in range(2)]
GROUP = "a shared system prompt of one group " * 300  # ~2,700 tokens


def gateway() -> PrefixAware:
    g = PolicyRegistry(clock=FakeClock()).build("prefix_aware")
    assert isinstance(g, PrefixAware)
    g.on_members(MEMBERS)
    g.on_snapshot(MEMBERS)
    return g


def told(
    members: list[Member], at: str, sent: dict[str, dict[int, int]], senders: int = 1
) -> list[Member]:
    """The snapshot a gateway gets once the controller merged gateways' reports (`senders` of
    them sent each prefix)."""
    return [
        dataclasses.replace(
            m,
            sent_prefixes=tuple(sent[at]),
            sent_prefix_tokens=tuple(sent[at].values()),
            sent_prefix_senders=(senders,) * len(sent[at]),
        )
        if m.id == at
        else m
        for m in members
    ]


def test_a_prefix_another_gateway_placed_is_followed_not_placed_again() -> None:
    first, second = gateway(), gateway()
    ctx = PickContext(model="m", payload={"prompt": GROUP + "question one"})
    home = first.pick(MEMBERS, ctx).id
    sent = first.drain_sent()
    assert list(sent) == [home] and first.drain_sent() == {}
    (tokens,) = sent[home].values()
    # In tokens: the whole prompt (4 bytes a token) as the engine keeps it, past the index's
    # last whole block (blocks double in size along a prompt).
    size = first.index.block_chars
    assert tokens == -(-len(ctx.prefix_key) // size) * size // CHARS_PER_TOKEN
    assert tokens >= first.index.block_count(ctx.prefix_key) * size // CHARS_PER_TOKEN
    # Rendezvous would have sent it to the same member; make the other member its place by
    # telling the second gateway that the first put it there.
    away = next(m.id for m in MEMBERS if m.id != home)
    moved = {away: sent[home]}
    snapshot = told(MEMBERS, away, moved)
    second.on_snapshot(snapshot)
    ctx = PickContext(model="m", payload={"prompt": GROUP + "question two", "stream": True})
    assert second.pick(snapshot, ctx).id == away
    # Taken as held there: the ticket expects the prompt's shared part cached.
    assert ctx.ticket is not None and ctx.ticket.held > 0 and not ctx.ticket.presumed


def test_others_sends_take_room_in_a_members_cache_and_new_prefixes_go_elsewhere() -> None:
    g = gateway()
    room = g.index.record("m0").room
    assert room == g.index.record("m1").room
    # Other gateways sent m0 three prompt groups lately (oldest first): the latest two, half
    # its cache, are taken as still there; the oldest, past that, as gone.
    snapshot = told(MEMBERS, "m0", {"m0": {100: 2000, 101: 2000, 102: 2000}})
    g.on_snapshot(snapshot)
    units = 2000 * CHARS_PER_TOKEN // g.index.block_chars
    assert g.sends.foreign["m0"] == g.index.record("m0").foreign == 2 * units
    assert g.index.record("m0").room == room - 2 * units
    assert set(g.sends.by_prefix) == {101, 102}
    # A new prefix whose place is m0 (where nothing is counted), too large for what is left
    # there, goes to m1.
    text = next(
        t
        for t in (f"new group {n} " * 2100 for n in range(64))
        if gateway().pick(MEMBERS, PickContext(model="m", payload={"prompt": t})).id == "m0"
    )
    assert g.pick(snapshot, PickContext(model="m", payload={"prompt": text})).id == "m1"
    # The claims expire at the controller: the room comes back.
    g.on_snapshot(MEMBERS)
    assert g.index.record("m0").room == room and g.index.record("m0").foreign == 0


def test_a_gateways_own_sends_coming_back_are_not_counted_twice() -> None:
    g = gateway()
    ctx = PickContext(model="m", payload={"prompt": GROUP + "question"})
    home = g.pick(MEMBERS, ctx).id
    sent = g.drain_sent()
    g.on_snapshot(told(MEMBERS, home, sent))
    assert g.sends.foreign == {} and g.sends.by_prefix == {}
    assert g.index.record(home).foreign == 0
    # Another gateway sent it there too, and this one's index no longer holds it (it bounds
    # the member below what it took): the engine holds it for the other, so it counts.
    g.index.unhold(home, g.index.match(ctx.prefix_key).hashes)
    g.on_snapshot(told(MEMBERS, home, sent, senders=2))
    assert g.index.record(home).foreign > 0
    # Its own report long past (MINE_S): one sender is another gateway.
    assert isinstance(g.clock, FakeClock)
    g.clock.advance(MINE_S + 1.0)
    g.on_snapshot(MEMBERS)
    g.on_snapshot(told(MEMBERS, home, sent))
    assert g.index.record(home).foreign > 0


def test_sends_go_out_with_usage_bounded_per_member() -> None:
    table = RoutingTable()
    members = [gateway_pb2.Member(id="a", url="http://h/a", healthy=True, weight=1)]
    route = gateway_pb2.ModelRoute(model="m", policy="prefix_aware", members=members)
    table.apply(gateway_pb2.RoutingSnapshot(version=1, full=True, routes=[route]))
    found = table.get("m")
    assert found is not None and isinstance(found.policy, PrefixAware)
    for n in range(TO_REPORT + 10):
        ctx = PickContext(model="m", payload={"prompt": f"group {n} " * 100})
        found.policy.pick(found.candidates, ctx)
    out = sent_prefixes(table)
    assert list(out) == ["a"] and len(out["a"]) == TO_REPORT
    assert all(t > 0 for t in out["a"].values())
    assert sent_prefixes(table) == {}


def test_others_new_sends_count_in_how_deep_a_prefix_sits_in_a_members_lru() -> None:
    """Held.reach (what a member took in since a prefix was last sent there) counts what other
    gateways sent it since, once per prefix: a miss after much traffic from them is not taken
    for a small cache."""
    g = gateway()
    ctx = PickContext(model="m", payload={"prompt": GROUP + "question"})
    home = g.pick(MEMBERS, ctx).id
    record = g.index.record(home)
    match = g.index.match(ctx.prefix_key)
    held = match.depth[home][0]
    assert record.reach(match.key, held) == held
    snapshot = told(MEMBERS, home, {home: {201: 1280}})  # 40 units of 128 bytes
    g.on_snapshot(snapshot)
    g.on_snapshot(told(MEMBERS, home, {home: {201: 1280, 202: 640}}))
    assert record.reach(match.key, held) == held + 40 + 20


def test_without_snapshots_the_others_sends_are_dropped_and_own_routing_goes_on() -> None:
    """The controller away: no snapshot tells the others' sends again, and after STALE_S the
    gateway routes on its own index alone."""
    g = gateway()
    snapshot = told(MEMBERS, "m0", {"m0": {101: 3500, 102: 3500}})
    g.on_snapshot(snapshot)
    assert g.index.record("m0").foreign > 0
    assert isinstance(g.clock, FakeClock)
    g.clock.advance(STALE_S + 1.0)
    g.pick(snapshot, PickContext(model="m", payload={"prompt": "a request " * 200}))
    assert g.sends.by_prefix == {} and g.index.record("m0").foreign == 0


def test_members_of_unknown_cache_take_none_of_the_others_sends_as_claims() -> None:
    """A static backend whose cache nothing reported or taught: the others' sends of the last
    30 s cannot be weighed against it (a small one evicted most long ago); left out of its room
    and claims until its cap is learned, kept only as where the others put each prefix."""
    g = PolicyRegistry(clock=FakeClock()).build("prefix_aware")
    assert isinstance(g, PrefixAware)
    unknown = [idle_member(f"m{i}") for i in range(2)]
    g.on_members(unknown)
    g.on_snapshot(told(unknown, "m0", {"m0": {101: 2000}}))
    assert g.sends.foreign == {} and g.sends.by_prefix == {}
    assert g.sends.placed == {101: ("m0",)}
    g.sizer.on_report("m0", 8192)  # as once learned or reported
    g.on_snapshot(told(unknown, "m0", {"m0": {101: 2000, 102: 10}}))
    assert set(g.sends.by_prefix) == {101, 102}


def test_a_new_prefix_goes_to_its_place_where_others_put_it_though_ours_run_there() -> None:
    """A static backend: the others' sends are no claim that it still holds a prefix, but they
    say where the others put it. A prefix new to this gateway whose place is among those goes
    there even while this gateway's own request of another prefix runs there (the others count
    that as one request in flight, not by its footprint; seen, three gateways each of which met
    a group first while its own request decoded at the group's place put the group on three
    members). Not where it was found missing, not past a queue of our prefills there, and not
    after another gateway's spill elsewhere (onto a small cache that is what thrashes)."""
    clock = FakeClock()
    unknown = [idle_member(f"m{i}") for i in range(2)]

    def fresh(snapshot: list[Member] | None = None) -> PrefixAware:
        g = PolicyRegistry(clock=clock).build("prefix_aware")
        assert isinstance(g, PrefixAware)
        g.on_members(unknown)
        g.on_snapshot(snapshot or unknown)
        return g

    def ask(g: PrefixAware, in_flight: dict[str, int]) -> str:
        ctx = PickContext(model="m", payload={"prompt": GROUP + "q"}, in_flight=in_flight)
        return g.pick(unknown, ctx).id

    ctx = PickContext(model="m", payload={"prompt": GROUP + "question"})
    home = fresh().pick(unknown, ctx).id
    away = next(m.id for m in unknown if m.id != home)
    at_home = [m for m in unknown if m.id == home]
    prefix = fresh().index.match(ctx.prefix_key).key
    snapshot = told(unknown, home, {home: {prefix: 2700}})

    def running(g: PrefixAware) -> PrefixAware:
        """Our request of another prefix at home: sent, prefilled (time moves on), answering."""
        earlier = PickContext(model="m", payload={"prompt": "earlier " * 1200, "stream": True})
        g.pick(at_home, earlier)
        g.began(earlier.ticket)
        clock.advance(5.0)
        return g

    assert ask(running(fresh(snapshot)), {home: 1}) == home
    # Without the others' sends: its running request there sends it elsewhere.
    assert ask(running(fresh()), {home: 1}) == away
    # Found missing there: placed afresh, elsewhere.
    missed = [
        dataclasses.replace(m, missed_prefixes=(prefix,)) if m.id == home else m for m in snapshot
    ]
    assert ask(running(fresh(missed)), {home: 1}) == away
    # Our prefills still queued there, more than a hit saves: elsewhere.
    queued = fresh(snapshot)
    for n in range(3):
        queued.pick(at_home, PickContext(model="m", payload={"prompt": f"queued {n} " * 1200}))
    assert ask(queued, {home: 3}) == away
    # Another gateway's spill elsewhere is not followed: the prefix goes to its place.
    assert ask(fresh(told(unknown, away, {away: {prefix: 2700}})), {}) == home


def test_with_other_gateways_about_a_new_prefix_goes_to_its_place_though_ours_run_there() -> None:
    """Once other gateways are known to send (their sends of any prefix come with snapshots),
    a prefix new to this gateway is judged at its place as they judge it, leaving out this
    gateway's own running requests there, while such prefixes are found cached at their place
    often enough (the learned `shared`): else each gateway meets each group first while busy
    somewhere different and puts it somewhere different. Alone (no others' sends), or where new
    prefixes are never found cached (unique prompts), its own requests count."""
    clock = FakeClock()
    unknown = [idle_member(f"m{i}") for i in range(2)]
    ids = [m.id for m in unknown]
    others = told(unknown, "m1", {"m1": {12345: 2000}})

    def pick(snapshot: list[Member], shared: float) -> str:
        g = PolicyRegistry(clock=clock).build("prefix_aware")
        assert isinstance(g, PrefixAware)
        g.on_members(unknown)
        g.on_snapshot(snapshot)
        # A prompt whose place is m0, where this gateway's request of another prompt runs.
        text = next(
            t
            for t in (f"{n} {GROUP}" for n in range(100))
            if g._home(g.index.match(t).key, ids) == "m0"
        )
        earlier = PickContext(model="m", payload={"prompt": "earlier " * 1200, "stream": True})
        g.pick(unknown[:1], earlier)
        g.began(earlier.ticket)
        clock.advance(5.0)
        g.shared = shared
        ctx = PickContext(model="m", payload={"prompt": text}, in_flight={"m0": 1})
        return g.pick(unknown, ctx).id

    assert pick(others, 0.25) == "m0"
    assert pick(unknown, 0.25) == "m1"
    assert pick(others, 0.05) == "m1"
