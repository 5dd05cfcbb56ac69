"""`make bench-routing`: every routing policy, the oracle and vllm-router's cache_aware against the
same simulated engines; writes the Routing section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import aio, machine, venvs
from bench.routing import workloads as wl
from bench.routing.client import ConnectionPool, send
from bench.routing.cluster import POOL, TINY_STREAM, Cluster, SimShape, fill_result
from bench.routing.drive import drive
from bench.routing.engine_stats import deltas
from bench.routing.oracle import ORACLE_POLICY, assign
from bench.routing.report import render, write_section
from bench.routing.results import ORACLE, VLLM_ROUTER, RunResult, targets
from bench.routing.vllm_router import start as start_router
from bench.systems import HOST, Running, StartError

ROOT = Path(__file__).resolve().parents[2]
SEED = 5


@dataclass(frozen=True)
class Profile:
    name: str
    speedup: float  # engines' --speedup: simulated seconds per wall second
    duration_s: float  # simulated seconds of arrivals per run (one system at one rate)
    max_requests: int  # per run
    rates: dict[str, tuple[float, ...]]  # simulated requests per second, per workload
    grace_s: float  # wall seconds a run waits after its last send
    default_policies: tuple[str, ...] | None  # None: every registered policy but the aliases
    # A p99 over n requests is the ceil(n/100)-th worst: below ~300 it is one or two requests.
    # Low rates get longer arrival windows (up to max_window_s simulated) to reach this many.
    min_requests: int = 20
    max_window_s: float = 0.0

    def count(self, rate: float) -> int:
        """Requests per run at rate: duration_s worth, raised toward min_requests within
        max_window_s, capped at max_requests."""
        floor = min(self.min_requests, math.floor(rate * max(self.max_window_s, self.duration_s)))
        return max(20, min(self.max_requests, max(floor, math.ceil(rate * self.duration_s))))


# Other names of a policy (same class): run only when asked for by name.
ALIASES = ("least_in_flight",)

# Round robin saturates near 12 requests/s on shared prefixes (KV thrash: each engine sees all
# 8 groups) and the unique-prompt control near 10/s (prefill-bound); the oracle keeps up far
# beyond what this box can drive, so the sweeps stop at 32/s. The full profile runs at speedup
# 2.5, where our real overhead stays near 6% of the smallest TTFT and 300 requests a point fit
# in ~20 minutes; quick trades both for time.
QUICK = Profile(
    "quick",
    4.0,
    12.0,
    200,
    {wl.SHARED_PREFIX: (8, 24), wl.MULTI_TURN: (8, 24), wl.UNIQUE: (4, 10)},
    6.0,
    ("round_robin", "least_in_flight", "prefix_aware"),
)
FULL = Profile(
    "full",
    2.5,
    15.0,
    400,
    {
        wl.SHARED_PREFIX: (8, 16, 32),
        wl.MULTI_TURN: (8, 16, 32),
        wl.UNIQUE: (4, 8, 12),
    },
    10.0,
    None,
    min_requests=300,
    max_window_s=50.0,
)

DESCRIPTIONS = {
    wl.SHARED_PREFIX: "{groups} groups, each a {system:,}-token system prompt, + a unique "
    "{question}-token question; group chosen at random per request.",
    wl.MULTI_TURN: "{sessions} chat sessions, each opening with its own {context:,}-token "
    "context; each turn resends the whole conversation (the simulator's deterministic replies "
    "included) plus a new {question}-token question; a session's turns come ~{sessions} "
    "arrivals apart.",
    wl.UNIQUE: "Control: every prompt is {unique:,} tokens of new text (no shared prefix).",
}


def policy_params(name: str, shape: SimShape, wshape: wl.WorkloadShape) -> dict[str, str]:
    """Params a policy is run with: only facts about the engines, no tuning. prefix_aware is
    told the engines' KV cache size and prefill speed (its defaults, 262,144 tokens and 8,000
    tokens/s, describe a typical vLLM replica; these simulated engines hold 16,384 tokens and,
    sped up, prefill far faster)."""
    if name == "prefix_aware":
        rate = shape.prefill_tokens_per_s(wshape.system_tokens)
        return {
            "member_capacity_tokens": str(shape.kv_tokens),
            "prefill_tokens_per_s": f"{rate:.0f}",
        }
    return {}


def registered_policies() -> list[str]:
    """Policy names the gateway's registry knows in this checkout (plugins from the
    `llmpool.policies` entry point group included when the registry loads them)."""
    from gateway.policies import PolicyRegistry

    return [n for n in PolicyRegistry.load().names() if n != ORACLE_POLICY]


async def measure_overhead(cluster: Cluster, shape: SimShape, samples: int = 30) -> float:
    """Wall seconds our path adds to TTFT: median TTFT of a tiny streamed request through the
    gateway minus straight to an engine, one at a time on an idle cluster."""
    body = TINY_STREAM
    engine = cluster.engine_urls[0].removeprefix("http://")
    host, port = engine.rsplit(":", 1)
    direct_pool, gateway_pool = (
        ConnectionPool(host, int(port)),
        ConnectionPool(HOST, cluster.gateway_port),
    )
    await cluster.set_policy("round_robin")
    medians: list[float] = []
    for pool in (direct_pool, gateway_pool):
        ttfts: list[float] = []
        for _ in range(samples):
            sent = time.perf_counter()
            out = await send(pool, body, {}, 10.0)
            if out.ok and out.first_token_at is not None:
                ttfts.append(out.first_token_at - sent)
        pool.close()
        medians.append(statistics.median(ttfts) if ttfts else float("nan"))
    return medians[1] - medians[0]


class Runner:
    """Runs every system at every rate of every workload against one cluster."""

    def __init__(self, cluster: Cluster, profile: Profile, workdir: Path) -> None:
        self.cluster = cluster
        self.profile = profile
        self.workdir = workdir
        self.shape = cluster.shape
        self.results: list[RunResult] = []
        self._policy = "round_robin"
        self.oracle_mode = "gateway"
        self.oracle_note = ""

    async def run_policy(self, name: str, reqs: list[wl.BenchRequest], res: RunResult) -> None:
        if name == self._policy:
            # Same name: the gateway would keep the old policy object and its state; rebuild it.
            other = "least_in_flight" if name == "round_robin" else "round_robin"
            await self.cluster.set_policy(other)
        await self.cluster.set_policy(name, policy_params(name, self.shape, wl.WorkloadShape()))
        self._policy = name
        gateway = ConnectionPool(HOST, self.cluster.gateway_port)
        try:
            await self._measure(reqs, res, lambda _: gateway)
        finally:
            gateway.close()

    async def run_oracle(self, reqs: list[wl.BenchRequest], res: RunResult) -> None:
        """Through the gateway (the bench_oracle plugin policy), like every policy; with
        --oracle-direct, in the load generator straight to the engines (labelled so)."""
        if self.oracle_mode == "gateway":
            await self.run_policy(ORACLE_POLICY, reqs, res)
            if self.cluster.gateway_log_mentions_unknown(ORACLE_POLICY):
                # The gateway fell back to round robin: these numbers are not the oracle's.
                res.skipped = "not run: the gateway did not load the bench_oracle plugin"
            return
        self.oracle_note = "explicit fallback (--oracle-direct): load generator to the engines"
        urls = self.cluster.engine_urls
        pools = [
            ConnectionPool(u.removeprefix("http://").rsplit(":", 1)[0], int(u.rsplit(":", 1)[1]))
            for u in urls
        ]
        res.note = self.oracle_note
        try:
            await self._measure(reqs, res, lambda r: pools[assign(r.affinity, urls)])
        finally:
            for p in pools:
                p.close()

    async def run_router(self, reqs: list[wl.BenchRequest], res: RunResult) -> None:
        # A fresh router per run: its prefix tree would otherwise remember the last run.
        running: Running = await start_router(self.cluster.engine_urls, POOL, self.workdir)
        pool = ConnectionPool(HOST, running.port)
        try:
            await self._measure(reqs, res, lambda _: pool)
        finally:
            pool.close()
            await running.stop()

    async def _measure(
        self,
        reqs: list[wl.BenchRequest],
        res: RunResult,
        target: Callable[[wl.BenchRequest], ConnectionPool],
    ) -> None:
        before = await self.cluster.scrape()
        got = await drive(reqs, target, POOL, self.shape.speedup, self.profile.grace_s)
        await self.cluster.quiesce_and_reset()
        after = await self.cluster.scrape()
        fill_result(res, got, deltas(after, before))

    async def one(
        self, workload: str, rate: float, system: str, reqs: list[wl.BenchRequest]
    ) -> None:
        res = RunResult(workload, system, rate)
        try:
            if system == ORACLE:
                await self.run_oracle(reqs, res)
            elif system == VLLM_ROUTER:
                await self.run_router(reqs, res)
            else:
                await self.run_policy(system, reqs, res)
        except grpc.aio.AioRpcError as exc:
            res.skipped = f"not run: {exc.code().name}: {exc.details()}"
        except StartError as exc:
            res.skipped = f"not run: {exc}"
        self.results.append(res)
        if res.skipped:
            print(f"  {system:<26} {res.skipped[:150]}", flush=True)
            return
        print(
            f"  {system:<26} ok {res.ok}/{res.scheduled} TTFT p50 {res.ttft_p50:.3f} s "
            f"p99 {res.ttft_p99:.3f} s ITL p50 {res.itl_p50 * 1e3:.1f} ms "
            f"{res.tokens_per_s:.0f} tok/s hit {res.hit_rate:.0%} "
            f"imbalance {res.imbalance:.2f}",
            flush=True,
        )


def header(
    profile: Profile,
    shape: SimShape,
    wshape: wl.WorkloadShape,
    command: str,
    elapsed_s: float,
    overhead_s: float,
    min_p50_s: float,
    policies: list[str],
    counts: dict[float, int] | None = None,
) -> list[str]:
    overhead_sim = overhead_s * shape.speedup
    counts_text = ", ".join(
        f"{n} at {rate:g}/s ({n / rate:.0f} s of arrivals)"
        for rate, n in sorted((counts or {}).items())
    )
    share = overhead_sim / min_p50_s if min_p50_s > 0 else float("nan")
    lines = [
        f"Generated by `{command}` (bench/routing/, {profile.name} profile, took "
        f"{elapsed_s:.0f} s). Rerunning replaces this section only.",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.describe(ROOT)]
    lines += [
        "",
        f"The real system (`llm-pool up`: controller, agent, gateway) with one pool of "
        f"{shape.engines} `llm-pool sim-engine` replicas started by the agent: "
        f"{shape.kv_blocks} KV blocks of {shape.block_size} tokens each "
        f"({shape.kv_blocks * shape.block_size:,} tokens; a {wshape.system_tokens:,}-token "
        "system prompt takes "
        f"{-(-wshape.system_tokens // shape.block_size)} blocks, so 2 groups fit on one engine "
        f"and 8 do not), max {shape.max_num_seqs} sequences a batch, the Dynamo-fitted cost "
        "model (docs/sim-engine.md), prefix caching with LRU eviction. Policies are switched "
        "between runs through AdminService.UpdatePool (no restart); before every run the "
        "engines are idle and their prefix caches emptied (POST /reset_prefix_cache), so every "
        f"run starts cold. vllm-router ({venvs.VLLM_ROUTER_SPEC}, --policy cache_aware, the "
        "engines' URLs as --worker-urls) is started fresh for each run.",
        "",
        f"Time: the engines run at --speedup {shape.speedup:g}. Every time in the tables is "
        "simulated time: arrivals are scheduled at (simulated time / speedup) on the wall "
        "clock and measured client-side durations are multiplied by the speedup. Our real "
        "overhead (gateway hop + load generator) is measured first: median TTFT of a tiny "
        "streamed request via the gateway minus straight to an engine = "
        f"{overhead_s * 1e3:.2f} ms wall = {overhead_sim * 1e3:.1f} ms simulated, "
        f"{share:.1%} of the smallest TTFT p50 below ({min_p50_s * 1e3:.0f} ms). The agent "
        f"reports load every {shape.report_interval_s:g} s of wall time (one simulated "
        "second, LLMPOOL_REPORT_INTERVAL_S), so load figures are as fresh as a deployment's "
        "with 1 s reports.",
        "",
        f"Load: open loop, Poisson arrivals (seed {SEED}), streamed requests, max_tokens "
        f"{wshape.max_tokens}; requests per run, so what each p99 rests on: {counts_text}; "
        "requests still open "
        f"{profile.grace_s:g} s (wall) after the last send are abandoned and count as timeouts "
        "(their TTFT is infinite, so a p99 of 'timeout' means more than 1% never started). "
        "TTFT is measured by the client from each request's scheduled send time; ITL is each "
        "request's mean gap between tokens, p50 over requests; out tok/s is tokens received "
        "over the run's span. Prefix hit: hit tokens / looked-up tokens over all engines "
        "(vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total deltas). "
        "Imbalance: max / mean of requests finished per engine. `*` marks a system that keeps "
        "up at that rate (all answered, TTFT p99 <= 1 s). The oracle knows each request's "
        "group or session (header x-bench-affinity) and sends group i to engine i mod "
        f"{shape.engines}; it is a gateway policy plugin (bench/routing/oracle.py, loaded by "
        "LLMPOOL_GATEWAY_POLICY_PLUGINS and allowed by LLMPOOL_CONTROLLER_EXTRA_POLICIES), so "
        "it pays the same gateway hop as every policy. Policies run: "
        f"{', '.join(policies)}; all with default params except prefix_aware, which is told "
        f"the engines' KV cache size (member_capacity_tokens={shape.kv_tokens}) and wall-clock "
        "prefill speed (prefill_tokens_per_s="
        f"{shape.prefill_tokens_per_s(wshape.system_tokens):.0f}): facts about the engines, "
        "not tuning.",
    ]
    return lines


async def run_all(
    profile: Profile,
    policies: list[str],
    rates: tuple[float, ...] | None,
    only: list[str],
    with_router: bool,
    out: Path,
    command: str,
    oracle_direct: bool = False,
) -> int:
    shape = SimShape(speedup=profile.speedup)
    wshape = wl.WorkloadShape()
    started = time.monotonic()
    systems = [*policies, ORACLE, *([VLLM_ROUTER] if with_router else [])]
    chosen = [w for w in wl.WORKLOADS if not only or w in only]
    with tempfile.TemporaryDirectory(prefix="llmpool-bench-routing-") as tmp:
        workdir = Path(tmp)
        print(f"starting llm-pool up with {shape.engines} sim engines ...", flush=True)
        cluster = await Cluster.start(workdir, shape)
        try:
            overhead = await measure_overhead(cluster, shape)
            print(
                f"our overhead: {overhead * 1e3:.2f} ms wall = "
                f"{overhead * shape.speedup * 1e3:.1f} ms simulated",
                flush=True,
            )
            await cluster.quiesce_and_reset()
            runner = Runner(cluster, profile, workdir)
            if oracle_direct:
                runner.oracle_mode = "direct"
            for workload in chosen:
                for rate in rates or profile.rates[workload]:
                    print(f"== {workload} at {rate:g} req/s (simulated)", flush=True)
                    reqs = wl.build(workload, SEED, rate, profile.count(rate), wshape)
                    for system in systems:
                        await runner.one(workload, rate, system, reqs)
        finally:
            await cluster.stop()
    elapsed = time.monotonic() - started
    ok_p50 = [r.ttft_p50 for r in runner.results if not r.skipped and r.ok]
    min_p50 = min(ok_p50) if ok_p50 else float("nan")
    descriptions = [
        (
            w,
            DESCRIPTIONS[w].format(
                groups=wshape.groups,
                system=wshape.system_tokens,
                question=wshape.question_tokens,
                sessions=wshape.sessions,
                context=wshape.session_context_tokens,
                unique=wshape.unique_tokens,
            ),
        )
        for w in chosen
    ]
    counts = {r.rate: r.scheduled for r in runner.results if not r.skipped}
    lines = header(profile, shape, wshape, command, elapsed, overhead, min_p50, policies, counts)
    section = render(runner.results, descriptions, lines)
    write_section(out, section)
    print()
    print(section)
    print()
    print("targets check:")
    for w in chosen:
        for line in targets(w, [r for r in runner.results if r.workload == w]):
            print(f"  {line}")
    print(f"written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sweep (~3 min)")
    parser.add_argument(
        "--policies",
        default="",
        help="comma-separated policy names (default: quick: round_robin, least_in_flight, "
        "prefix_aware where registered; full: every registered policy but aliases); with "
        "--untuned, the systems to run of round_robin, least_in_flight, prefix_aware, oracle",
    )
    parser.add_argument(
        "--rates", default="", help="comma-separated simulated requests/s for every workload"
    )
    parser.add_argument(
        "--workload",
        action="append",
        default=[],
        choices=wl.WORKLOADS,
        help="run only this workload (repeatable)",
    )
    parser.add_argument(
        "--no-vllm-router", action="store_true", help="leave vllm-router cache_aware out"
    )
    parser.add_argument(
        "--oracle-direct",
        action="store_true",
        help="run the oracle in the load generator, straight to the engines (a fallback for a "
        "gateway that cannot load the bench_oracle plugin; labelled in the tables)",
    )
    parser.add_argument(
        "--untuned",
        action="store_true",
        help="the untuned mode instead (bench/routing/untuned.py): no policy params, engines "
        "with different caches, static backends (saying their cache or not) and agent replicas, "
        "1 and 3 gateways",
    )
    parser.add_argument("--gateways", default="", help="--untuned: gateway counts, e.g. 1,3")
    parser.add_argument("--deployments", default="", help="--untuned: some of static,silent,agent")
    parser.add_argument(
        "--kv-blocks",
        default="",
        help="--untuned: the engines' KV caches in blocks, one engine each, e.g. "
        "1024,1024,1024,1024 (default 512,1024,2048,4096; another needs --out)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="--untuned: the workloads' seed (prompt texts, groups, arrivals; default 5; "
        "another needs --out)",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="--untuned: the engines' --speedup, simulated seconds per wall second (default 4; "
        "another needs --out): the gateways' links run on the wall clock, so a lower one shows "
        "what their lag costs at the engines' real speed",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.untuned:
        from bench.routing.untuned import main_untuned

        return main_untuned(parser, args, argv if argv is not None else sys.argv[1:])
    profile = QUICK if args.quick else FULL
    known = registered_policies()
    if args.policies:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        unknown = [p for p in policies if p not in known]
        if unknown:
            parser.error(f"unknown policies {unknown}; registered: {', '.join(known)}")
    elif profile.default_policies is not None:
        policies = [p for p in profile.default_policies if p in known]
    else:
        policies = [p for p in known if p not in ALIASES]
    rates = tuple(float(r) for r in args.rates.split(",") if r.strip()) or None
    given = argv if argv is not None else sys.argv[1:]
    command = "make bench-routing"
    if given:
        command += " BENCH_ARGS=" + shlex.quote(" ".join(given))
    with contextlib.suppress(KeyboardInterrupt):
        return aio.run(
            run_all(
                profile,
                policies,
                rates,
                args.workload,
                not args.no_vllm_router,
                args.out,
                command,
                args.oracle_direct,
            )
        )
    return 130
