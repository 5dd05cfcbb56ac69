"""The system under test: `llm-pool up` with one pool of sim engines, driven by the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import yaml
from google.protobuf import field_mask_pb2

from bench.routing.drive import Collected
from bench.routing.engine_stats import (
    EngineCounters,
    hit_rate,
    imbalance,
    parse_counters,
)
from bench.routing.oracle import ORACLE_POLICY
from bench.routing.results import RunResult, summarize_run
from bench.systems import HOST, Proc, StartError, free_port, spawn
from llmpool.certs import ensure_local_pki
from llmpool.sim.costs import CostModel
from llmpool.tls import TlsFiles
from llmpool.up import UP_ROLES
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2

POOL = "bench-routing"
# A one-token stream of a two-letter prompt: what the benches send to warm a path or time it.
TINY_STREAM = (
    b'{"model":"' + POOL.encode() + b'","stream":true,"max_tokens":1,'
    b'"messages":[{"role":"user","content":"hi"}]}'
)
ORACLE_PLUGIN = "bench.routing.oracle:AffinityOracle"


@dataclass(frozen=True)
class SimShape:
    """The simulated engines: how many, how fast, how much KV cache."""

    engines: int = 4
    speedup: float = 4.0
    kv_blocks: int = 256
    block_size: int = 64
    max_num_seqs: int = 64

    @property
    def report_interval_s(self) -> float:
        """Wall seconds between agent reports: one simulated second."""
        return 1.0 / self.speedup

    @property
    def kv_tokens(self) -> int:
        """Tokens one engine's KV cache holds."""
        return self.kv_blocks * self.block_size

    def prefill_tokens_per_s(self, prompt_tokens: int) -> float:
        """Wall-clock prefill throughput of one engine on a prompt of this size (the simulator's
        default cost model, sped up)."""
        return prompt_tokens / (CostModel().prefill_ms(prompt_tokens) / 1000.0) * self.speedup

    def engine_args(self) -> list[str]:
        return [
            "--speedup",
            f"{self.speedup:g}",
            "--kv-blocks",
            str(self.kv_blocks),
            "--block-size",
            str(self.block_size),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--log-level",
            "warning",
        ]


def config_yaml(shape: SimShape, policy: str = "round_robin") -> str:
    """The `llm-pool up` config: one pool of `engines` sim replicas, prefix caching on (always
    on in the sim), no CPU slot each so that all fit on this host."""
    command = [
        "{python}",
        "-m",
        "llmpool.cli",
        "sim-engine",
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--model",
        "{model}",
        *shape.engine_args(),
    ]
    config = {
        "pools": [
            {
                "name": POOL,
                "policy": policy,
                "replicas": shape.engines,
                "description": "make bench-routing: simulated engines with a small KV cache",
                "template": {
                    "engine": "sim",
                    "command": command,
                    "health_path": "/health",
                    "metrics_path": "/metrics",
                    "ready_timeout_s": 60,
                    "cpu_slots": 0,
                },
            }
        ]
    }
    return yaml.safe_dump(config, sort_keys=False)


def up_argv(config: Path, data: Path, gateway_port: int, controller: str) -> list[str]:
    """`llm-pool up` with this config and data dir, on these addresses, quiet."""
    return [
        sys.executable,
        "-m",
        "llmpool.cli",
        "up",
        "--config",
        str(config),
        "--data-dir",
        str(data),
        "--gateway-listen",
        f"{HOST}:{gateway_port}",
        "--controller-listen",
        controller,
        "--controller-metrics-listen",
        f"{HOST}:{free_port()}",
        "--agent-metrics-listen",
        f"{HOST}:{free_port()}",
        "--log-level",
        "warning",
    ]


def fill_result(res: RunResult, got: Collected, d: list[EngineCounters]) -> None:
    """A run's client-side measurements and the engines' counter deltas into res."""
    res.scheduled, res.ok, res.errors = got.scheduled, got.ok, got.errors
    res.unfinished, res.wrong_replies = got.unfinished, got.wrong_replies
    summarize_run(res, got.ttfts_s, got.itls_s, got.tokens, got.span_s)
    res.hit_rate = hit_rate(d)
    res.imbalance = imbalance([x.finished for x in d])
    if got.first_error:
        res.note = (res.note + "; " if res.note else "") + f"error: {got.first_error}"
    if got.wrong_replies:
        res.note = (res.note + "; " if res.note else "") + (
            f"{got.wrong_replies} replies differ from the simulator's expected text"
        )


class Cluster:
    """A running `llm-pool up`; every control action goes through the admin gRPC API."""

    def __init__(
        self, proc: Proc, gateway_port: int, controller: str, shape: SimShape, tls: TlsFiles
    ) -> None:
        self.proc = proc
        self.gateway_port = gateway_port
        self.controller = controller
        self.shape = shape
        self._channel = grpc.aio.secure_channel(controller, tls.channel_credentials())
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self.http = httpx.AsyncClient(timeout=10.0)
        self.engine_urls: list[str] = []

    @classmethod
    async def start(cls, workdir: Path, shape: SimShape) -> Cluster:
        cfg = workdir / "routing.yaml"
        cfg.write_text(config_yaml(shape))
        gport, cport = free_port(), free_port()
        controller = f"{HOST}:{cport}"
        argv = up_argv(cfg, workdir / "data", gport, controller)
        # `llm-pool up` passes its environment on to its children: the gateway loads the oracle
        # plugin and the controller accepts pools that name it. Agents report (and scrape the
        # engines) once a second of simulated time, as a deployment would in real time;
        # at the default 1 s of wall time, load figures would be `speedup` times staler.
        env = {
            "LLMPOOL_GATEWAY_POLICY_PLUGINS": ORACLE_PLUGIN,
            "LLMPOOL_CONTROLLER_EXTRA_POLICIES": ORACLE_POLICY,
            "LLMPOOL_REPORT_INTERVAL_S": f"{shape.report_interval_s:g}",
        }
        # The certificates `up` would make on its first start, made first so that the admin
        # client has its own (mutual TLS, as for any user).
        tls_dir = workdir / "data" / "tls"
        ensure_local_pki(tls_dir, UP_ROLES)
        proc = await spawn("llm-pool-up", argv, workdir, env)
        cluster = cls(proc, gport, controller, shape, TlsFiles.in_dir(tls_dir, "admin"))
        try:
            await cluster.wait_ready(90.0)
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    async def stop(self) -> None:
        await self.http.aclose()
        await self._channel.close(None)
        await self.proc.stop(timeout_s=40.0)

    async def wait_ready(self, within_s: float) -> None:
        """Until every engine is healthy and the gateway routes to all of them."""
        deadline = time.monotonic() + within_s
        last = ""
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise StartError(f"llm-pool up exited: {self.proc.tail(800)}")
            try:
                status = await self.admin.GetPoolStatus(
                    admin_pb2.GetPoolStatusRequest(name=POOL), timeout=2.0
                )
                urls = sorted(
                    r.status.url for r in status.replicas if r.status.healthy and r.status.url
                )
                ready = await self._get_ok(f"http://{HOST}:{self.gateway_port}/readyz")
                if (
                    ready
                    and len(urls) == self.shape.engines
                    and status.healthy_members == self.shape.engines
                ):
                    self.engine_urls = urls
                    return
                last = f"{len(urls)} healthy engines, gateway ready: {ready}, {status.message}"
            except grpc.aio.AioRpcError as exc:
                last = f"controller: {exc.code().name}"
            await asyncio.sleep(0.2)
        raise StartError(f"cluster not ready after {within_s:.0f}s ({last})")

    async def _get_ok(self, url: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return (await self.http.get(url)).status_code == 200
        return False

    async def _gateway_version(self) -> int:
        text = (await self.http.get(f"http://{HOST}:{self.gateway_port}/metrics")).text
        for line in text.splitlines():
            if line.startswith("llmpool_gateway_snapshot_version"):
                return int(float(line.split()[-1]))
        return 0

    async def _controller_version(self) -> int:
        status = await self.admin.GetPoolStatus(admin_pb2.GetPoolStatusRequest(name=POOL))
        return int(status.snapshot_version)

    async def set_policy(self, policy: str, params: dict[str, str] | None = None) -> None:
        """Switches the pool's policy at run time (UpdatePool) and waits until the gateway
        holds a snapshot built after the change. Raises grpc errors (e.g. INVALID_ARGUMENT
        for a policy the controller does not know)."""
        pool = types_pb2.Pool(name=POOL, policy=policy, policy_params=params or {})
        mask = field_mask_pb2.FieldMask(paths=["policy", "policy_params"])
        await self.admin.UpdatePool(admin_pb2.UpdatePoolRequest(pool=pool, update_mask=mask))
        # The controller publishes a change within its coalescing window; any version it
        # publishes after the update returned carries the new policy, and if none comes within
        # its 1 s refresh the change went out in the version it reports now.
        target = await self._controller_version()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            now = await self._controller_version()
            if now > target:
                target = now
                break
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 10.0
        while await self._gateway_version() < target:
            if time.monotonic() > deadline:
                raise StartError(f"gateway did not receive snapshot {target} within 10 s")
            await asyncio.sleep(0.05)

    async def scrape(self) -> dict[str, EngineCounters]:
        """Every engine's counters now, by URL."""
        texts = await asyncio.gather(*(self.http.get(u + "/metrics") for u in self.engine_urls))
        return {url: parse_counters(r.text) for url, r in zip(self.engine_urls, texts, strict=True)}

    async def quiesce_and_reset(self, within_s: float = 60.0) -> None:
        """Waits until no engine runs or queues anything, then empties every prefix cache, so
        each run starts cold (POST /reset_prefix_cache, as vLLM names it)."""
        deadline = time.monotonic() + within_s
        while not all(c.idle for c in (await self.scrape()).values()):
            if time.monotonic() > deadline:
                raise StartError(f"engines still busy {within_s:.0f}s after the run")
            await asyncio.sleep(0.1)
        for url in self.engine_urls:
            reply = await self.http.post(url + "/reset_prefix_cache")
            if reply.status_code != 200:
                raise StartError(f"{url}/reset_prefix_cache answered {reply.status_code}")

    def gateway_log_mentions_unknown(self, policy: str = ORACLE_POLICY) -> bool:
        """True when the gateway logged that it does not know the policy (so it fell back)."""
        tail = self.proc.tail(200_000)
        return "unknown routing policy" in tail and policy in tail
