"""Routing in virtual time (`python -m bench.routing.virtual`): gateways' policies, the
controller's usage aggregation and simulated engines in one process on one clock, with no
sockets and no wall time, so that many seeds and fleets run in seconds, alike on any host.

What it models. Each engine is llmpool/sim's Scheduler (the KV cache, FIFO admission and step
costs of `llm-pool sim-engine`) stepping in virtual time. Each gateway is a policy object built
by the gateway's PolicyRegistry and fed as the relay feeds it: a PickContext with its own and
last-reported in-flight counts, began() at the first token, settle() at the end. Every
report_s each gateway's usage report (in flight, caches and speed learned, prefixes sent and
found missing, verdicts) goes to the controller's UsageAggregator, or sooner, looked for every
URGENT_S, when the policy has news the others need now (PrefixAware.urgent), as the gateway's
ControllerLink sends it; the loads reach every gateway as members snapshot_s later. Each send,
first byte and end of a prefix_aware gateway reaches the others share_ms later, as
GatewayService.ShareSends passes them on (gateway/pool_sends.py). Request i goes to gateway
i mod N, as in bench.routing.

What it leaves out: failures, the first request's cold connections, the controller's own CPU
time, and by default the time between gateway and engine. In a real run that time is the
gateways' CPU and the network, which bench.routing at --speedup 4 counts four times over.
Setup.host_ms (--host-ms) puts it back as a random delay each way. About 30 ms reproduces a
real run's time to first token, and what the gateways learn in it: with three gateways and
silent engines, no cap at all in most real runs, and none here. Without it, timing tells hits
from misses more sharply than it does on real processes. Times are engine seconds.
bench.routing stays the measure; this is for trying a change over many seeds before measuring
it there."""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.routing.oracle import affinity_index, weighted_sequence
from bench.routing.workloads import WORKLOADS, BenchRequest, WorkloadShape, build
from controller.metrics import ControllerMetrics
from controller.prefix_homes import PER_MEMBER, PrefixHomes
from controller.snapshot import RouteMember
from controller.usage import MemberUsage, UsageAggregator, UsageReport
from gateway.controller_link import URGENT_S
from gateway.members import Member, idle_member
from gateway.policies import PickContext, Policy, PolicyRegistry, PrefixAware
from gateway.policies.ticket import Ticket
from llmpool.clock import FakeClock
from llmpool.protoconv import shared_fields
from llmpool.sim.costs import CostModel
from llmpool.sim.kv_cache import KvCache
from llmpool.sim.scheduler import Scheduler, SimSequence
from llmpool.sim.serving import BOS
from llmpool.sim.tokens import ChatMessage, block_hashes, render_chat, tokenize

ORACLE = "oracle"
BLOCK_SIZE = 16
MAX_NUM_SEQS = 64
MODEL = "pool"


@dataclass(frozen=True)
class Setup:
    kv_blocks: tuple[int, ...] = (512, 1024, 2048, 4096)
    # Engines say what their cache holds (vllm:cache_config_info read by the controller).
    reported: bool = True
    gateways: int = 1
    # Answers' usage says how many prompt tokens came from cache (vLLM's and SGLang's do).
    cached_usage: bool = False
    report_s: float = 1.0
    snapshot_s: float = 0.05
    # Gateways ask the controller for a long new prompt prefix's home before its first send
    # (GatewayService.AskHome, answered at once here; the others hear of it at the next
    # snapshot, or ask for it themselves). False: they place it as each knows, to compare.
    asks: bool = True
    # Milliseconds of engine time a request spends between gateway and engine, both ways
    # together, on average: the gateway's and the network's share of a real run's time to
    # first token (bench.routing at --speedup 4 counts it four times over; 30-35 ms in its
    # multi-turn runs). Each way takes a quarter to three quarters of it, drawn per request.
    # 0: none, as before.
    host_ms: float = 0.0
    # Gateways tell each other their sends, first bytes and ends through the controller as
    # they happen (gateway/pool_sends.py), heard this many milliseconds later; < 0: not told.
    share_ms: float = 2.0


@dataclass(eq=False)
class Flight:
    request: BenchRequest
    gateway: int
    member: str
    ticket: object
    sent_at: float
    first_at: float | None = None
    back_s: float = 0.0  # engine to gateway (Setup.host_ms)
    seq: SimSequence | None = None  # at the engine, once there
    # The other gateways' tickets for it, once told of it (Setup.share_ms).
    seen: list[tuple[int, Ticket | None]] = field(default_factory=list)


@dataclass(eq=False)
class Gateway:
    policy: Policy | None
    members: tuple[Member, ...]
    # In flight per member: this gateway's and those the others told it of (UsageTracker).
    in_flight: dict[str, int] = field(default_factory=dict)
    reported: dict[str, int] = field(default_factory=dict)
    own: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    ahead: str = ""  # A home booked ahead (Setup.asks, HomeAsks).


@dataclass(eq=False)
class Engine:
    scheduler: Scheduler
    busy: bool = False


class VirtualRun:
    """One policy on one workload, start to end."""

    def __init__(self, setup: Setup, policy: str, requests: Sequence[BenchRequest]) -> None:
        self.setup = setup
        self.clock = FakeClock(0.0)
        self.requests = requests
        self.ids = [f"engine-{i}" for i in range(len(setup.kv_blocks))]
        self.engines = {
            mid: Engine(
                Scheduler(CostModel(), KvCache(blocks), BLOCK_SIZE, MAX_NUM_SEQS, self.clock)
            )
            for mid, blocks in zip(self.ids, setup.kv_blocks, strict=True)
        }
        self.base = tuple(
            idle_member(
                mid,
                cache_tokens=blocks * BLOCK_SIZE if setup.reported else 0,
                cache_block_size=BLOCK_SIZE if setup.reported else 0,
            )
            for mid, blocks in zip(self.ids, setup.kv_blocks, strict=True)
        )
        self.oracle = weighted_sequence(dict(zip(self.ids, setup.kv_blocks, strict=True)))
        registry = PolicyRegistry(clock=self.clock)
        self.gateways = []
        for _ in range(setup.gateways):
            built = None if policy == ORACLE else registry.build(policy)
            if built is not None:
                built.on_gateways(setup.gateways)
                if isinstance(built, PrefixAware):
                    # The share stream is up from the start (gateway/pool_sends.py).
                    built.hears_all = built.shares and setup.share_ms >= 0
                built.on_members(self.base)
                built.on_snapshot(self.base)
            self.gateways.append(Gateway(built, self.base))
        self.homes = PrefixHomes(self.clock)
        self._booked = 0
        self.usage = UsageAggregator(self.clock, ControllerMetrics(), ttl_s=5 * setup.report_s)
        self.flights: dict[SimSequence, Flight] = {}
        self.ttft: list[float] = []
        # (sent at, group or session, gateway, member, TTFT) of every request answered.
        # (sent at, group, gateway, member, TTFT, prompt tokens found cached / prompt tokens)
        self.trace: list[tuple[float, str, int, str, float, str]] = []
        self._events: list[tuple[float, int, str, int]] = []
        self._order = itertools.count()
        # When each gateway's next usage report is due.
        self._due: list[float] = []
        # Per request, seconds gateway to engine and back (Setup.host_ms): drawn once, the same
        # for every policy run on these requests.
        rng = random.Random(len(requests))
        half = setup.host_ms / 2000.0
        self._ways = [
            (half * rng.uniform(0.5, 1.5), half * rng.uniform(0.5, 1.5)) if half else (0.0, 0.0)
            for _ in requests
        ]
        # Requests on their way to an engine, and engines' answers on their way back.
        self._going: dict[int, Flight] = {}
        self._coming: dict[int, tuple[Flight, bool, bool]] = {}
        self._notes = itertools.count()
        self._told: dict[int, tuple[str, Flight, float, int]] = {}

    def _at(self, when: float, kind: str, arg: int) -> None:
        heapq.heappush(self._events, (when, next(self._order), kind, arg))

    def run(self) -> list[float]:
        # Gateways get the routes before the first request (the controller's first snapshot).
        self._snapshot()
        for i, request in enumerate(self.requests):
            self._at(request.at_s, "arrive", i)
        n = self.setup.gateways
        self._due = [self.setup.report_s * (g + 1) / n for g in range(n)]
        for g in range(n):
            # Gateways started at different times report out of phase; each looks every
            # URGENT_S for news the others need now (ControllerLink._report_due).
            self._at(min(URGENT_S, self._due[g]), "report", g)
        end = self.requests[-1].at_s if self.requests else 0.0
        while self._events:
            when, _, kind, arg = heapq.heappop(self._events)
            if kind == "report" and when > end and not self.flights:
                continue
            self.clock.advance(when - self.clock.monotonic())
            if kind == "arrive":
                self._arrive(arg)
            elif kind == "step":
                self._step_done(self.ids[arg])
            elif kind == "report":
                policy = self.gateways[arg].policy
                if when >= self._due[arg] - 1e-9 or (
                    isinstance(policy, PrefixAware) and policy.urgent()
                ):
                    self._report(arg)
                    self._due[arg] = when + self.setup.report_s
                self._at(min(when + URGENT_S, self._due[arg]), "report", arg)
            elif kind == "snapshot":
                self._snapshot()
            elif kind == "admit":
                self._admit(self._going.pop(arg))
            elif kind == "heard":
                self._heard(*self._coming.pop(arg))
            elif kind == "told":
                self._hear_told(*self._told.pop(arg))
        return self.ttft

    def _arrive(self, i: int) -> None:
        request = self.requests[i]
        g = i % self.setup.gateways
        gw = self.gateways[g]
        body = request.body(MODEL)
        if gw.policy is None:
            mid = self.oracle[affinity_index(request.affinity) % len(self.oracle)]
            ticket: object = None
        else:
            ctx = PickContext(
                model=MODEL, payload=body, in_flight=gw.in_flight, reported_in_flight=gw.reported
            )
            if self.setup.asks and gw.policy.asks:
                self._ask(gw, gw.policy, ctx)
            mid = gw.policy.pick(gw.members, ctx).id
            ticket = ctx.ticket
        _add(gw.in_flight, mid, 1)
        _add(gw.own, mid, 1)
        gw.requests[mid] = gw.requests.get(mid, 0) + 1
        there, back = self._ways[i]
        flight = Flight(request, g, mid, ticket, self.clock.monotonic(), back_s=back)
        self._tell("sent", flight)
        if there:
            note = next(self._notes)
            self._going[note] = flight
            self._at(self.clock.monotonic() + there, "admit", note)
        else:
            self._admit(flight)

    def _admit(self, flight: Flight) -> None:
        """The request reaches its engine."""
        request = flight.request
        text = render_chat([ChatMessage(r, c) for r, c in request.messages])
        tokens = [BOS, *tokenize(text)]
        engine = self.engines[flight.member]
        seq = engine.scheduler.add(
            len(tokens), block_hashes(tokens, BLOCK_SIZE, MODEL), request.max_tokens
        )
        flight.seq = seq
        self.flights[seq] = flight
        self._kick(flight.member)

    def _kick(self, mid: str) -> None:
        engine = self.engines[mid]
        if engine.busy:
            return
        plan = engine.scheduler.begin_step()
        if plan is None:
            return
        engine.busy = True
        self._at(self.clock.monotonic() + plan.duration_ms / 1000.0, "step", self.ids.index(mid))

    def _step_done(self, mid: str) -> None:
        engine = self.engines[mid]
        engine.busy = False
        now = self.clock.monotonic()
        for event in engine.scheduler.finish_step():
            flight = self.flights.get(event.seq)
            if flight is None:
                continue
            first = event.index == 0
            if event.finished:
                del self.flights[event.seq]
            if flight.back_s:
                note = next(self._notes)
                self._coming[note] = (flight, first, event.finished)
                self._at(now + flight.back_s, "heard", note)
            else:
                self._heard(flight, first, event.finished)
        self._kick(mid)

    def _heard(self, flight: Flight, first: bool, finished: bool) -> None:
        """The gateway hears of the request's first token, or of its end."""
        now = self.clock.monotonic()
        policy = self.gateways[flight.gateway].policy
        seq = flight.seq
        assert seq is not None
        if first:
            flight.first_at = now
            ttft = now - flight.request.at_s
            self.ttft.append(ttft)
            self.trace.append(
                (
                    flight.request.at_s,
                    flight.request.affinity,
                    flight.gateway,
                    flight.member,
                    ttft,
                    f"{seq.cached_tokens}/{seq.prompt_tokens}",
                )
            )
            if policy is not None and policy.settles and flight.ticket is not None:
                policy.began(flight.ticket, now - flight.sent_at)
                self._tell("first", flight, now - flight.sent_at)
        if finished:
            mid = flight.member
            gw = self.gateways[flight.gateway]
            _add(gw.in_flight, mid, -1)
            _add(gw.own, mid, -1)
            if policy is not None and policy.settles and flight.ticket is not None:
                begun = flight.first_at if flight.first_at is not None else now
                cached = seq.cached_tokens if self.setup.cached_usage else 0
                policy.settle(flight.ticket, begun - flight.sent_at, cached)
                self._tell("ended", flight, begun - flight.sent_at, cached)

    def _tell(self, kind: str, flight: Flight, ttft_s: float = 0.0, cached: int = 0) -> None:
        """The gateway tells the others (Setup.share_ms; gateway/pool_sends.py)."""
        if self.setup.share_ms < 0 or not isinstance(flight.ticket, Ticket):
            return
        policy = self.gateways[flight.gateway].policy
        if isinstance(policy, PrefixAware) and policy.shares:
            note = next(self._notes)
            self._told[note] = (kind, flight, ttft_s, cached)
            self._at(self.clock.monotonic() + self.setup.share_ms / 1000.0, "told", note)

    def _hear_told(self, kind: str, flight: Flight, ttft_s: float, cached: int) -> None:
        """The other gateways hear what flight's gateway told (gateway/pool_sends.py)."""
        mid = flight.member
        if kind == "sent":
            assert isinstance(flight.ticket, Ticket)
            for g, gw in enumerate(self.gateways):
                policy = gw.policy
                if g == flight.gateway or not isinstance(policy, PrefixAware):
                    continue
                member = next(m for m in gw.members if m.id == mid)
                ctx = PickContext(
                    model=MODEL,
                    payload={"stream": True},
                    in_flight=gw.in_flight,
                    reported_in_flight=gw.reported,
                )
                ticket = policy.seen_sent(member, flight.ticket.hashes, ctx)
                _add(gw.in_flight, mid, 1)
                flight.seen.append((g, ticket))
            return
        for g, ticket in flight.seen:
            gw = self.gateways[g]
            assert isinstance(gw.policy, PrefixAware)
            if ticket is not None:
                if kind == "first":
                    gw.policy.began(ticket, ttft_s)
                else:
                    gw.policy.settle(ticket, ttft_s, cached)
            if kind == "ended":
                _add(gw.in_flight, mid, -1)

    def _report(self, g: int) -> None:
        gw = self.gateways[g]
        policy = gw.policy
        if policy is None:
            return
        learned: dict[str, tuple[int, float]] = {}
        sent: dict[str, dict[int, int]] = {}
        missed: dict[str, list[int]] = {}
        verdicts: dict[str, list[tuple[int, bool]]] = {}
        if isinstance(policy, PrefixAware):
            learned = policy.learned(self.ids)
            sent = policy.drain_sent()
            missed = policy.drain_missed()
            verdicts = policy.drain_verdicts()
        named = set(gw.own) | set(gw.requests) | set(gw.reported)
        members = []
        for mid in sorted(named):
            tokens, speed = learned.get(mid, (0, 0.0))
            points = verdicts.get(mid, [])
            members.append(
                MemberUsage(
                    member_id=mid,
                    model=MODEL,
                    in_flight=gw.own.get(mid, 0),
                    requests=gw.requests.get(mid, 0),
                    learned_cache_tokens=tokens,
                    learned_prefill_s_per_token=speed,
                    missed_prefixes=tuple(missed.get(mid, ())),
                    sent_prefixes=tuple(sent.get(mid, {})),
                    sent_prefix_tokens=tuple(sent.get(mid, {}).values()),
                    verdict_reach_tokens=tuple(r for r, _ in points),
                    verdict_hits=tuple(h for _, h in points),
                )
            )
        gw.reported = dict(gw.in_flight)
        gw.requests = {}
        self.usage.record(UsageReport(gateway_id=f"gw{g}", members=tuple(members)))
        self._at(self.clock.monotonic() + self.setup.snapshot_s, "snapshot", 0)

    def _ask(self, gw: Gateway, policy: Policy, ctx: PickContext) -> None:
        """Setup.asks: the gateway's ask, as the relay makes it, answered by the controller's
        homes (controller/grpc_gateway.py: AskHome)."""
        wanted = policy.wants_home(gw.members, ctx)
        if wanted is not None:
            home = ""
            if policy.asks_ahead():
                # HomeAsks: the home booked after the previous new prefix; the next is booked.
                booked = (1 << 63) + self._booked
                home, gw.ahead = gw.ahead, self.homes.ask(MODEL, booked, wanted[1])
                self._booked += 1
            home = home or self.homes.ask(MODEL, *wanted)
            if home:
                policy.told_home(wanted[0], home)

    def _homed(self, members: list[Member]) -> list[Member]:
        """The controller's homes for the pool (controller/prefix_homes.py)."""
        homes = self.homes.place(MODEL, [_route_member(m) for m in members], self.clock.monotonic())
        by_member: dict[str, list[int]] = {}
        for prefix, home in homes.items():
            by_member.setdefault(home.member, []).append(prefix)
        return [
            dataclasses.replace(m, home_prefixes=tuple(by_member.get(m.id, ())[-PER_MEMBER:]))
            for m in members
        ]

    def _snapshot(self) -> None:
        loads = self.usage.loads()
        members = []
        for m in self.base:
            load = loads.get(m.id)
            if load is None:
                members.append(m)
                continue
            members.append(dataclasses.replace(m, **shared_fields(load, Member)))
        if self.setup.gateways > 1:
            members = self._homed(members)
        snapshot = tuple(members)
        for gw in self.gateways:
            gw.members = snapshot
            if gw.policy is not None:
                gw.policy.on_snapshot(snapshot)


def _add(counts: dict[str, int], key: str, n: int) -> None:
    left = counts.get(key, 0) + n
    if left:
        counts[key] = left
    else:
        del counts[key]


def _route_member(m: Member) -> RouteMember:
    return RouteMember(**shared_fields(m, RouteMember))


def trace(run: VirtualRun, slow: float) -> str:
    """The slow requests, then each group's or session's members in turn (*: slow)."""
    lines = [
        f"{at:7.2f} {key:>4} gw{g} {mid} {t:.3f} cached {c}"
        for at, key, g, mid, t, c in run.trace
        if t > slow
    ]
    turns: dict[str, list[str]] = {}
    for _, key, _, mid, t, _ in sorted(run.trace):
        turns.setdefault(key, []).append(mid[-1] if t <= slow else "*")
    ordered = sorted(turns.items(), key=lambda kv: affinity_index(kv[0]))
    lines += [f"{key:>4} {''.join(marks)}" for key, marks in ordered]
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing.virtual", description=__doc__)
    parser.add_argument("--policies", default=f"prefix_aware,{ORACLE}")
    parser.add_argument("--workload", choices=WORKLOADS, default=WORKLOADS[0])
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--seeds", default="5-8", help="a range (5-8) or a list (5,7)")
    parser.add_argument("--kv-blocks", default="512,1024,2048,4096")
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--silent", action="store_true", help="engines say nothing of caches")
    parser.add_argument(
        "--cached-usage", action="store_true", help="answers say their cached prompt tokens"
    )
    parser.add_argument("--report-s", type=float, default=1.0)
    parser.add_argument(
        "--no-asks",
        action="store_true",
        help="gateways place a long new prefix as each knows, without asking the controller",
    )
    parser.add_argument(
        "--host-ms",
        type=float,
        default=0.0,
        help="engine milliseconds between gateway and engine, both ways (a real run's: ~30)",
    )
    parser.add_argument(
        "--share-ms",
        type=float,
        default=2.0,
        help="engine milliseconds before the other gateways hear a send (< 0: not told)",
    )
    parser.add_argument(
        "--trace", type=float, default=0.0, help="print requests slower than this (s)"
    )
    args = parser.parse_args(argv)
    if "-" in args.seeds:
        lo, hi = (int(x) for x in args.seeds.split("-"))
        seeds = list(range(lo, hi + 1))
    else:
        seeds = [int(x) for x in args.seeds.split(",")]
    setup = Setup(
        kv_blocks=tuple(int(x) for x in args.kv_blocks.split(",")),
        reported=not args.silent,
        gateways=args.gateways,
        cached_usage=args.cached_usage,
        report_s=args.report_s,
        asks=not args.no_asks,
        host_ms=args.host_ms,
        share_ms=args.share_ms,
    )
    count = max(1, int(args.rate * args.seconds))
    print(f"{args.workload} @ {args.rate:g}/s, {setup}")
    print("seed  " + "  ".join(f"{p:>22}" for p in args.policies.split(",")))
    for seed in seeds:
        requests = build(args.workload, seed, args.rate, count, WorkloadShape())
        cells = []
        for policy in args.policies.split(","):
            run = VirtualRun(setup, policy, requests)
            ttft = run.run()
            if args.trace:
                print(trace(run, args.trace))
            cells.append(f"p99 {percentile(ttft, 99):6.3f} p50 {percentile(ttft, 50):6.3f}")
        print(f"{seed:4d}  " + "  ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
