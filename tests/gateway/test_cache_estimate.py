"""The learned cache of each member: from its report, from cached tokens in its answers, and from
time to first token when it says nothing; the cap shrinks on a window of misses, grows back
slowly, never past a report; what the gateway exports of it."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest

from gateway.cache_metrics import CacheEstimates, missed_prefixes, verdicts
from gateway.members import idle_member
from gateway.policies import PickContext, PrefixAware
from gateway.policies.cache_estimate import (
    FIRST_SAMPLES,
    FIRST_WINDOW,
    GROW,
    REPORTED_USABLE,
    WINDOW,
    CacheSizer,
)
from gateway.policies.prefix_index import PrefixIndex
from gateway.policies.ticket import Ticket
from gateway.routing import RoutingTable
from llmpool.cache_bound import MISSES_TO_BOUND, cap_bound
from llmpool.v1 import gateway_pb2
from tests.cache_sizing import fill, learn_speed, policy, sizer


def reported(units: int) -> int:
    """The cache, in tokens, a member reports whose usable share is `units` units of 128 bytes
    (REPORTED_USABLE: the index fills that much of a report with prompts)."""
    return math.ceil(units * 128 // 4 / REPORTED_USABLE)


def test_a_report_caps_the_member_and_learning_never_grows_past_it() -> None:
    s = sizer()
    text = fill(s, "m", 200)  # the last prompt sent
    units = s.index.block_count(text)
    s.on_report("m", reported(100))
    assert s.index.held("m") <= 100 and s.cap_units("m") == 100
    learn_speed(s)
    for _ in range(5 * WINDOW):
        # Hits where hits were expected, with the index full: it would grow, but not past.
        s.settle(Ticket("m", 50, 2, 0.0), 0.002, 0)
    assert s.cap_units("m") == 100
    # Slow answers where hits were expected: time says miss, but a window of them does not
    # shrink what an engine reports of its cache (a busy host makes hits look slow)...
    hashes = s.index.match(text).hashes
    assert s.index.match(text).depth["m"][0] == units
    for _ in range(5 * WINDOW):
        assert s.settle(Ticket("m", units, 2, 0.0, hashes=hashes), 1.0, 0) is False
    assert s.cap_units("m") == 100
    # ...though with the index full there, the prompt that missed is one too many for it:
    # forgotten there (the next request of it is placed afresh).
    assert "m" not in s.index.match(text).depth
    # With room in the index, a miss there is more likely a slow answer: the prompt is kept.
    roomy = sizer()
    fill(roomy, "m", 200)
    roomy.on_report("m", reported(300))
    learn_speed(roomy)
    held = roomy.index.held("m")
    for _ in range(5 * WINDOW):
        assert roomy.settle(Ticket("m", units, 2, 0.0, hashes=hashes), 1.0, 0) is False
    assert roomy.cap_units("m") == 300 and roomy.index.held("m") == held
    assert roomy.index.match(text).depth["m"][0] == units


def test_cached_tokens_tell_hits_from_misses_once_a_member_reports_them() -> None:
    s = sizer()
    fill(s, "m", 400)
    assert s.cap_units("m") == 1000
    # The first answer says 3,000 cached tokens: this member reports them.
    assert s.settle(Ticket("m", 100, 2, 0.0), None, 3000) is True
    for _ in range(FIRST_WINDOW - 1):
        # Expected 100 units (3,200 tokens) cached; the answers say none were.
        assert s.settle(Ticket("m", 100, 2, 0.0), None, 0) is False
    # 3 of the first 4 missed: the cap drops below what the index held there, and the index
    # forgets.
    assert s.cap_units("m") < 400
    assert s.index.held("m") <= s.cap_units("m")
    assert s.outcomes["m"].misses == FIRST_WINDOW - 1


def test_time_to_first_token_decides_alone_or_far_past_what_a_hit_could_take() -> None:
    s = sizer()
    # Nothing learned yet: no verdict.
    assert s.settle(Ticket("m", 100, 2, 0.0), 0.5, 0) is None
    learn_speed(s, 0.001)
    # A hit: no more than the new part and half the held part take (0.052 s).
    assert s.settle(Ticket("m", 100, 2, 0.0), 0.01, 0) is True
    # A miss: more than that.
    assert s.settle(Ticket("m", 100, 2, 0.0), 0.2, 0) is False
    # Sent while other requests were in flight there: it may have waited behind their
    # steps, so slow says nothing...
    assert s.settle(Ticket("m", 100, 2, 0.0, alone=False, clear=False), 0.14, 0) is None
    assert s.settle(Ticket("x", 0, 100, 0.0, alone=False, clear=False), 10.0, 0) is None
    assert s.unit_s == 0.001
    # ...but with the others there all answering already (decoding), slow is a miss.
    assert s.settle(Ticket("m", 100, 2, 0.0, alone=False), 0.14, 0) is False
    # Loaded, it misses if it took 2x the prefill of its whole prompt and of our work queued
    # ahead (past the fastest answer yet, 0.01 s: what any request costs).
    assert s.settle(Ticket("m", 100, 2, 0.0, alone=False, clear=False), 0.21, 0) is None
    assert s.settle(Ticket("m", 100, 2, 0.0, alone=False, clear=False), 0.22, 0) is False
    assert s.settle(Ticket("m", 100, 2, 100.0, alone=False, clear=False), 0.3, 0) is None


def test_a_first_speed_spoiled_by_cached_samples_errs_slow() -> None:
    s = sizer()
    # Two of five "misses" were cached by another gateway: far too fast.
    for t in (0.001, 0.002, 0.1, 0.1, 0.12):
        s.settle(Ticket("x", 0, 100, 0.0), t, 0)
    assert s.unit_s == 0.001
    # A later sample that waited counts at most twice the speed.
    s.settle(Ticket("x", 0, 100, 0.0), 10.0, 0)
    assert s.unit_s is not None and abs(s.unit_s - 0.0012) < 1e-9


def test_learned_speed_follows_new_misses_and_skips_what_was_cached() -> None:
    s = sizer()
    learn_speed(s, 0.002)
    s.settle(Ticket("x", 0, 100, 0.0), 0.1, 0)  # 0.001 a unit
    assert s.unit_s is not None and abs(s.unit_s - 0.0018) < 1e-9
    # Far faster than any prefill of it: the member had it (a surprise), speed unchanged.
    before = s.unit_s
    assert s.settle(Ticket("x", 0, 100, 0.0), 0.00001, 0) is True
    assert s.unit_s == before and s.outcomes["x"].surprises == 1


def test_a_window_of_misses_shrinks_the_cap_and_hits_grow_it_back_slowly() -> None:
    s = sizer(member_blocks=1000)
    learn_speed(s, 0.001)
    fill(s, "m", 600)
    for _ in range(FIRST_WINDOW):
        s.settle(Ticket("m", 100, 2, 0.0), 0.5, 0)
    shrunk = s.cap_units("m")
    # All missed: a quarter less than the index held there (at most a quarter a window).
    assert shrunk == 450 and s.index.held("m") <= 450
    fill(s, "m", 600)
    assert s.index.held("m") >= 0.9 * shrunk
    for _ in range(WINDOW):
        s.settle(Ticket("m", 100, 2, 0.0), 0.01, 0)
    assert s.cap_units("m") == int(shrunk * GROW)


def test_a_mixed_window_below_the_threshold_leaves_the_cap() -> None:
    s = sizer()
    learn_speed(s, 0.001)
    fill(s, "m", 600)
    for i in range(FIRST_WINDOW + WINDOW):
        # One miss in four, then two in eight: the odd miss, not a cache too small.
        s.settle(Ticket("m", 100, 2, 0.0), 0.5 if i in (0, 4, 9) else 0.01, 0)
    assert s.cap_units("m") == 1000
    # Windows decided, the cap still the starting guess: nothing learned to tell the others
    # (the controller would hand it out as learned, over a cap another gateway found).
    assert s.outcomes["m"].resized
    assert s.learned_tokens() == {} and s.report(["m"]) == {"m": (0, s.token_s())}
    # The guess taken from the others counts as nothing learned either.
    s.on_shared("m", 1000 * 128 // 4)
    assert s.learned_tokens() == {}


def test_the_depth_that_splits_hits_from_misses_bounds_the_cache() -> None:
    # Hits up to 200 units deep, misses from 300: the cache holds about 250.
    points = [(r, True) for r in (50, 120, 200, 180)] + [(300, False), (420, False), (380, False)]
    assert cap_bound(points) == 250
    # Two misses say nothing yet; nor do misses shallower than hits (noise, other causes).
    assert cap_bound([(100, True), (300, False), (400, False)]) is None
    assert cap_bound([(100, False), (150, False), (400, True), (500, True)]) is None
    # Misses only: a quarter under the shallowest, one step at a time.
    assert cap_bound([(400, False), (600, False), (500, False)]) == 300
    # A stray miss among deeper hits does not move the split past them.
    stray = [(100, True), (150, False), (200, True), (500, False), (550, False), (600, False)]
    assert cap_bound(stray) == 350
    # Misses a busy host made up, at any depth, bound nothing: past any split they are
    # fewer than twice the hits.
    noisy = [(r, r % 50 != 0) for r in range(10, 500, 10)]
    assert cap_bound(noisy) is None
    assert cap_bound([(100, True), (300, False), (350, True), (400, False), (450, False)]) is None


def test_misses_past_a_depth_shrink_the_cap_to_it_though_most_predictions_hit() -> None:
    """A few prompts that thrash among many that fit miss too rarely for a window to shrink
    the cap; their depth in the member's LRU bounds it all the same."""
    s = sizer(member_blocks=10_000)
    learn_speed(s, 0.001)
    fill(s, "m", 600)
    for i in range(3 * WINDOW):
        # Shallow prompts hit; every fourth, sent long ago (deep), misses.
        deep = i % 4 == 3
        ticket = Ticket("m", 100, 2, 0.0, reach=900 if deep else 300)
        s.settle(ticket, 0.5 if deep else 0.01, 0)
    assert s.outcomes["m"].misses == 6
    assert s.cap_units("m") == 600  # half way between the deepest hit and the first miss
    # Each verdict goes out with the next usage report, with its depth (the controller
    # bounds the member from every gateway's together).
    out = [(900, False) if i % 4 == 3 else (300, True) for i in range(3 * WINDOW)]
    assert s.drain_verdicts() == {"m": out} and s.drain_verdicts() == {}


def test_misses_past_a_depth_bound_a_reported_cache_down_to_half_of_it() -> None:
    """An engine's KV holds its running requests' answers too: prompts deep in its LRU miss
    though its report says they fit. The depth bound (not a window) says so, down to half of
    the report at most."""
    s = sizer(member_blocks=10_000)
    learn_speed(s, 0.001)
    s.on_report("m", reported(1000))
    fill(s, "m", 600)
    for i in range(3 * WINDOW):
        deep = i % 4 == 3
        ticket = Ticket("m", 100, 2, 0.0, reach=900 if deep else 300)
        s.settle(ticket, 0.5 if deep else 0.01, 0)
    assert s.cap_units("m") == 600
    for _ in range(3 * WINDOW):
        s.settle(Ticket("m", 100, 2, 0.0, reach=400), 0.5, 0)
    assert s.cap_units("m") == 500


def test_a_cache_another_gateway_learned_bounds_this_one_once() -> None:
    """The controller hands every gateway the caps gateways learned: taken when it is new
    and below this gateway's own, and not again, so this gateway grows back on its own
    evidence; a member's own report outweighs it."""
    s = sizer(member_blocks=1000)
    learn_speed(s, 0.001)
    fill(s, "m", 600)
    assert s.learned_tokens() == {}  # the starting guess is not learned
    assert s.on_shared("m", 400 * 128 // 4)  # 400 units
    assert s.cap_units("m") == 400 and s.index.held("m") <= 400
    assert s.learned_tokens() == {"m": 400 * 128 // 4}
    # Hits with the index full: it grows past what the others learned...
    fill(s, "m", 600)
    for _ in range(WINDOW):
        s.settle(Ticket("m", 100, 2, 0.0), 0.01, 0)
    assert s.cap_units("m") == int(400 * GROW)
    # ...and the same shared value coming back with every snapshot does not pull it down.
    assert not s.on_shared("m", 400 * 128 // 4)
    assert s.cap_units("m") == int(400 * GROW)
    # A larger one never raises it; a new smaller one lowers it again.
    assert not s.on_shared("m", 800 * 128 // 4)
    assert s.on_shared("m", 300 * 128 // 4) and s.cap_units("m") == 300
    # None learned anywhere (the controller restarted): this gateway keeps its own.
    assert not s.on_shared("m", 0) and s.cap_units("m") == 300
    # A member that reports its cache comes down to what gateways learned, but to no less
    # than half its report.
    s.on_report("r", reported(500))
    assert "r" not in s.learned_tokens()
    assert s.on_shared("r", 100 * 128 // 4) and s.cap_units("r") == 250
    assert s.learned_tokens()["r"] == 250 * 128 // 4


def test_a_gateway_that_learned_no_speed_takes_the_others_median() -> None:
    p = policy()
    members = [
        idle_member(f"m{i}", learned_prefill_s_per_token=speed)
        for i, speed in enumerate((10e-6, 30e-6, 0.0, 20e-6))
    ]
    p.on_members(members)
    p.on_snapshot(members)
    assert p.sizer.token_s() == 20e-6
    # Once known, its own is kept (and reported), but answers are judged by the others'.
    faster = [idle_member("m0", learned_prefill_s_per_token=1e-6)]
    p.on_snapshot(faster)
    assert p.sizer.token_s() == 20e-6
    assert p.sizer.pool_s == 1e-6 * 32
    assert not sizer().on_shared_speed(0.0)


def test_answers_are_judged_by_the_speed_the_gateways_learned_together() -> None:
    own = sizer()
    pooled = sizer()
    for s in (own, pooled):
        s.settle(Ticket("x", 0, 1, 0.0), 0.001, 0)  # The fastest answer: 1 ms.
        learn_speed(s, 0.001)
    # The others learned 3x slower (this gateway's first samples were the fast ones).
    assert not pooled.on_shared_speed(0.003 / 32)
    assert pooled.unit_s == 0.001 and pooled.pool_s == 0.003
    # 0.1 s for a prompt of 100 held units and 2 new: past what a hit takes at 0.001 a unit
    # (0.052 s), within it at 0.003 (0.156 s).
    assert own.settle(Ticket("m", 100, 2, 0.0), 0.101, 0) is False
    assert pooled.settle(Ticket("m", 100, 2, 0.0), 0.101, 0) is True
    # Queues drain at the pooled speed too.
    assert pooled.drain_rate(1.0) == 1 / 0.003


def test_presumed_placements_do_not_move_the_cap() -> None:
    s = sizer()
    learn_speed(s, 0.001)
    fill(s, "m", 600)
    for _ in range(3 * WINDOW):
        assert s.settle(Ticket("m", 0, 100, 0.0, presumed=True), 0.0001, 0) is True
    assert s.cap_units("m") == 1000 and s.outcomes["m"].surprises == 0


def test_a_member_that_misses_where_hits_were_expected_loses_prefixes_in_the_index() -> None:
    """End to end through pick() and settle(): a static backend with a small cache (nothing
    reported), sent more groups than it holds, keeps failing the index's predictions."""
    p = policy()
    member = idle_member("small")
    p.on_members([member])
    p.on_snapshot([member])
    groups = [f"group {g} " * 2000 for g in range(6)]  # ~16 KB: ~100 units each
    for g in groups:  # the speed, from first (expected) misses of 100+ units
        ctx = PickContext(model="m", payload={"prompt": g})
        p.pick([member], ctx)
        p.settle(ctx.ticket, 0.1, 0)
    before = p.index.held("small")
    expected_hits = 0
    for turn in range(3):
        for g in groups:
            ctx = PickContext(model="m", payload={"prompt": g + f" question {turn}"})
            p.pick([member], ctx)
            assert isinstance(ctx.ticket, Ticket)
            expected_hits += ctx.ticket.held > 0
            # The engine had evicted it: a whole prefill again, and a wait.
            p.settle(ctx.ticket, 0.3, 0)
    assert expected_hits >= MISSES_TO_BOUND
    assert p.cache_tokens("small") * 4 // 128 < before
    assert p.index.held("small") < before


def test_gateway_exports_each_members_believed_cache() -> None:
    table = RoutingTable()
    members = [
        gateway_pb2.Member(
            id="a",
            url="http://h/a",
            healthy=True,
            weight=1,
            cache_tokens=16384,
            sent_prefixes=[5, 6],
            sent_prefix_tokens=[3200, 1600],
        ),
        gateway_pb2.Member(id="b", url="http://h/b", healthy=True, weight=1),
    ]
    route = gateway_pb2.ModelRoute(model="m", policy="prefix_aware", members=members)
    table.apply(gateway_pb2.RoutingSnapshot(version=1, full=True, routes=[route]))
    registry = CollectorRegistry()
    registry.register(CacheEstimates(table))
    text = generate_latest(registry).decode()
    # REPORTED_USABLE of the report, in whole units of 128 bytes.
    usable = int(16384 * REPORTED_USABLE) * 4 // 128 * 128 // 4
    assert f'llmpool_gateway_member_cache_tokens{{backend="a",model="m"}} {usable}.0' in text
    # Nothing reported: member_capacity_tokens, the guess learning starts from.
    assert 'llmpool_gateway_member_cache_tokens{backend="b",model="m"} 262144.0' in text
    # Other gateways' sends, as this one counts them there.
    assert 'llmpool_gateway_member_others_tokens{backend="a",model="m"} 4800.0' in text
    assert 'llmpool_gateway_member_others_tokens{backend="b",model="m"} 0.0' in text
    # No prompt seen waiting for KV room.
    assert 'llmpool_gateway_member_kv_room_tokens{backend="a",model="m"} 0.0' in text
    # No prefill speed learned yet.
    assert 'llmpool_gateway_prefill_seconds_per_token{model="m"} 0.0' in text


def test_blocks_follow_the_engines_own_block_size_before_first_use() -> None:
    p = policy()
    # A prompt too short for a block still leaves a backlog behind.
    p.pick([idle_member("a")], PickContext(model="m", payload={"prompt": "hi"}))
    members = [idle_member("a", cache_tokens=65536, cache_block_size=64)]
    p.on_members(members)
    p.on_snapshot(members)
    # 64-token engine blocks: 256 bytes, a whole engine block (32 tokens would split one).
    assert p.index.block_chars == 256
    ctx = PickContext(model="m", payload={"prompt": "long text " * 400})
    p.pick(members, ctx)
    assert p.index.held("a") > 0
    assert p.backlog_blocks("a") == p.index.held("a")


def test_queued_prefills_drain_at_least_as_fast_as_the_fastest_miss_showed() -> None:
    s = sizer()
    assert s.drain_rate(10.0) == 10.0
    # 100 units in 0.5 s, waiting included: the member prefills at least 200 units a second.
    s.settle(Ticket("x", 0, 100, 0.0, alone=False), 0.5, 0)
    assert s.unit_s is None and s.drain_rate(10.0) == 200.0
    # A prior faster than the bound stands.
    assert s.drain_rate(1000.0) == 1000.0
    # A presumed home (the first request of a prefix at its place) bounds it too: one that
    # another gateway's traffic cached there is only faster, which drains queues early.
    s.settle(Ticket("y", 0, 100, 0.0, presumed=True, alone=False, clear=False), 0.25, 0)
    assert s.drain_rate(10.0) == 400.0
    learn_speed(s, 0.001)
    assert s.drain_rate(10.0) == 1000.0


def test_a_miss_forgets_the_prompt_at_the_member_but_the_cap_shrinks_from_what_was_held() -> None:
    s = sizer(member_blocks=1000)
    learn_speed(s, 0.001)
    fill(s, "m", 400)
    text = ("the prompt that missed " * 100)[:1024]
    units = s.index.block_count(text)
    match = s.index.match(text)
    s.index.insert("m", match)
    held = s.index.held("m")
    assert s.index.match(text).depth["m"][0] == units
    # Alone and slow: a miss. The member does not hold that prompt: the index forgets it.
    assert s.settle(Ticket("m", units, 2, 0.0, hashes=match.hashes), 0.2, 0) is False
    assert "m" not in s.index.match(text).depth
    assert s.index.held("m") == held - units
    # The window's verdict shrinks the cap from what was held when it missed.
    for _ in range(FIRST_WINDOW - 1):
        s.settle(Ticket("m", units, 2, 0.0), 0.2, 0)
    assert s.cap_units("m") == int(held * 0.75)


def test_times_count_past_the_fastest_answer_what_any_request_costs() -> None:
    s = sizer()
    learn_speed(s, 0.001)
    # Some request came back in 20 ms: the gateway, the network and an engine step.
    s.settle(Ticket("x", 0, 2, 0.0), 0.02, 0)
    assert s.floor_s == 0.02
    # 31 ms for a 2-unit question on a 20-unit held prefix: 11 ms past the floor, within a
    # hit's 2 + 10 units: a hit (counted from zero, 31 ms is past 2 + 15 units: a miss).
    assert s.settle(Ticket("m", 20, 2, 0.0), 0.031, 0) is True
    # Past the floor by more than the new part and 3/4 of the held one: a miss.
    assert s.settle(Ticket("m", 20, 2, 0.0), 0.038, 0) is False
    # In between: undecided.
    assert s.settle(Ticket("m", 20, 2, 0.0), 0.034, 0) is None


def test_speed_is_learned_from_misses_whose_member_was_only_decoding() -> None:
    """Under load a request seldom has a member to itself; one sent while everything else
    there was already answering prefills at about the member's speed, and teaches it."""
    s = sizer()
    for _ in range(FIRST_SAMPLES):
        s.settle(Ticket("m", 0, 100, 0.0, alone=False, clear=False), 0.5, 0)
    assert s.unit_s is None  # waited behind others' prefill: says nothing of the speed
    for _ in range(FIRST_SAMPLES):
        s.settle(Ticket("m", 0, 100, 0.0, alone=False, clear=True), 0.1, 0)
    assert s.unit_s == 0.001


def test_a_first_speed_is_learned_beside_other_gateways_requests() -> None:
    """With several gateways a member nearly always has another's request in flight (mostly
    decoding): the first samples count beside them, later ones only when clear."""
    s = sizer()
    # One that waited behind another gateway's prefill, one cached by another gateway.
    for t in (0.1, 0.1, 0.3, 0.1, 0.01):
        s.settle(Ticket("m", 0, 100, 0.0, alone=False, clear=False, foreign=True), t, 0)
    assert s.unit_s == 0.001
    s.settle(Ticket("m", 0, 100, 0.0, alone=False, clear=False, foreign=True), 0.15, 0)
    assert s.unit_s == 0.001
    s.settle(Ticket("m", 0, 100, 0.0, alone=False), 0.15, 0)
    assert s.unit_s is not None and abs(s.unit_s - 0.0011) < 1e-9


def test_a_ticket_is_clear_when_our_requests_there_all_began_answering() -> None:
    p = policy()
    member = idle_member("m")
    p.on_members([member])
    p.on_snapshot([member])

    def send(n: int, stream: bool, in_flight: int) -> Ticket:
        ctx = PickContext(
            model="m",
            payload={"prompt": f"prompt {n} " * 300, "stream": stream},
            in_flight={"m": in_flight} if in_flight else {},
        )
        p.pick([member], ctx)
        assert isinstance(ctx.ticket, Ticket)
        return ctx.ticket

    first = send(0, True, 0)
    assert first.alone and first.clear
    second = send(1, True, 1)
    assert not second.alone and not second.clear  # first still prefilling
    p.began(first)
    p.began(second)
    third = send(2, False, 2)
    assert not third.alone and third.clear  # both answering
    # A whole answer in flight says nothing of where it is.
    assert not send(3, True, 3).clear
    # Another gateway's request there (reported): not clear, but foreign.
    busy = idle_member("b", in_flight=2)
    p.on_members([member, busy])
    ctx = PickContext(model="m", payload={"prompt": "other " * 300, "stream": True})
    p.pick([busy], ctx)
    assert isinstance(ctx.ticket, Ticket)
    assert not ctx.ticket.clear and ctx.ticket.foreign and not ctx.ticket.alone
    assert not first.foreign and not second.foreign


def test_a_new_prompt_that_waited_for_room_beside_others_is_forgotten_there() -> None:
    """A prompt new to a member, sent with the member's prefill to itself, that took over twice
    its prefill waited for KV room there: the member cannot keep it beside what it holds."""

    def sent(s: CacheSizer, others: int) -> list[int]:
        fill(s, "m", others)
        assert s.index.held("m") == others  # 1 KB prompts: 240 units are a whole number of them
        text = ("a second prompt group " * 400)[: 128 * 100]
        match = s.index.match(text)
        s.index.insert("m", match)
        return match.hashes

    s = sizer()
    learn_speed(s, 0.001)  # 0.1 s for 100 units; the floor is 0.1 s too
    hashes = sent(s, 240)
    # 0.25 s past the floor: 2.5x its prefill.
    s.settle(Ticket("m", 0, 100, 0.0, hashes=hashes), 0.35, 0)
    assert s.forgot and s.index.held("m") == 240
    # Not slow enough, not clear, or nothing else held there: kept.
    for ticket, ttft, others in (
        (Ticket("m", 0, 100, 0.0), 0.25, 240),
        (Ticket("m", 0, 100, 0.0, alone=False, clear=False), 0.35, 240),
        (Ticket("m", 0, 100, 0.0), 0.35, 0),
    ):
        s = sizer()
        learn_speed(s, 0.001)
        ticket.hashes = sent(s, others)
        held = s.index.held("m")
        s.settle(ticket, ttft, 0)
        assert not s.forgot and s.index.held("m") == held > others


def test_a_miss_forgets_what_it_shows_gone_and_keeps_the_prompt_prefilled_again() -> None:
    """Two prompt groups on a member that holds less than both: the older one's next request
    missed (the newer one pushed it out), and prefilled it again, which pushed out the newer:
    the index keeps the one that missed there and forgets the other (its next request is
    placed afresh instead of missing there in turn)."""
    s = sizer()
    learn_speed(s, 0.001)
    a = s.index.match(("group a's system prompt " * 600)[: 128 * 100])
    b = s.index.match(("group b's system prompt " * 600)[: 128 * 100])
    s.index.insert("m", a)
    s.index.insert("m", b)
    record = s.index.record("m")
    reach = record.reach(a.key, a.blocks)
    assert reach == a.blocks + b.blocks  # b came in since a was last sent, over a's own part
    s.index.insert("m", s.index.match(("group a's system prompt " * 600)[: 128 * 100]))
    assert s.settle(Ticket("m", a.blocks, 0, 0.0, hashes=a.hashes, reach=reach), 0.5, 0) is False
    assert s.forgot == [b.key]
    assert "m" not in s.index.match(("group b's system prompt " * 600)[: 128 * 100]).depth
    assert s.index.match(("group a's system prompt " * 600)[: 128 * 100]).depth["m"][0] == a.blocks
    # Nothing sent there since a's last request (reach no more than its own part): what pushed
    # it out is not this gateway's to forget; a itself is.
    s = sizer()
    learn_speed(s, 0.001)
    s.index.insert("m", b)
    s.index.insert("m", a)
    ticket = Ticket("m", a.blocks, 0, 0.0, hashes=a.hashes, reach=a.blocks)
    assert s.settle(ticket, 0.5, 0) is False
    assert s.forgot == [a.key]
    assert "m" not in s.index.match(("group a's system prompt " * 600)[: 128 * 100]).depth


def test_deeper_gives_the_prefixes_past_a_depth_the_deepest_first_up_to_a_size() -> None:
    index = PrefixIndex(block_chars=8, max_blocks=1000, max_prompt_blocks=100, max_holders=4)
    texts = [f"prompt{n:02d}" * 4 for n in range(5)]
    matches = [index.match(t) for t in texts]
    assert [m.blocks for m in matches] == [4] * 5
    for m in matches:
        index.insert("m", m)
    record = index.record("m")
    keys = [m.key for m in matches]
    # Depths now 20, 16, 12, 8, 4 (oldest first).
    assert record.deeper(12, 100, -1) == keys[:3]
    assert record.deeper(12, 5, -1) == keys[:2]  # the second crosses 5 units
    assert record.deeper(12, 4, keys[0]) == keys[1:2]
    index.unhold("m", (keys[1],))
    assert record.deeper(12, 100, -1) == [keys[0], keys[2]]  # no longer held: left out
    assert record.deeper(21, 100, -1) == []


def test_misses_go_out_with_usage_and_others_come_in_with_routing() -> None:
    """The table's prefix_aware routes hand their own misses and verdicts to usage reports
    (drained, per member) and take the misses the controller puts on members
    (Member.missed_prefixes)."""
    table = RoutingTable()
    members = [
        gateway_pb2.Member(id="a", url="http://h/a", healthy=True, weight=1, missed_prefixes=[7]),
        gateway_pb2.Member(id="b", url="http://h/b", healthy=True, weight=1),
    ]
    route = gateway_pb2.ModelRoute(model="m", policy="prefix_aware", members=members)
    table.apply(gateway_pb2.RoutingSnapshot(version=1, full=True, routes=[route]))
    found = table.get("m")
    assert found is not None and isinstance(found.policy, PrefixAware)
    assert found.policy.missed.passes_over(7) == ("a",)
    assert missed_prefixes(table) == {}  # another gateway's, not reported again
    found.policy.missed.note(9, "b")
    assert missed_prefixes(table) == {"b": [9]} and missed_prefixes(table) == {}
    # Verdicts go out likewise, their depths in tokens (128-byte units of 4-byte tokens).
    found.policy.sizer.verdicts["b"] = [(10, False), (3, True), (1 << 40, False)]
    said = {"b": [(320, False), (96, True), ((1 << 32) - 1, False)]}  # a uint32 on the wire
    assert verdicts(table) == said and verdicts(table) == {}
