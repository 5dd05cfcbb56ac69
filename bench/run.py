"""`make bench-gateway`: every system side by side against one mock upstream; writes
docs/benchmarks.md and prints the tables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench import aio, loadgen, machine, procstat, results, wrk
from bench.mock_upstream import CONTROL_PATH
from bench.results import OpenLoopRow, SseRow, SystemResult
from bench.stats import summarize
from bench.systems import CHAT_PATH, HOST, Proc, Running, StartError, all_systems, spawn

ROOT = Path(__file__).resolve().parent.parent
CHAT_BODY = '{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
STREAM_BODY = (
    '{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say hello."}],'
    '"max_tokens":16}'
)


@dataclass(frozen=True)
class Profile:
    name: str
    warmup_s: float
    duration_s: float  # 64 concurrent
    single_s: float  # 1 concurrent
    connections: int
    sse_streams: int
    sse_concurrency: int
    sse_chunks: int
    sse_interval_ms: float
    open_rates: tuple[float, ...]
    open_s: float
    growth_requests: int
    growth_max_s: float  # skip the growth check where it would take longer than this


FULL = Profile("full", 3, 10, 10, 64, 400, 16, 20, 10.0, (50, 1000), 8, 100_000, 120)
QUICK = Profile("quick", 1, 2, 2, 64, 64, 8, 20, 10.0, (50, 500), 2, 20_000, 30)


class PeakSampler:
    """Samples the RSS of process trees every interval while load runs; keeps the peak."""

    def __init__(self, pids: list[int], interval_s: float = 0.1) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, procstat.sample(self.pids).rss)
            await asyncio.sleep(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def sse_phase(
    port: int,
    pids: list[int],
    profile: Profile,
    name: str,
    paced: bool = True,
    headers: Mapping[str, str] | None = None,
) -> SseRow:
    # Paced streams all last chunks x interval: spread the workers' starts over one stream so
    # that requests arrive one by one, as independent clients' do, not in bursts.
    stream_s = profile.sse_chunks * profile.sse_interval_ms / 1000.0
    stagger_s = stream_s / profile.sse_concurrency if paced else 0.0
    before = procstat.sample(pids)
    sse = await loadgen.sse_streams(
        HOST,
        port,
        CHAT_PATH,
        STREAM_BODY.encode(),
        profile.sse_streams,
        profile.sse_concurrency,
        stagger_s=stagger_s,
        headers=headers,
    )
    after = procstat.sample(pids)
    events = sum(st.events for st in sse.streams)
    reads = sum(st.reads_with_events for st in sse.streams)
    n = len(sse.streams)
    row = SseRow(
        streams=n,
        errors=sse.errors,
        ttft=summarize(st.ttft_s for st in sse.streams),
        gap=summarize(g for st in sse.streams for g in st.gaps_s),
        events_per_stream=events / n if n else math.nan,
        events_per_read=events / reads if reads else math.nan,
        max_events_per_read=max((st.max_events_per_read for st in sse.streams), default=0),
        cpu_per_stream_s=(after.cpu_s - before.cpu_s) / n if n else math.nan,
    )
    print(
        f"  {name}: {n} streams, {sse.errors} errors, TTFT p50 "
        f"{row.ttft.p50 * 1e3:.2f} ms, gap p99 {row.gap.p99 * 1e3:.2f} ms, "
        f"{row.events_per_read:.2f} events/read (max {row.max_events_per_read}), "
        f"CPU {row.cpu_per_stream_s * 1e3:.2f} ms/stream",
        flush=True,
    )
    return row


async def measure(
    label: str,
    port: int,
    pids: list[int],
    profile: Profile,
    workdir: Path,
    growth: bool,
    mock_port: int,
    headers: Mapping[str, str] | None = None,
) -> SystemResult:
    res = SystemResult(label)
    url = f"http://{HOST}:{port}{CHAT_PATH}"
    await asyncio.sleep(1.0)
    idle = procstat.sample(pids)
    res.rss_idle, res.processes = idle.rss, idle.processes
    print(f"  idle: {idle.processes} processes, RSS {idle.rss / 2**20:.1f} MiB", flush=True)
    sampler = PeakSampler(pids)
    with sampler:
        await wrk.run(
            url, CHAT_BODY, workdir, profile.connections, profile.warmup_s, headers=headers
        )
        before = procstat.sample(pids)
        box_before = procstat.machine_cpu()
        res.concurrent = await wrk.run(
            url, CHAT_BODY, workdir, profile.connections, profile.duration_s, headers=headers
        )
        box_after = procstat.machine_cpu()
        after = procstat.sample(pids)
        res.machine_busy = procstat.busy_fraction(box_before, box_after)
        if res.concurrent.requests:
            res.cpu_per_request_s = (after.cpu_s - before.cpu_s) / res.concurrent.requests
        c = res.concurrent
        print(
            f"  {profile.connections} concurrent: {c.rps:,.0f} req/s, {c.errors} errors, "
            f"p50 {c.p50_s * 1e3:.2f} ms, p99 {c.p99_s * 1e3:.2f} ms, "
            f"CPU {res.cpu_per_request_s * 1e6:.0f} us/req, "
            f"machine {res.machine_busy * 100:.0f}% busy",
            flush=True,
        )

        res.single = await wrk.run(url, CHAT_BODY, workdir, 1, profile.single_s, headers=headers)
        s = res.single
        print(
            f"  1 concurrent: {s.rps:,.0f} req/s, p50 {s.p50_s * 1e3:.3f} ms, "
            f"p99 {s.p99_s * 1e3:.3f} ms",
            flush=True,
        )

        res.sse = await sse_phase(port, pids, profile, "SSE", headers=headers)
        # The same streams with the chunks back to back: what a stream costs when the
        # per-chunk wake-ups of a paced stream do not dominate (the reference figures).
        await loadgen.post_ok(HOST, mock_port, CONTROL_PATH, b"0")
        try:
            res.sse_burst = await sse_phase(
                port, pids, profile, "SSE back to back", paced=False, headers=headers
            )
        finally:
            await loadgen.post_ok(
                HOST, mock_port, CONTROL_PATH, str(profile.sse_interval_ms).encode()
            )

        for rate in profile.open_rates:
            ol = await loadgen.open_loop(
                HOST, port, CHAT_PATH, CHAT_BODY.encode(), rate, profile.open_s, headers=headers
            )
            row = OpenLoopRow(
                ol.rate,
                ol.scheduled,
                ol.ok,
                ol.errors,
                ol.unfinished,
                ol.achieved_rps,
                summarize(ol.latencies_s),
            )
            res.open_loop.append(row)
            print(
                f"  open loop {rate:g}/s: {ol.ok}/{ol.scheduled} ok, {ol.errors} errors, "
                f"{ol.unfinished} unfinished, p50 {row.latency.p50 * 1e3:.2f} ms, "
                f"p99 {row.latency.p99 * 1e3:.2f} ms",
                flush=True,
            )
    res.rss_peak = sampler.peak
    await asyncio.sleep(1.0)
    res.rss_after = procstat.sample(pids).rss

    if growth:
        rps = res.concurrent.rps if res.concurrent else 0.0
        expected_s = profile.growth_requests / rps if rps else math.inf
        if expected_s > profile.growth_max_s:
            res.growth_note = (
                f"not run: {profile.growth_requests:,} requests would take ~{expected_s:,.0f} s"
            )
        else:
            await asyncio.sleep(0.5)
            res.growth_before = procstat.sample(pids).rss
            done = await wrk.run(
                url,
                CHAT_BODY,
                workdir,
                profile.connections,
                expected_s * 3 + 10,
                limit=profile.growth_requests,
                headers=headers,
            )
            await asyncio.sleep(1.0)
            res.growth_after = procstat.sample(pids).rss
            res.growth_requests = done.requests
            print(
                f"  growth: {res.growth_before / 2**20:.1f} -> "
                f"{res.growth_after / 2**20:.1f} MiB over {done.requests:,} requests "
                f"({done.errors} errors)",
                flush=True,
            )
    return res


async def run_all(profile: Profile, only: list[str], out: Path, command: str) -> int:
    if wrk.binary() is None:
        print("wrk is not installed: apt-get install wrk (make bench-gateway does it)")
        return 2
    rows: list[SystemResult] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmpool-bench-") as tmp:
        workdir = Path(tmp)
        mock_port = systems_free_port()
        mock = await spawn(
            "mock",
            [
                sys.executable,
                "-m",
                "bench.mock_upstream",
                "--host",
                HOST,
                "--port",
                str(mock_port),
                "--sse-chunks",
                str(profile.sse_chunks),
                "--sse-interval-ms",
                str(profile.sse_interval_ms),
            ],
            workdir,
        )
        try:
            if not await wait_mock(mock_port, mock):
                print(f"mock upstream did not start: {mock.tail()}")
                return 1
            for spec in all_systems():
                if only and not any(o.lower() in spec.label.lower() for o in only):
                    continue
                print(f"== {spec.label}", flush=True)
                if spec.start is None:
                    res = await measure(
                        spec.label, mock_port, [mock.pid], profile, workdir, False, mock_port
                    )
                    res.note = "the mock's own process"
                    rows.append(res)
                    continue
                running: Running | None = None
                try:
                    running = await spec.start(mock_port, workdir)
                    res = await measure(
                        spec.label,
                        running.port,
                        running.pids,
                        profile,
                        workdir,
                        True,
                        mock_port,
                        running.headers,
                    )
                    res.note = running.version
                    rows.append(res)
                except StartError as exc:
                    print(f"  skipped: {exc}", flush=True)
                    rows.append(SystemResult(spec.label, skipped=str(exc)[:200]))
                finally:
                    if running is not None:
                        await running.stop()
        finally:
            await mock.stop()
    elapsed = time.monotonic() - started
    write_report(out, render(rows, profile, command, elapsed))
    return 0


def write_report(out: Path, text: str) -> None:
    """Writes the gateway section; sections other benchmarks own (from the first
    `<!-- bench-` marker on) are kept as they are."""
    old = out.read_text() if out.exists() else ""
    kept = old.find("\n<!-- bench-")
    out.write_text(text if kept < 0 else text.rstrip("\n") + "\n" + old[kept:])
    print()
    print(text)
    print(f"written to {out}")


def systems_free_port() -> int:
    from bench.systems import free_port

    return free_port()


async def wait_mock(port: int, mock: Proc) -> bool:
    for _ in range(100):
        if not mock.alive():
            return False
        if await loadgen.get_ok(HOST, port, "/health"):
            return True
        await asyncio.sleep(0.1)
    return False


def render(rows: list[SystemResult], profile: Profile, command: str, elapsed_s: float) -> str:
    lines = [
        "# Gateway benchmark",
        "",
        "Generated by `make bench-gateway` (bench/run.py); each run overwrites this file. "
        "Do not edit by hand.",
        "",
        f"Command: `{command}` ({profile.name} profile, took {elapsed_s:.0f} s)",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.describe(ROOT)]
    lines += [
        "",
        "Everything runs on this one machine over 127.0.0.1: the load generator, the mock "
        "upstream and the system under test share its cores, so the numbers compare systems "
        "with each other on the same machine rather than give absolute capacity. The mock "
        "(bench/mock_upstream.py: raw asyncio protocol on uvloop, pre-built responses) is the "
        "same process for every row; the first row goes straight to it and is the floor. "
        "CPU and RSS are summed over the system's own processes (all workers; for llm-pool the "
        "gateway, not the controller, which is off the request path); for the floor row they "
        "are the mock's.",
        "",
        f"## Non-streaming chat, {profile.connections} connections, closed loop",
        "",
        f"wrk, 1 thread, {profile.connections} keep-alive connections, {profile.duration_s:g} s "
        f"after {profile.warmup_s:g} s of warm-up. Errors: connect, read, write, timeout and "
        "non-2xx. CPU: user + system time of the system's processes over the run "
        "(/proc/PID/stat), divided by requests served. Machine busy: all cores' busy time over "
        "the run (/proc/stat, everything on the box: wrk, the mock and the system), as a share "
        "of all cores' time; near 100% the box itself is the limit, so more workers cannot "
        "add throughput.",
        "",
        results.concurrent_table(rows, profile.connections),
        "",
        "## Non-streaming chat, 1 connection, closed loop: added latency",
        "",
        f"wrk, 1 connection, {profile.single_s:g} s. Added = this row minus the floor row, both "
        "measured by the same client.",
        "",
        results.single_table(rows),
        "",
        f"## Streaming (SSE), {profile.sse_chunks} chunks {profile.sse_interval_ms:g} ms apart",
        "",
        f"{profile.sse_streams} streams, {profile.sse_concurrency} at a time (the clients' starts "
        "spread over one stream's length, so requests arrive one by one rather than in bursts "
        "that would measure queueing), read by a Python "
        "client on raw asyncio streams that timestamps every socket read. TTFT: request sent "
        "to the first complete event. Gap: time between consecutive events (p99 over all "
        "streams). Events per read: events / reads that completed at least one event; 1.00 "
        "means chunks pass one for one, a buffering proxy shows the whole stream in one read "
        "(max column). Events per stream includes `[DONE]` and any usage chunk. CPU per "
        "stream: the system's CPU over the SSE phase / streams.",
        "",
        results.sse_table(rows),
        "",
        f"## Streaming (SSE), {profile.sse_chunks} chunks back to back",
        "",
        "The same streams with the mock sending every chunk as soon as the last was written "
        "(its pacing set to 0 ms between phases through its control path, not through the "
        "system under test). A paced stream costs a wake-up per chunk in every process on the "
        "path; back to back, what remains is the per-stream work and the per-chunk copying. "
        "Chunks may share a read here, so one for one is not judged.",
        "",
        results.sse_table(rows, burst=True),
        "",
        "## Open loop, constant rate",
        "",
        f"Python asyncio client, {profile.open_s:g} s per rate, requests sent on a fixed "
        "schedule whatever the answers do; latency runs from each request's scheduled send "
        "time (no coordinated omission). Up to 256 connections; requests still open 5 s after "
        "the last send count as unfinished.",
        "",
        results.open_loop_table(rows),
        "",
        "## Memory",
        "",
        "RSS summed over the system's processes: idle after start-up, the peak sampled every "
        "100 ms through all load above, and 1 s after it. Growth check: RSS before and after "
        f"{profile.growth_requests:,} more non-streaming requests at {profile.connections} "
        "connections (after all the load above as warm-up).",
        "",
        results.memory_table(rows),
        "",
    ]
    notes = [f"- {r.label}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["Versions and notes:", "", *notes, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (~2 min)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only systems whose label contains this (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    given = argv if argv is not None else sys.argv[1:]
    command = "make bench-gateway"
    if given:
        command += " BENCH_ARGS=" + shlex.quote(" ".join(given))
    with contextlib.suppress(KeyboardInterrupt):
        return aio.run(run_all(profile, args.only, args.out, command))
    return 130
