"""The controller's homes as a gateway follows them (Member.home_prefixes): with several
gateways a prefix goes to its home and nowhere else; alone, or without snapshots, as before."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client import CollectorRegistry

from gateway.cache_metrics import urgent
from gateway.controller_link import ControllerLink
from gateway.members import Member, idle_member
from gateway.metrics import GatewayMetrics
from gateway.policies import PickContext, PolicyRegistry, PrefixAware
from gateway.policies.homes import ASK_MIN_TOKENS, ASKED_S, RECUR_WINDOW, overloaded
from gateway.policies.prefix_aware import CHARS_PER_TOKEN
from gateway.policies.shared_sends import STALE_S
from gateway.routing import RoutingTable
from gateway.usage import UsageTracker
from llmpool.clock import FakeClock

MEMBERS = [idle_member(f"m{i}", cache_tokens=8192) for i in range(2)]
GROUP = "a shared system prompt of one group " * 300  # ~2,700 tokens


def gateway(clock: FakeClock, gateways: int = 3) -> PrefixAware:
    g = PolicyRegistry(clock=clock).build("prefix_aware")
    assert isinstance(g, PrefixAware)
    g.on_gateways(gateways)
    g.on_members(MEMBERS)
    g.on_snapshot(MEMBERS)
    return g


def homed(at: str, prefix: int) -> list[Member]:
    return [dataclasses.replace(m, home_prefixes=(prefix,)) if m.id == at else m for m in MEMBERS]


def ask(g: PrefixAware, question: str) -> tuple[str, PickContext]:
    ctx = PickContext(model="m", payload={"prompt": GROUP + question, "stream": True})
    return g.pick(MEMBERS, ctx).id, ctx


def test_a_prefix_goes_to_its_home_and_is_forgotten_where_this_gateway_put_it() -> None:
    g = gateway(FakeClock())
    first, ctx = ask(g, "one")
    prefix = g.index.match(ctx.prefix_key).key
    assert first in g.index.match(ctx.prefix_key).depth
    home = next(m.id for m in MEMBERS if m.id != first)
    g.on_snapshot(homed(home, prefix))
    # Its copy where this gateway sent it goes cold as every gateway sends it home.
    assert first not in g.index.match(ctx.prefix_key).depth
    for question, presumed in (("two", True), ("three", False)):
        chosen, ctx = ask(g, question)
        assert chosen == home
        # Taken as cached there: the ticket expects the shared part held. Where this gateway
        # never sent it, presumed (another gateway may have; a miss is the home's first fill).
        assert ctx.ticket is not None and ctx.ticket.held > 0
        assert ctx.ticket.presumed is presumed


def test_a_homed_prefix_goes_home_past_some_load_and_spills_only_when_overloaded() -> None:
    g = gateway(FakeClock())
    first, ctx = ask(g, "one")
    prefix = g.index.match(ctx.prefix_key).key
    home = next(m.id for m in MEMBERS if m.id != first)
    g.on_snapshot(homed(home, prefix))

    def ask_loaded(n_home: int, n_other: int) -> str:
        loads = {home: n_home, first: n_other}
        members = [dataclasses.replace(m, in_flight=loads[m.id]) for m in MEMBERS]
        c = PickContext(model="m", payload={"prompt": GROUP + "again", "stream": True})
        return g.pick(members, c).id

    # Three more requests there than at the other member: still home (a spill would evict
    # what the controller homed at the other).
    assert ask_loaded(3, 0) == home
    # Far past the others' mean (OVERLOAD x it + SLACK): placed as before, by cost.
    assert ask_loaded(40, 0) == first
    assert overloaded([20.0, 4.0, 6.0], 0) and not overloaded([12.0, 4.0, 6.0], 0)


def test_sends_report_the_whole_prompt_as_the_engine_keeps_it() -> None:
    g = gateway(FakeClock())
    member_id, ctx = ask(g, "one")
    sent = g.drain_sent()[member_id]
    # Past the index's last whole block (blocks double in size along a long prompt): the
    # prompt's bytes over CHARS_PER_TOKEN, rounded up to a first block's size.
    size = g.index.block_chars
    whole = g.index.match(ctx.prefix_key).blocks * size // CHARS_PER_TOKEN
    (tokens,) = sent.values()
    assert tokens == -(-len(ctx.prefix_key) // size) * size // CHARS_PER_TOKEN
    assert whole < 0.9 * tokens


def test_a_gateway_alone_and_one_without_snapshots_route_as_before() -> None:
    clock = FakeClock()
    alone = gateway(clock, gateways=1)
    first, ctx = ask(alone, "one")
    prefix = alone.index.match(ctx.prefix_key).key
    home = next(m.id for m in MEMBERS if m.id != first)
    alone.on_snapshot(homed(home, prefix))
    assert ask(alone, "two")[0] == first
    several = gateway(clock)
    first, _ = ask(several, "one")
    home = next(m.id for m in MEMBERS if m.id != first)
    several.on_snapshot(homed(home, prefix))
    assert ask(several, "two")[0] == home
    # The controller has been away too long: what it said is no longer followed.
    clock.advance(STALE_S + 1.0)
    several.index.insert(first, several.index.match(ctx.prefix_key))
    assert ask(several, "three")[0] == first


def test_a_homed_prefix_missed_with_other_gateways_about_asks_for_an_early_report() -> None:
    clock = FakeClock()
    g = gateway(clock)
    table = RoutingTable()
    g.missed.note(1234, "m0")
    assert not g.urgent()  # Not homed: the others learn of it with the next report.
    g.drain_missed()
    g.on_snapshot(homed("m0", 1234))
    g.missed.note(1234, "m0")
    assert g.urgent()
    g.drain_missed()
    assert not g.urgent()
    alone = gateway(clock, gateways=1)
    alone.on_snapshot(homed("m0", 1234))
    alone.missed.note(1234, "m0")
    assert not alone.urgent()
    assert not urgent(table)


async def test_a_report_with_urgent_news_goes_before_it_is_due() -> None:
    news = [False]

    def link(interval_s: float) -> ControllerLink:
        return ControllerLink(
            target="127.0.0.1:1",
            credentials=None,
            gateway_id="gw",
            table=RoutingTable(),
            usage=UsageTracker(),
            metrics=GatewayMetrics(CollectorRegistry()),
            usage_interval_s=interval_s,
            urgent=lambda: news[0],
        )

    # Due: it goes with no news.
    await asyncio.wait_for(link(0.01)._report_due(), timeout=10.0)
    # Not due for an hour, and no news: it waits.
    slow = link(3600.0)
    waiting = asyncio.create_task(slow._report_due())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    # News: it goes now, not in an hour.
    news[0] = True
    await asyncio.wait_for(waiting, timeout=10.0)


def test_a_long_new_prefix_is_asked_for_and_its_answer_followed_until_snapshots_carry_it() -> None:
    clock = FakeClock()
    g = gateway(clock)
    ctx = PickContext(model="m", payload={"prompt": GROUP + "one", "stream": True})
    wanted = g.wants_home(MEMBERS, ctx)
    assert wanted == (g.index.match(ctx.prefix_key).key, len(ctx.prefix_key) // CHARS_PER_TOKEN)
    prefix = wanted[0]
    # Whatever this gateway would have chosen, the controller's answer is where it goes.
    for home in ("m1", "m0"):
        fresh = gateway(clock)
        fresh.told_home(prefix, home)
        chosen, ctx = ask(fresh, "one")
        assert chosen == home
        # New to every gateway: its first send is a prefill of it all (a sample of the
        # member's speed), not a hit presumed from another gateway's send.
        assert ctx.ticket is not None and ctx.ticket.presumed
        assert ctx.ticket.held == 0 and ctx.ticket.new == g.index.match(ctx.prefix_key).blocks
    # Sent once, the prefix is no longer new: no second ask.
    assert g.wants_home(MEMBERS, PickContext(model="m", payload={"prompt": GROUP})) is not None
    g.told_home(prefix, "m1")
    ask(g, "one")
    assert g.wants_home(MEMBERS, PickContext(model="m", payload={"prompt": GROUP + "x"})) is None
    # Snapshots built before the controller homed it do not drop the answer...
    g.on_snapshot(MEMBERS)
    assert g.homes.by_prefix == {prefix: "m1"}
    clock.advance(ASKED_S / 2)
    g.on_snapshot(MEMBERS)
    assert g.homes.by_prefix == {prefix: "m1"}
    # ...one that carries it takes over, and one that still lacks it past ASKED_S drops it.
    g.on_snapshot(homed("m1", prefix))
    assert g.homes.asked == {} and g.homes.by_prefix == {prefix: "m1"}
    g.told_home(prefix + 1, "m0")
    clock.advance(ASKED_S + 1)
    g.on_snapshot(MEMBERS)
    assert g.homes.by_prefix == {}


def test_no_ask_for_short_prompts_a_gateway_alone_silent_caches_or_what_others_sent() -> None:
    clock = FakeClock()
    g = gateway(clock)
    long = PickContext(model="m", payload={"prompt": GROUP})
    prefix = g.index.first_key(long.prefix_key)
    assert g.wants_home(MEMBERS, long) is not None
    short = PickContext(model="m", payload={"prompt": GROUP[: ASK_MIN_TOKENS * 3]})
    assert g.wants_home(MEMBERS, short) is None
    assert gateway(clock, gateways=1).wants_home(MEMBERS, long) is None
    silent = [MEMBERS[0], dataclasses.replace(MEMBERS[1], cache_tokens=0)]
    assert g.wants_home(silent, long) is None
    # Another gateway sent it lately: this one follows it there, as before.
    sent = [
        dataclasses.replace(
            MEMBERS[0],
            sent_prefixes=(prefix,),
            sent_prefix_tokens=(2700,),
            sent_prefix_senders=(1,),
        ),
        MEMBERS[1],
    ]
    g.on_snapshot(sent)
    assert g.wants_home(sent, long) is None
    # Homed already: no ask.
    other = gateway(clock)
    other.on_snapshot(homed("m0", prefix))
    assert other.wants_home(MEMBERS, long) is None


def test_homes_are_booked_ahead_only_while_no_long_prompt_recurs() -> None:
    clock = FakeClock()
    g = gateway(clock)

    def new(i: int) -> PickContext:
        # Unique from the first block on: no prefix in common with the others.
        return PickContext(model="m", payload={"prompt": f"{i:06d} " + GROUP})

    for i in range(RECUR_WINDOW):
        assert not g.asks_ahead()
        wanted = g.wants_home(MEMBERS, new(i))
        assert wanted is not None
        g.told_home(wanted[0], "m0")
    # The last RECUR_WINDOW long prompts were all new.
    assert g.asks_ahead()
    # Short prompts say nothing either way.
    g.wants_home(MEMBERS, PickContext(model="m", payload={"prompt": "hi"}))
    assert g.asks_ahead()
    # One that recurs (homed on its ask) stops the booking, for a whole window of new ones.
    assert g.wants_home(MEMBERS, new(0)) is None
    assert not g.asks_ahead()
    for i in range(RECUR_WINDOW - 1):
        g.wants_home(MEMBERS, new(100 + i))
        assert not g.asks_ahead()
    g.wants_home(MEMBERS, new(200))
    assert g.asks_ahead()
