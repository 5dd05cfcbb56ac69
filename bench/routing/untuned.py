"""`make bench-routing BENCH_ARGS=--untuned`: prefix_aware with no params at all, on engines whose
KV caches differ (512 to 4,096 blocks), served as static backends and as agent replicas, behind
1 and 3 gateways that share the load; writes the "Routing, untuned" section of
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import orjson

from bench import aio, machine
from bench.routing import workloads as wl
from bench.routing.client import ConnectionPool, send
from bench.routing.cluster import TINY_STREAM, fill_result
from bench.routing.drive import drive
from bench.routing.engine_stats import deltas
from bench.routing.fleet import AGENT, DEPLOYMENTS, SILENT, STATIC, Fleet, FleetShape
from bench.routing.oracle import ORACLE_POLICY
from bench.routing.report import write_section
from bench.routing.results import (
    ORACLE,
    PREFIX_AWARE,
    ROUND_ROBIN,
    RunResult,
    nearest_rank,
    workload_table,
)
from bench.routing.targets import SETTLED_S, Row, checks
from bench.systems import HOST, StartError

ROOT = Path(__file__).resolve().parents[2]
SEED = 5
BEGIN = "<!-- bench-routing-untuned:begin (make bench-routing BENCH_ARGS=--untuned) -->"
END = "<!-- bench-routing-untuned:end -->"
SYSTEMS = (ROUND_ROBIN, "least_in_flight", PREFIX_AWARE, ORACLE)
# Requests a fresh fleet serves, per gateway and engine, before any run is timed.
WARM_UP = 2


@dataclass(frozen=True)
class Plan:
    speedup: float
    window_s: float  # simulated seconds of arrivals per run
    grace_s: float
    rates: dict[str, tuple[float, ...]]
    gateways: tuple[int, ...] = (1, 3)
    deployments: tuple[str, ...] = DEPLOYMENTS

    def count(self, rate: float) -> int:
        return max(20, math.ceil(rate * self.window_s))


FULL = Plan(
    4.0,
    40.0,
    8.0,
    {wl.SHARED_PREFIX: (4, 10), wl.MULTI_TURN: (4, 10), wl.UNIQUE: (4, 8)},
)
QUICK = Plan(
    4.0,
    20.0,
    6.0,
    {wl.SHARED_PREFIX: (8,), wl.MULTI_TURN: (8,), wl.UNIQUE: (6,)},
    gateways=(3,),
    deployments=(STATIC,),
)


HEADINGS = {
    STATIC: "### static backends, {gws} gateway(s)",
    SILENT: "### static backends whose engines say nothing of their cache, {gws} gateway(s)",
    AGENT: "### agent replicas, {gws} gateway(s)",
}


class UntunedRunner:
    def __init__(self, fleet: Fleet, plan: Plan) -> None:
        self.fleet = fleet
        self.plan = plan
        self._policy = ""

    def oracle_params(self) -> dict[str, str]:
        ids = [f"engine-{i}" for i in range(len(self.fleet.fleet.kv_blocks))]
        weights = ",".join(f"{i}={b}" for i, b in zip(ids, self.fleet.fleet.kv_blocks, strict=True))
        return {"weights": weights}

    async def warm_up(self) -> None:
        """Sends WARM_UP tiny streams through every gateway to every engine (round robin) and
        waits for each: a process's first requests pay one-time costs that are not routing
        (connections, code met for the first time). Seen without it: whichever system ran
        first on a fresh fleet had its first request to each engine ~70 ms slower (simulated),
        four of the slowest in its run (with oracle first, the oracle's p99 0.152 s against
        prefix_aware's 0.122; in the other order 0.100 against 0.150)."""
        fleet = self.fleet
        await fleet.set_policy(ROUND_ROBIN)
        self._policy = ROUND_ROBIN
        engines = len(fleet.fleet.kv_blocks)
        for port in fleet.gateway_ports:
            pool = ConnectionPool(HOST, port)
            try:
                for _ in range(WARM_UP * engines):
                    out = await send(pool, TINY_STREAM, {}, 10.0)
                    if not out.ok:
                        raise StartError(f"warm-up request failed: {out.error}")
            finally:
                pool.close()
        await fleet.quiesce_and_reset()

    async def run(
        self, system: str, reqs: list[wl.BenchRequest], res: RunResult
    ) -> tuple[str, float]:
        """Runs one system; returns what prefix_aware did (else "") and the settled p99."""
        fleet = self.fleet
        policy = ORACLE_POLICY if system == ORACLE else system
        if policy == self._policy:
            # A fresh policy object (and state) for every run: switch away and back.
            await fleet.set_policy("least_in_flight" if policy == ROUND_ROBIN else ROUND_ROBIN)
        await fleet.set_policy(policy, self.oracle_params() if system == ORACLE else {})
        self._policy = policy
        pools = [ConnectionPool(HOST, p) for p in fleet.gateway_ports]
        turn = iter(range(1 << 30))
        try:
            before = await fleet.scrape()
            got = await drive(
                reqs,
                lambda _: pools[next(turn) % len(pools)],
                "bench-routing",
                fleet.shape.speedup,
                self.plan.grace_s,
            )
            caches = learned_caches(await fleet.gateway_metrics()) if system == PREFIX_AWARE else ""
            await fleet.quiesce_and_reset()
            after = await fleet.scrape()
        finally:
            for p in pools:
                p.close()
        fill_result(res, got, deltas(after, before))
        if system == PREFIX_AWARE:
            spread = members_per_group([r.affinity for r in reqs], got.members)
            if spread:
                caches = f"{spread:.2f} members a group; {caches}"
        _trace(system, res, reqs, got.ttfts_s, got.members, len(pools))
        late = [t for t, r in zip(got.ttfts_s, reqs, strict=True) if r.at_s >= SETTLED_S]
        return caches, nearest_rank(late, 99) if late else math.nan


def _trace(
    system: str,
    res: RunResult,
    reqs: list[wl.BenchRequest],
    ttfts: list[float],
    members: list[str],
    gateways: int,
) -> None:
    """With LLMPOOL_BENCH_TRACE set to a file, appends every request of the run to it as a JSON
    line (when sent, its group or session, the gateway, who served it, its TTFT): where a tail
    comes from, for whoever works on a policy."""
    path = os.environ.get("LLMPOOL_BENCH_TRACE")
    if not path:
        return
    with open(path, "ab") as out:
        for i, (req, ttft, member) in enumerate(zip(reqs, ttfts, members, strict=False)):
            line = {
                "system": system,
                "workload": res.workload,
                "rate": res.rate,
                "at_s": round(req.at_s, 4),
                "affinity": req.affinity,
                "gateway": i % gateways,
                "member": member,
                "ttft_s": ttft if math.isfinite(ttft) else None,
            }
            out.write(orjson.dumps(line) + b"\n")


def members_per_group(affinities: list[str], members: list[str]) -> float:
    """How many members served a group (or session), on average over groups of at least 8
    requests; a member counts where it served at least 10% of its group. 0: no such group."""
    served: dict[str, Counter[str]] = defaultdict(Counter)
    for group, member in zip(affinities, members, strict=True):
        if member:
            served[group][member] += 1
    counts = [
        sum(1 for n in c.values() if n >= 0.1 * c.total())
        for c in served.values()
        if c.total() >= 8
    ]
    return sum(counts) / len(counts) if counts else 0.0


def learned_caches(texts: list[str]) -> str:
    """Each gateway's llmpool_gateway_member_cache_tokens with the hits and misses its
    predictions there had (llmpool_gateway_prefix_predictions_total), as
    'gw0 (45 us/token): engine-0 8k (12/3) +6k, ...' (the prefill speed it learned, 0: none;
    + what it counted of other gateways' sends there at the end, llmpool_gateway_member_
    others_tokens, where any; 'room 6k': what it saw the member unable to run at once,
    llmpool_gateway_member_kv_room_tokens, where any)."""
    out: list[str] = []
    for n, text in enumerate(texts):
        found: dict[str, float] = {}
        told: dict[tuple[str, str], float] = {}
        others: dict[str, float] = {}
        room: dict[str, float] = {}
        speed = 0.0
        for line in text.splitlines():
            if line.startswith("llmpool_gateway_prefill_seconds_per_token{"):
                speed = float(line.rpartition(" ")[2])
            if line.startswith("llmpool_gateway_member_cache_tokens{"):
                labels, _, value = line.rpartition(" ")
                found[_label(labels, "backend")] = float(value)
            elif line.startswith("llmpool_gateway_member_others_tokens{"):
                labels, _, value = line.rpartition(" ")
                others[_label(labels, "backend")] = float(value)
            elif line.startswith("llmpool_gateway_member_kv_room_tokens{"):
                labels, _, value = line.rpartition(" ")
                room[_label(labels, "backend")] = float(value)
            elif line.startswith("llmpool_gateway_prefix_predictions_total{"):
                labels, _, value = line.rpartition(" ")
                told[(_label(labels, "backend"), _label(labels, "outcome"))] = float(value)
        if found:
            out.append(
                f"gw{n} ({speed * 1e6:.0f} us/token): "
                + ", ".join(
                    f"{k} {v / 1000:.0f}k ({told.get((k, 'hit'), 0):.0f}/"
                    f"{told.get((k, 'miss'), 0):.0f})"
                    + (f" +{others[k] / 1000:.0f}k" if others.get(k) else "")
                    + (f" room {room[k] / 1000:.0f}k" if room.get(k) else "")
                    for k, v in sorted(found.items())
                )
            )
    return "; ".join(out)


def _label(labels: str, name: str) -> str:
    return labels.split(f'{name}="', 1)[1].split('"', 1)[0]


def render(
    rows: list[Row],
    plan: Plan,
    shape: FleetShape,
    command: str,
    took_s: float,
    steal: float | None = None,
    seed: int = SEED,
) -> str:
    wshape = wl.WorkloadShape()
    caches = ", ".join(f"{b:,}" for b in shape.kv_blocks)
    alike = len(set(shape.kv_blocks)) == 1
    lines = [
        "## Routing, untuned",
        "",
        f"Generated by `{command}` (bench/routing/untuned.py, took {took_s:.0f} s). Rerunning "
        "replaces this section only.",
        "",
        *[f"- {k}: {v}" for k, v in machine.describe(ROOT)],
        *(
            [f"- CPU steal during the run: {steal:.0%} (the VM's host running others' work)"]
            if steal is not None
            else []
        ),
        "",
        f"{len(shape.kv_blocks)} `llm-pool sim-engine`s "
        f"{'with equal KV caches' if alike else 'whose KV caches differ'}: {caches} blocks "
        f"of {shape.block_size} tokens, --speedup {shape.speedup:g} (times below are "
        "simulated), started by the benchmark and served by `llm-pool up` as static "
        "backends (no agent: the controller reads each engine's cache from its "
        "`vllm:cache_config_info` on /metrics, as from a vLLM run by hand), as static backends "
        "whose engines say nothing of their cache (`silent`: `--cache-info false`, as "
        "llama-cpp-python's server; the gateways learn each cache from answers alone), or as "
        "replicas its agent watches (`--attach`: the agent reads each engine's cache from "
        "`vllm:cache_config_info` and reports it). 1 or 3 gateways; the load generator sends "
        "request i to gateway i mod N. Every policy runs with NO params, prefix_aware "
        "included: it starts from its defaults (262,144 tokens a member, 8,000 tokens/s) and "
        "learns each member's cache and prefill speed during the run (a fresh policy every "
        "run, engines' caches emptied between runs; the policy switch between runs makes the "
        "controller drop what gateways learned, so nothing carries over). The oracle knows "
        "each request's group or session and sends group i to the i-th engine of a weighted "
        "round robin by cache size (an engine with twice the cache gets twice the groups). "
        "`*`: keeps up (all answered, p99 <= 1 s).",
        "",
        f"Workloads (sizes as in the Routing section): shared_prefix, {wshape.groups} groups "
        f"of {wshape.system_tokens:,}-token system prompts; multi_turn, {wshape.sessions} "
        f"sessions of {wshape.session_context_tokens:,}-token contexts; unique "
        f"{wshape.unique_tokens:,}-token prompts. {plan.window_s:g} simulated seconds of "
        f"Poisson arrivals per run (workload seed {seed}).",
        "",
    ]
    for dep in plan.deployments:
        for gws in plan.gateways:
            part = [r for r in rows if r.deployment == dep and r.gateways == gws]
            if not part:
                continue
            lines += [
                HEADINGS[dep].format(gws=gws),
                "",
            ]
            for workload in wl.WORKLOADS:
                results = [r.result for r in part if r.result.workload == workload]
                if not results:
                    continue
                lines += [f"{workload}:", "", workload_table(results), ""]
                learned = sorted(
                    {
                        f"- {workload} @ {r.result.rate:g}/s: {r.caches}"
                        for r in part
                        if r.caches and r.result.workload == workload
                    }
                )
                if learned:
                    lines += [
                        "What prefix_aware did: how many members served a group or session "
                        "(on average; a member counts where it served 10% of it), and the "
                        "caches it learned (tokens, per gateway; with its predictions there, "
                        "hits/misses; +: other gateways' sends it counted there; room: the "
                        "prompt it saw the member unable to run at once):",
                        "",
                        *learned,
                        "",
                    ]
    lines += ["Targets:", "", *(f"- {c}" for c in checks(rows)), ""]
    return "\n".join(lines)


async def run_untuned(
    quick: bool,
    out: Path,
    command: str,
    only: list[str],
    gateways: tuple[int, ...] = (),
    deployments: tuple[str, ...] = (),
    rates: tuple[float, ...] = (),
    systems: tuple[str, ...] = (),
    kv_blocks: tuple[int, ...] = (),
    seed: int | None = None,
    speedup: float | None = None,
) -> int:
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; the untuned mode runs: {', '.join(SYSTEMS)}")
    plan = QUICK if quick else FULL
    if gateways:
        plan = replace(plan, gateways=gateways)
    if deployments:
        unknown = [d for d in deployments if d not in DEPLOYMENTS]
        if unknown:
            raise SystemExit(f"unknown deployments {unknown}; known: {', '.join(DEPLOYMENTS)}")
        plan = replace(plan, deployments=deployments)
    if rates:
        plan = replace(plan, rates=dict.fromkeys(plan.rates, rates))
    if speedup is not None:
        plan = replace(plan, speedup=speedup)
    started = time.monotonic()
    ticks = machine.read_cpu_ticks()
    rows: list[Row] = []
    base = FleetShape(speedup=plan.speedup)
    if kv_blocks:
        base = replace(base, kv_blocks=kv_blocks)
    seed = SEED if seed is None else seed
    wshape = wl.WorkloadShape()
    for dep in plan.deployments:
        for gws in plan.gateways:
            shape = replace(base, deployment=dep, gateways=gws)
            with tempfile.TemporaryDirectory(prefix="llmpool-bench-untuned-") as tmp:
                print(f"starting {dep} fleet, {gws} gateway(s) ...", flush=True)
                fleet = await Fleet.start_fleet(Path(tmp), shape)
                try:
                    runner = UntunedRunner(fleet, plan)
                    await runner.warm_up()
                    for workload in wl.WORKLOADS:
                        if only and workload not in only:
                            continue
                        for rate in plan.rates[workload]:
                            print(f"== {dep}, {gws} gw: {workload} at {rate:g}/s", flush=True)
                            reqs = wl.build(workload, seed, rate, plan.count(rate), wshape)
                            for system in systems or SYSTEMS:
                                res = RunResult(workload, system, rate)
                                caches, settled = "", math.nan
                                try:
                                    caches, settled = await runner.run(system, reqs, res)
                                except (grpc.aio.AioRpcError, StartError) as exc:
                                    res.skipped = f"not run: {exc}"[:200]
                                rows.append(Row(dep, gws, res, caches, settled))
                                print(
                                    f"  {system:<16} ok {res.ok}/{res.scheduled} p50 "
                                    f"{res.ttft_p50:.3f} p99 {res.ttft_p99:.3f} hit "
                                    f"{res.hit_rate:.0%} {caches}",
                                    flush=True,
                                )
                finally:
                    await fleet.stop()
    steal = machine.steal_share(ticks, machine.read_cpu_ticks())
    section = render(rows, plan, base, command, time.monotonic() - started, steal, seed)
    write_section(out, section, BEGIN, END)
    print()
    print(section)
    print(f"written to {out}")
    return 0


def main_untuned(
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: list[str]
) -> int:
    """`python -m bench.routing --untuned ...` (bench/routing/run.py's parser and arguments)."""
    command = "make bench-routing BENCH_ARGS=" + shlex.quote(" ".join(given))
    gateways = tuple(int(g) for g in args.gateways.split(",") if g.strip())
    try:
        kv_blocks = tuple(int(b) for b in args.kv_blocks.split(",") if b.strip())
    except ValueError:
        parser.error(f"--kv-blocks: whole numbers of blocks, not {args.kv_blocks!r}")
    if any(not 16 <= b <= 1 << 20 for b in kv_blocks) or len(kv_blocks) > 16:
        parser.error("--kv-blocks: 1 to 16 engines of 16 to 1,048,576 blocks")
    if args.speedup is not None and not 0.25 <= args.speedup <= 16:
        parser.error("--speedup: 0.25 to 16")
    custom = kv_blocks or args.seed is not None or args.speedup is not None
    if custom and args.out == parser.get_default("out"):
        # docs/benchmarks.md records the acceptance layout, seed and speed only.
        parser.error("--kv-blocks, --seed and --speedup write elsewhere: give --out FILE")
    deployments = tuple(d.strip() for d in args.deployments.split(",") if d.strip())
    return aio.run(
        run_untuned(
            args.quick,
            args.out,
            command,
            args.workload,
            gateways,
            deployments,
            tuple(float(r) for r in args.rates.split(",") if r.strip()),
            tuple(p.strip() for p in args.policies.split(",") if p.strip()),
            kv_blocks,
            args.seed,
            args.speedup,
        )
    )


__all__ = ["AGENT", "SILENT", "STATIC", "main_untuned", "run_untuned"]
