"""What one system measured in one run, and the tables built from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench import report
from bench.stats import Summary
from bench.wrk import WrkResult


@dataclass
class OpenLoopRow:
    rate: float
    scheduled: int
    ok: int
    errors: int
    unfinished: int
    achieved_rps: float
    latency: Summary


@dataclass
class SseRow:
    streams: int
    errors: int
    ttft: Summary
    gap: Summary
    events_per_stream: float
    events_per_read: float
    max_events_per_read: int
    cpu_per_stream_s: float


@dataclass
class SystemResult:
    label: str
    skipped: str = ""  # why the system has no numbers
    note: str = ""
    concurrent: WrkResult | None = None
    cpu_per_request_s: float = math.nan
    machine_busy: float = math.nan  # all cores' busy share over the 64-concurrent run
    single: WrkResult | None = None
    sse: SseRow | None = None
    sse_burst: SseRow | None = None
    open_loop: list[OpenLoopRow] = field(default_factory=list)
    rss_idle: float = math.nan
    rss_peak: float = math.nan
    rss_after: float = math.nan
    processes: int = 0
    growth_requests: int = 0
    growth_before: float = math.nan
    growth_after: float = math.nan
    growth_note: str = ""


def _skip_row(r: SystemResult, width: int) -> list[str]:
    return [r.label, r.skipped, *([""] * (width - 2))]


def concurrent_table(results: list[SystemResult], connections: int) -> str:
    headers = [
        "system",
        "requests/s",
        "errors",
        "p50 ms",
        "p99 ms",
        "CPU s / 1k req",
        "CPU us / req",
        "machine busy %",
    ]
    rows = []
    for r in results:
        c = r.concurrent
        if c is None:
            rows.append(_skip_row(r, len(headers)))
            continue
        rows.append(
            [
                r.label,
                report.num(c.rps),
                report.num(c.errors),
                report.ms(c.p50_s),
                report.ms(c.p99_s),
                report.num(r.cpu_per_request_s * 1000, 3),
                report.us(r.cpu_per_request_s),
                report.num(r.machine_busy * 100),
            ]
        )
    return report.table(headers, rows)


def single_table(results: list[SystemResult]) -> str:
    base = results[0].single if results and results[0].single is not None else None
    headers = ["system", "requests/s", "errors", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"]
    rows = []
    for r in results:
        s = r.single
        if s is None:
            rows.append(_skip_row(r, len(headers)))
            continue
        add50 = s.p50_s - base.p50_s if base is not None else math.nan
        add99 = s.p99_s - base.p99_s if base is not None else math.nan
        rows.append(
            [
                r.label,
                report.num(s.rps),
                report.num(s.errors),
                report.ms(s.p50_s, 3),
                report.ms(s.p99_s, 3),
                report.ms(add50, 3),
                report.ms(add99, 3),
            ]
        )
    return report.table(headers, rows)


def sse_table(results: list[SystemResult], burst: bool = False) -> str:
    """Paced streams, or with burst the same streams sent back to back (where chunks may
    share a read, so the one-for-one verdict does not apply)."""

    def of(r: SystemResult) -> SseRow | None:
        return r.sse_burst if burst else r.sse

    base = of(results[0]) if results else None
    headers = [
        "system",
        "streams",
        "errors",
        "TTFT p50 ms",
        "added TTFT p50 ms",
        "gap p99 ms",
        "events/stream",
        "events per read (max)",
        "one for one",
        "CPU ms / stream",
    ]
    rows = []
    for r in results:
        s = of(r)
        if s is None:
            rows.append(_skip_row(r, len(headers)))
            continue
        added = s.ttft.p50 - base.ttft.p50 if base is not None else math.nan
        one_for_one = "n/a" if burst else ("yes" if s.events_per_read <= 1.1 else "NO")
        rows.append(
            [
                r.label,
                report.num(s.streams),
                report.num(s.errors),
                report.ms(s.ttft.p50, 3),
                report.ms(added, 3),
                report.ms(s.gap.p99, 2),
                report.num(s.events_per_stream, 1),
                f"{s.events_per_read:.2f} ({s.max_events_per_read})",
                one_for_one,
                report.ms(s.cpu_per_stream_s, 3),
            ]
        )
    return report.table(headers, rows)


def open_loop_table(results: list[SystemResult]) -> str:
    headers = [
        "system",
        "rate/s",
        "sent",
        "ok",
        "errors",
        "unfinished",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    ]
    rows = []
    for r in results:
        if not r.open_loop:
            rows.append(_skip_row(r, len(headers)))
            continue
        for o in r.open_loop:
            rows.append(
                [
                    r.label,
                    report.num(o.rate),
                    report.num(o.scheduled),
                    report.num(o.ok),
                    report.num(o.errors),
                    report.num(o.unfinished),
                    report.ms(o.latency.p50),
                    report.ms(o.latency.p99),
                    report.ms(o.latency.p999),
                    report.ms(o.latency.max),
                ]
            )
    return report.table(headers, rows)


def memory_table(results: list[SystemResult]) -> str:
    headers = [
        "system",
        "processes",
        "RSS idle MiB",
        "RSS peak under load MiB",
        "RSS after MiB",
        "growth check",
    ]
    rows = []
    for r in results:
        if r.skipped:
            rows.append(_skip_row(r, len(headers)))
            continue
        if r.growth_requests:
            growth = (
                f"{report.mib(r.growth_before)} → {report.mib(r.growth_after)} MiB over "
                f"{r.growth_requests:,} requests: {report.mib(r.growth_after - r.growth_before)}"
                " MiB"
            )
        else:
            growth = r.growth_note or "-"
        rows.append(
            [
                r.label,
                str(r.processes),
                report.mib(r.rss_idle),
                report.mib(r.rss_peak),
                report.mib(r.rss_after),
                growth,
            ]
        )
    return report.table(headers, rows)
