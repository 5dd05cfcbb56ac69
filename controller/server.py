"""Builds the controller at start-up (store, loops, gRPC server, metrics) and runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmpool.addr import split_host_port
from llmpool.clock import Clock, SystemClock
from llmpool.config import Config, load_config
from llmpool.metrics_http import serve_metrics
from llmpool.tls import TlsFiles
from llmpool.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

from .auth import Authenticator
from .backend_capacity import HttpFetch
from .backend_urls import AllowEntry, BackendUrlPolicy
from .grpc_admin import AdminServicer
from .grpc_agent import AgentServicer
from .grpc_auth import AuthInterceptor
from .grpc_errors import ErrorInterceptor
from .grpc_gateway import GatewayServicer
from .metrics import ControllerMetrics
from .parts import ControllerParts, build_parts
from .store import Store

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
)


# Bounds on what one peer can make the controller hold: a message's size (a pool spec with its
# rules is kilobytes), concurrent streams per connection, and connections kept alive when idle.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
GRPC_SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_concurrent_streams", 100),
    ("grpc.max_connection_idle_ms", 10 * 60 * 1000),
    ("grpc.http2.max_ping_strikes", 2),
)


@dataclass(frozen=True)
class ControllerSettings:
    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("data")
    # Seeds the store on first start only; `config` (already parsed) wins over config_path.
    config_path: Path | None = None
    config: Config | None = None
    metrics_listen: str = "127.0.0.1:9101"
    lease_s: float = 5.0
    report_interval_s: float = 1.0
    # Drain given to replicas stopped by scale-down.
    drain_s: float = 10.0
    # After a restart, how long agents named in the store get to come back before their
    # replicas are replaced (controller/restart_grace.py); None: three leases.
    restart_grace_s: float | None = None
    # Seconds in-flight RPCs get on shutdown.
    grace_s: float = 3.0
    # Routing policy names that only gateways load (--policy-plugin), accepted unchecked.
    extra_policies: tuple[str, ...] = ()
    # Mutual TLS: the controller's certificate and key and the CA that clients' certificates
    # must have. None is plaintext with no authentication, which the CLI allows only with
    # --insecure (and off loopback only with --insecure-allow-remote).
    tls: TlsFiles | None = None
    # Backend URLs the admin API accepts besides public addresses (controller/backend_urls.py).
    backend_allow: tuple[AllowEntry, ...] = ()
    backend_schemes: tuple[str, ...] = ("http", "https")


class ControllerServer:
    """The whole controller: start(), then stop(); port and metrics_port once started."""

    def __init__(self, settings: ControllerSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = ControllerMetrics()
        self.port = 0
        self.metrics_port = 0
        self._parts: ControllerParts | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Asks static backends' engines what cache they have (backend_capacity.py).
        self._http: httpx.AsyncClient | None = None

    @property
    def parts(self) -> ControllerParts:
        if self._parts is None:
            raise RuntimeError("the controller is not started")
        return self._parts

    def _seed(self) -> Config | None:
        if self.settings.config is not None:
            return self.settings.config
        if self.settings.config_path is not None:
            return load_config(self.settings.config_path)
        return None

    async def start(self) -> None:
        s = self.settings
        host, port = split_host_port(s.listen)
        metrics_host, metrics_port = split_host_port(s.metrics_listen)
        seed = self._seed()
        # Read before anything opens: a missing certificate is an error, never plaintext.
        credentials = s.tls.server_credentials() if s.tls is not None else None
        store = await Store.open(s.data_dir)
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        try:
            self._parts = parts = await build_parts(
                store=store,
                seed=seed,
                clock=self.clock,
                metrics=self.metrics,
                lease_s=s.lease_s,
                report_interval_s=s.report_interval_s,
                drain_s=s.drain_s,
                extra_policies=s.extra_policies,
                urls=BackendUrlPolicy(s.backend_allow, s.backend_schemes),
                restart_grace_s=s.restart_grace_s,
                fetch=HttpFetch(self._http),
            )
        except BaseException:
            await store.close()
            await self._http.aclose()
            self._http = None
            raise

        auth = Authenticator(tls=credentials is not None, tokens=parts.tokens)
        # Outermost first: no handler, error mapping included, runs for an unauthorised call.
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(auth, parts.audit, self.metrics), ErrorInterceptor()],
            options=GRPC_SERVER_OPTIONS,
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(parts.admin, auth, parts.keys_admin), server
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(parts.registry, parts.tails, uuid.uuid4().hex[:12], s.report_interval_s),
            server,
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(
                parts.publisher,
                parts.usage,
                parts.quotas.quotas,
                parts.homes,
                parts.send_relay,
            ),
            server,
        )
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self._server = server
        try:
            address = f"{_bracket(host)}:{port}"
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {s.listen}: the address is in use or not local")
        await server.start()
        self._metrics_server = await serve_metrics(
            self.metrics.registry, metrics_host, metrics_port
        )
        self.metrics_port = int(self._metrics_server.sockets[0].getsockname()[1])
        self._tasks = [
            asyncio.create_task(parts.publisher.run(), name="snapshot-publisher"),
            asyncio.create_task(parts.reconciler.run(), name="reconciler"),
            asyncio.create_task(parts.autoscaler.run(), name="autoscaler"),
            asyncio.create_task(parts.ledger.run(), name="ledger"),
            asyncio.create_task(parts.quotas.run(), name="quotas"),
            asyncio.create_task(parts.capacities.run(), name="backend-capacities"),
        ]
        log.info(
            "controller listening",
            extra={
                "listen": f"{host}:{self.port}",
                "metrics": f"{metrics_host}:{self.metrics_port}",
                "data_dir": str(s.data_dir),
                "tls": "mutual" if credentials is not None else "off (--insecure)",
            },
        )

    async def stop(self) -> None:
        """Graceful: gateways' and agents' streams end, in-flight RPCs get grace_s, store closed."""
        parts = self._parts
        if parts is not None:
            parts.publisher.close()
            parts.registry.close_all()
        started = self._server is not None
        if self._server is not None:
            await self._server.stop(self.settings.grace_s)
            self._server = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if parts is not None:
            await parts.store.close()
            self._parts = None
        if started:
            log.info("controller stopped")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(settings: ControllerSettings, stop: asyncio.Event | None = None) -> None:
    """Runs the controller until stop is set (or the task is cancelled), then shuts down cleanly."""
    server = ControllerServer(settings)
    try:
        await server.start()
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()
