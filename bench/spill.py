"""`python -m bench.spill [--quick] [--write]`: spillover from a local pool to a fallback.

`llm-pool up` runs two pools of simulated engines: `local` (small batches: a known capacity R)
with `fallbacks: [cloud]` and a TTFT SLO, and `cloud` (large batches, standing for a remote
API). The local pool's capacity R is measured first (its fallback taken away for a closed-loop
run), then Poisson load at 0.5 R and 2 R streams unique prompts through the gateway; the
table shows TTFT percentiles from the client and how much spilled (the gateway's counter)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import yaml
from google.protobuf import field_mask_pb2

from bench.routing.client import ConnectionPool, send
from bench.routing.drive import drive
from bench.routing.results import nearest_rank
from bench.routing.workloads import BenchRequest, WorkloadShape, unique
from bench.systems import HOST, free_port, spawn
from llmpool.certs import ensure_local_pki
from llmpool.tls import TlsFiles
from llmpool.up import UP_ROLES
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2

SLO_MS = 400.0
LOCAL_BATCH = 2
SHAPE = WorkloadShape(unique_tokens=200, max_tokens=24)
BEGIN = "<!-- bench-spill:begin (make bench-spill rewrites this section) -->"
END = "<!-- bench-spill:end -->"


def sim(batch: int) -> dict[str, object]:
    command = [
        "{python}", "-m", "llmpool.cli", "sim-engine", "--host", "{host}", "--port", "{port}",
        "--model", "{model}", "--max-num-seqs", str(batch), "--log-level", "warning",
    ]  # fmt: skip
    return {
        "engine": "sim",
        "command": command,
        "health_path": "/health",
        "metrics_path": "/metrics",
        "cpu_slots": 0,
    }


def config() -> str:
    pools = [
        {
            "name": "local",
            "policy": "least_in_flight",
            "replicas": 2,
            "fallbacks": ["cloud"],
            "ttft_slo_ms": SLO_MS,
            "template": sim(LOCAL_BATCH),
        },
        {"name": "cloud", "policy": "least_in_flight", "replicas": 2, "template": sim(64)},
    ]
    return yaml.safe_dump({"pools": pools}, sort_keys=False)


@dataclass
class Row:
    reasons: str
    load: str
    rate: float
    requests: int
    errors: int
    spilled: float
    p50_ms: float
    p99_ms: float


async def spilled_by_reason(http: httpx.AsyncClient, gateway: str) -> dict[str, float]:
    text = (await http.get(f"http://{gateway}/metrics")).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llmpool_gateway_spilled_requests_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = found.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


async def wait_ready(admin: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            counts = [
                (
                    await admin.GetPoolStatus(admin_pb2.GetPoolStatusRequest(name=n), timeout=2)
                ).healthy_members
                for n in ("local", "cloud")
            ]
            if counts == [2, 2]:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError("the pools did not get ready")


async def set_fallbacks(admin: Any, names: list[str]) -> None:
    pool = types_pb2.Pool(name="local", fallbacks=names)
    mask = field_mask_pb2.FieldMask(paths=["fallbacks"])
    request = admin_pb2.UpdatePoolRequest(pool=pool, update_mask=mask)
    await admin.UpdatePool(request, timeout=5)


async def capacity(target: ConnectionPool, seconds: float) -> float:
    """Requests a second the local pool completes when every batch slot stays busy."""
    requests = unique(7, 1000.0, 10_000, SHAPE)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            out = await send(target, _body(requests[i % len(requests)]), {}, 30.0)
            done += out.ok
            i += 16

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(2 * LOCAL_BATCH * 2)))
    return done / (time.perf_counter() - start)


def _body(req: BenchRequest) -> bytes:
    return orjson.dumps(req.body("local"))


async def run(quick: bool) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-spill-"))
    cfg = workdir / "spill.yaml"
    cfg.write_text(config())
    gateway, controller = f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"
    tls_dir = workdir / "data" / "tls"
    ensure_local_pki(tls_dir, UP_ROLES)
    argv = [
        sys.executable, "-m", "llmpool.cli", "up", "--config", str(cfg), "--data-dir",
        str(workdir / "data"), "--gateway-listen", gateway, "--controller-listen", controller,
        "--controller-metrics-listen", f"{HOST}:{free_port()}",
        "--agent-metrics-listen", f"{HOST}:{free_port()}", "--log-level", "warning",
    ]  # fmt: skip
    proc = await spawn("llm-pool-up", argv, workdir, {"LLMPOOL_REPORT_INTERVAL_S": "0.25"})
    channel = grpc.aio.secure_channel(
        controller, TlsFiles.in_dir(tls_dir, "admin").channel_credentials()
    )
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    target = ConnectionPool(HOST, int(gateway.rsplit(":", 1)[1]))
    rows: list[Row] = []
    try:
        await wait_ready(admin, 90)
        await set_fallbacks(admin, [])
        r = await capacity(target, 5 if quick else 10)
        await set_fallbacks(admin, ["cloud"])
        seconds = 10 if quick else 30
        async with httpx.AsyncClient() as http:
            for label, factor in (("0.5 R", 0.5), ("2 R", 2.0)):
                rate = r * factor
                count = max(20, int(rate * seconds))
                requests = unique(11, rate, count, SHAPE)
                before = await spilled_by_reason(http, gateway)
                got = await drive(requests, lambda _: target, "local", 1.0, 30.0)
                after = await spilled_by_reason(http, gateway)
                reasons = {k: v - before.get(k, 0.0) for k, v in after.items()}
                reasons = {k: v for k, v in reasons.items() if v > 0}
                spilled = sum(reasons.values())
                ttfts = [t * 1000 for t in got.ttfts_s]
                why = ", ".join(f"{k} {int(v)}" for k, v in sorted(reasons.items()))
                rows.append(
                    Row(
                        why,
                        label,
                        rate,
                        got.scheduled,
                        got.errors + got.unfinished,
                        spilled / max(1, got.scheduled),
                        nearest_rank(ttfts, 0.5),
                        nearest_rank(ttfts, 0.99),
                    )
                )
        print(f"local pool capacity R: {r:.1f} requests/s (2 engines x batch {LOCAL_BATCH})")
    finally:
        target.close()
        await channel.close(None)
        await proc.stop(timeout_s=40.0)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def render(rows: list[Row]) -> str:
    lines = [
        "## Spillover",
        "",
        f"`make bench-spill`: a local pool of 2 simulated engines (batch {LOCAL_BATCH}) with "
        f"`ttft_slo_ms: {SLO_MS:g}` and `fallbacks: [cloud]`, a cloud pool of 2 engines "
        f"(batch 64); unique {SHAPE.unique_tokens}-token prompts, {SHAPE.max_tokens} tokens out, "
        "streamed, Poisson arrivals. R is the local pool's measured capacity.",
        "",
        "| load | requests/s | requests | errors | spilled | why | p50 TTFT | p99 TTFT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.load} | {r.rate:.1f} | {r.requests} | {r.errors} | {r.spilled:.0%} | "
            f"{r.reasons or '-'} | {r.p50_ms:.0f} ms | {r.p99_ms:.0f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spill")
    parser.add_argument("--quick", action="store_true", help="10 s per load instead of 30")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.quick))
    section = render(rows)
    print(section)
    if args.write:
        path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        text = path.read_text() if path.exists() else ""
        start, end = text.find(BEGIN), text.find(END)
        block = f"{BEGIN}\n{section}\n{END}"
        text = (
            text[:start] + block + text[end + len(END) :]
            if start >= 0 <= end
            else (text.rstrip("\n") + "\n\n" + block + "\n")
        )
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
