"""One run's numbers (simulated time), the per-workload tables and the issue's targets check."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.report import table

# Interactive bound used to say whether a system keeps up at a rate: every request answered and
# TTFT p99 under this many simulated seconds (beyond it the queue grows through the run).
KEEPS_UP_P99_S = 1.0
ORACLE = "oracle"
VLLM_ROUTER = "vllm-router cache_aware"
PREFIX_AWARE = "prefix_aware"
ROUND_ROBIN = "round_robin"
# Policies that balance by load alone (no prompt or affinity knowledge): the control's reference.
LOAD_BASED = (
    "round_robin",
    "least_in_flight",
    "least_connections",
    "weighted_round_robin",
    "response_time",
    "queue_aware",
)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank: an observed value, never interpolated, so
    requests that never answered (inf) show as inf instead of poisoning a mean. NaN if empty."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunResult:
    """A system at one rate of one workload; times are simulated seconds."""

    workload: str
    system: str
    rate: float
    scheduled: int = 0
    ok: int = 0
    errors: int = 0
    unfinished: int = 0
    wrong_replies: int = 0
    ttft_p50: float = math.nan
    ttft_p99: float = math.nan
    itl_p50: float = math.nan
    tokens_per_s: float = math.nan
    hit_rate: float = math.nan
    imbalance: float = math.nan
    skipped: str = ""
    note: str = ""

    @property
    def keeps_up(self) -> bool:
        return (
            not self.skipped
            and self.scheduled > 0
            and self.ok == self.scheduled
            and self.ttft_p99 <= KEEPS_UP_P99_S
        )


def summarize_run(
    result: RunResult,
    ttfts_s: Sequence[float],
    itls_s: Sequence[float],
    tokens: int,
    span_s: float,
) -> RunResult:
    """Fills the latency and throughput fields; ttfts_s holds inf for requests that never got
    a first token."""
    result.ttft_p50 = nearest_rank(ttfts_s, 50)
    result.ttft_p99 = nearest_rank(ttfts_s, 99)
    result.itl_p50 = nearest_rank(itls_s, 50)
    result.tokens_per_s = tokens / span_s if span_s > 0 else math.nan
    return result


def _s(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:.3f}"


def _ms(value: float) -> str:
    return "-" if math.isnan(value) or math.isinf(value) else f"{value * 1000:.1f}"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.0f}%"


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def workload_table(rows: Sequence[RunResult]) -> str:
    """Markdown table of one workload: a row per rate and system."""
    headers = [
        "rate/s",
        "system",
        "ok/sent",
        "TTFT p50 s",
        "TTFT p99 s",
        "ITL p50 ms",
        "out tok/s",
        "prefix hit",
        "imbalance",
    ]
    body: list[list[str]] = []
    for r in sorted(rows, key=lambda r: r.rate):
        if r.skipped:
            body.append([f"{r.rate:g}", r.system, "-", *(["-"] * 5), r.skipped[:80]])
            continue
        body.append(
            [
                f"{r.rate:g}",
                r.system + (" *" if r.keeps_up else ""),
                f"{r.ok}/{r.scheduled}",
                _s(r.ttft_p50),
                _s(r.ttft_p99),
                _ms(r.itl_p50),
                "-" if math.isnan(r.tokens_per_s) else f"{r.tokens_per_s:.0f}",
                _pct(r.hit_rate),
                _x(r.imbalance),
            ]
        )
    # The first column of bench.report.table is left-aligned: put the system name there.
    swapped = [[row[1], row[0], *row[2:]] for row in body]
    return table([headers[1], headers[0], *headers[2:]], swapped)


def _by(rows: Sequence[RunResult], system: str) -> dict[float, RunResult]:
    return {r.rate: r for r in rows if r.system == system and not r.skipped}


def targets(workload: str, rows: Sequence[RunResult]) -> list[str]:
    """The issue's targets for one workload, one line each, PASS / FAIL / n/a with numbers."""
    lines: list[str] = []
    pa = _by(rows, PREFIX_AWARE)
    if workload == "unique":
        if not pa:
            return [f"{workload}: n/a (no {PREFIX_AWARE} policy registered)"]
        for rate, mine in sorted(pa.items()):
            loads = [
                r
                for r in rows
                if r.rate == rate and r.system in LOAD_BASED and not r.skipped and r.ok
            ]
            if not loads:
                continue
            best = min(loads, key=lambda r: r.ttft_p50)
            ok = mine.ttft_p50 <= best.ttft_p50 * 1.05
            lines.append(
                f"{workload} @ {rate:g}/s: {PREFIX_AWARE} TTFT p50 {_s(mine.ttft_p50)} s vs best "
                f"load-based ({best.system}) {_s(best.ttft_p50)} s, within 5%: "
                f"{'PASS' if ok else 'FAIL'}"
            )
        return lines
    oracle = _by(rows, ORACLE)
    rr = _by(rows, ROUND_ROBIN)
    router = _by(rows, VLLM_ROUTER)
    if not pa:
        return [f"{workload}: n/a (no {PREFIX_AWARE} policy registered yet)"]
    for rate, mine in sorted(pa.items()):
        o = oracle.get(rate)
        if o is not None and o.keeps_up:
            ok = mine.ttft_p99 <= 1.5 * o.ttft_p99
            lines.append(
                f"{workload} @ {rate:g}/s: {PREFIX_AWARE} p99 {_s(mine.ttft_p99)} s vs oracle "
                f"{_s(o.ttft_p99)} s, within 1.5x: {'PASS' if ok else 'FAIL'}"
            )
        r = rr.get(rate)
        if r is not None and not r.keeps_up:
            ok = mine.ttft_p99 * 10 <= r.ttft_p99
            lines.append(
                f"{workload} @ {rate:g}/s: round robin saturated (p99 {_s(r.ttft_p99)} s); "
                f"{PREFIX_AWARE} p99 {_s(mine.ttft_p99)} s, >= 10x lower: "
                f"{'PASS' if ok else 'FAIL'}"
            )
        v = router.get(rate)
        if v is not None:
            ok = mine.ttft_p99 <= v.ttft_p99
            lines.append(
                f"{workload} @ {rate:g}/s: {PREFIX_AWARE} p99 {_s(mine.ttft_p99)} s vs "
                f"{VLLM_ROUTER} {_s(v.ttft_p99)} s, better: {'PASS' if ok else 'FAIL'}"
            )
    return lines
