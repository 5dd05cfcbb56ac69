"""The untuned benchmark's system under test: sim engines of different cache sizes, started here,
served by `llm-pool up` as static backends (whose engines say their cache on /metrics, or say
nothing of it) or as replicas its agent watches, behind 1 or more gateways that share the
load."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from bench.routing.cluster import ORACLE_PLUGIN, POOL, Cluster, SimShape, up_argv
from bench.routing.oracle import ORACLE_POLICY
from bench.systems import HOST, Proc, StartError, free_port, spawn
from llmpool.certs import ensure_local_pki
from llmpool.tls import TlsFiles
from llmpool.up import UP_ROLES
from llmpool.v1 import admin_pb2

STATIC = "static"
# Static backends whose engines say nothing of their cache (--cache-info false): the gateways
# learn each from its answers.
SILENT = "silent"
AGENT = "agent"
DEPLOYMENTS = (STATIC, SILENT, AGENT)


@dataclass(frozen=True)
class FleetShape:
    """Engines (one per KV cache size, in blocks), how they are served, and by how many
    gateways."""

    kv_blocks: tuple[int, ...] = (512, 1024, 2048, 4096)
    block_size: int = 16
    speedup: float = 4.0
    max_num_seqs: int = 64
    deployment: str = STATIC
    gateways: int = 1

    def sim_shape(self) -> SimShape:
        """What the shared Runner reads: engine count and speed (the caches differ)."""
        return SimShape(
            engines=len(self.kv_blocks),
            speedup=self.speedup,
            kv_blocks=self.kv_blocks[0],
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
        )

    def engine_argv(self, port: int, kv_blocks: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llmpool.cli",
            "sim-engine",
            "--host",
            HOST,
            "--port",
            str(port),
            "--model",
            POOL,
            "--speedup",
            f"{self.speedup:g}",
            "--kv-blocks",
            str(kv_blocks),
            "--block-size",
            str(self.block_size),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--log-level",
            "warning",
            "--cache-info",
            "false" if self.deployment == SILENT else "true",
        ]


def fleet_config(shape: FleetShape, urls: list[str]) -> str:
    """One pool: the engines as static backends, or no replicas (the agent attaches them)."""
    pool: dict[str, object] = {
        "name": POOL,
        "policy": "round_robin",
        "description": "make bench-routing --untuned: engines with different KV caches",
    }
    if shape.deployment in (STATIC, SILENT):
        pool["backends"] = [{"id": f"engine-{i}", "url": u} for i, u in enumerate(urls)]
    else:
        pool["replicas"] = 0
    return yaml.safe_dump({"pools": [pool]}, sort_keys=False)


def attach_value(urls: list[str]) -> str:
    """LLMPOOL_AGENT_ATTACH for the agent of `up`: every engine, as the simulator it is."""
    return ";".join(
        f"pool={POOL},url={u},engine=sim,model={POOL},id=engine-{i}" for i, u in enumerate(urls)
    )


class Fleet(Cluster):
    """A running fleet; set_policy waits until every gateway holds the new snapshot."""

    def __init__(
        self,
        proc: Proc,
        gateway_ports: list[int],
        controller: str,
        fleet: FleetShape,
        tls: TlsFiles,
        engines: list[Proc],
        extra: list[Proc],
        urls: list[str],
    ) -> None:
        super().__init__(proc, gateway_ports[0], controller, fleet.sim_shape(), tls)
        self.gateway_ports = gateway_ports
        self.fleet = fleet
        self.engines = engines
        self.extra = extra
        self.engine_urls = urls
        # Engine URL -> its KV cache in blocks (for the oracle's weights).
        self.kv_blocks = dict(zip(urls, fleet.kv_blocks, strict=True))

    @classmethod
    async def start_fleet(cls, workdir: Path, fleet: FleetShape) -> Fleet:
        engines: list[Proc] = []
        urls: list[str] = []
        for i, blocks in enumerate(fleet.kv_blocks):
            port = free_port()
            engines.append(await spawn(f"engine-{i}", fleet.engine_argv(port, blocks), workdir))
            urls.append(f"http://{HOST}:{port}")
        cfg = workdir / "fleet.yaml"
        cfg.write_text(fleet_config(fleet, urls))
        gport, cport = free_port(), free_port()
        controller = f"{HOST}:{cport}"
        data = workdir / "data"
        argv = up_argv(cfg, data, gport, controller)
        env = {
            "LLMPOOL_GATEWAY_POLICY_PLUGINS": ORACLE_PLUGIN,
            "LLMPOOL_CONTROLLER_EXTRA_POLICIES": ORACLE_POLICY,
            "LLMPOOL_REPORT_INTERVAL_S": f"{1.0 / fleet.speedup:g}",
            "LLMPOOL_GATEWAY_USAGE_INTERVAL_S": f"{1.0 / fleet.speedup:g}",
        }
        if fleet.deployment == AGENT:
            env["LLMPOOL_AGENT_ATTACH"] = attach_value(urls)
        tls_dir = data / "tls"
        ensure_local_pki(tls_dir, UP_ROLES)
        proc = await spawn("llm-pool-up", argv, workdir, env)
        ports = [gport]
        extra: list[Proc] = []
        gw = TlsFiles.in_dir(tls_dir, "gateway")
        for n in range(1, fleet.gateways):
            port = free_port()
            ports.append(port)
            gw_argv = [
                sys.executable,
                "-m",
                "llmpool.cli",
                "gateway",
                "--listen",
                f"{HOST}:{port}",
                "--controller",
                controller,
                "--tls-ca",
                str(gw.ca),
                "--tls-cert",
                str(gw.cert),
                "--tls-key",
                str(gw.key),
                "--log-level",
                "warning",
            ]
            extra.append(await spawn(f"gateway-{n}", gw_argv, workdir, env))
        fleet_obj = cls(
            proc, ports, controller, fleet, TlsFiles.in_dir(tls_dir, "admin"), engines, extra, urls
        )
        try:
            await fleet_obj.wait_fleet(90.0)
        except BaseException:
            await fleet_obj.stop()
            raise
        return fleet_obj

    async def stop(self) -> None:
        for proc in self.extra:
            await proc.stop()
        await super().stop()
        for proc in self.engines:
            await proc.stop()

    async def wait_fleet(self, within_s: float) -> None:
        """Until the pool has every engine healthy and every gateway is ready."""
        deadline = time.monotonic() + within_s
        last = ""
        want = len(self.engine_urls)
        while time.monotonic() < deadline:
            for proc in [self.proc, *self.extra, *self.engines]:
                if not proc.alive():
                    raise StartError(f"{proc.name} exited: {proc.tail(800)}")
            try:
                status = await self.admin.GetPoolStatus(
                    admin_pb2.GetPoolStatusRequest(name=POOL), timeout=2.0
                )
                ready = [
                    await self._get_ok(f"http://{HOST}:{p}/readyz") for p in self.gateway_ports
                ]
                if all(ready) and status.healthy_members == want:
                    return
                last = f"{status.healthy_members}/{want} healthy, gateways ready: {ready}"
            except grpc.aio.AioRpcError as exc:
                last = f"controller: {exc.code().name}"
            await asyncio.sleep(0.2)
        raise StartError(f"fleet not ready after {within_s:.0f}s ({last})")

    async def _gateway_version(self) -> int:
        """The oldest snapshot any gateway holds."""
        versions = []
        for port in self.gateway_ports:
            text = (await self.http.get(f"http://{HOST}:{port}/metrics")).text
            version = 0
            for line in text.splitlines():
                if line.startswith("llmpool_gateway_snapshot_version"):
                    version = int(float(line.split()[-1]))
            versions.append(version)
        return min(versions)

    async def gateway_metrics(self) -> list[str]:
        return [
            (await self.http.get(f"http://{HOST}:{port}/metrics")).text
            for port in self.gateway_ports
        ]
