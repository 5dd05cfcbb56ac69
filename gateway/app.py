"""The gateway's app: create_app builds every object once and wires routes to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.accounting import Accounting
from gateway.admission import Admitter, not_found
from gateway.asgi import GatewayASGI
from gateway.cache_metrics import (
    CacheEstimates,
    learned_caches,
    missed_prefixes,
    sent_prefixes,
    urgent,
    verdicts,
)
from gateway.controller_link import ControllerLink
from gateway.cooldowns import Cooldowns
from gateway.credentials import Credentials
from gateway.errors import GatewayError, NotReadyError, error_response, handle_exception
from gateway.holds import Holds
from gateway.home_asks import HomeAsks
from gateway.keys import Keyring
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.outliers import Outliers
from gateway.policies import PolicyRegistry
from gateway.pool_sends import PoolSends
from gateway.providers import build_providers
from gateway.relay import Relay
from gateway.routing import RoutingTable
from gateway.settings import GatewaySettings
from gateway.signing import SignatureChecker
from gateway.upstream import UpstreamClient, build_upstream
from gateway.usage import UsageTracker
from llmpool.backoff import Backoff, reconnect_backoff
from llmpool.clock import Clock, SystemClock
from llmpool.v1 import types_pb2

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServingState:
    """draining: SIGTERM arrived; /readyz says not ready while the gateway still serves, so
    load balancers move away before it stops accepting (gateway/server.py)."""

    draining: bool = False


@dataclass(frozen=True, slots=True)
class GatewayParts:
    """The objects behind one app, kept on app.state.parts for tests and the server."""

    settings: GatewaySettings
    table: RoutingTable
    usage: UsageTracker
    metrics: GatewayMetrics
    upstream: UpstreamClient
    accounting: Accounting
    relay: Relay
    link: ControllerLink | None
    serving: ServingState


def member_conditions(outliers: Outliers, cooldowns: Cooldowns) -> list[types_pb2.MemberCondition]:
    """What this gateway tells the controller about members it keeps out (GetPoolStatus)."""
    found = [
        types_pb2.MemberCondition(
            member_id=e.member_id,
            condition="ejected",
            seconds_left=e.seconds_left,
            ejections=e.ejections,
        )
        for e in outliers.ejected()
    ]
    found.extend(
        types_pb2.MemberCondition(member_id=member_id, condition="cooling", seconds_left=left)
        for member_id, left in cooldowns.cooling_members()
    )
    return found


def create_app(
    settings: GatewaySettings,
    *,
    clock: Clock | None = None,
    upstream: UpstreamClient | None = None,
    metrics: GatewayMetrics | None = None,
    connect_controller: bool = True,
    backoff_factory: Callable[[], Backoff] = reconnect_backoff,
    environ: Mapping[str, str] | None = None,
) -> GatewayASGI:
    """Builds the gateway. connect_controller=False leaves the table to the caller (tests).

    The result is an ASGI app that serves the /v1 POST routes itself (gateway/asgi.py) and
    hands the rest to a FastAPI app (its .app), which owns the lifespan and the OpenAPI docs."""
    clock = clock or SystemClock()
    metrics = metrics or GatewayMetrics()
    credentials = Credentials(
        os.environ if environ is None else environ,
        Path(settings.secrets_dir) if settings.secrets_dir else None,
        on_change=lambda: table.recheck(),
    )
    table = RoutingTable(
        registry=PolicyRegistry.load(settings.policy_plugins, clock=clock),
        usable=lambda m: credentials.has(m.credential),
        zone=settings.zone,
        queue_per_member=settings.queue_per_member,
    )
    keys = Keyring(settings.auth, clock, metrics)
    limiter = Limiter(clock, keys, metrics)
    admitter = Admitter(limiter, metrics)
    metrics.waiting.set_function(admitter.waiting)
    metrics.missing_credentials.set_function(credentials.missing)
    usage = UsageTracker()
    upstream = upstream or build_upstream(
        settings.upstream_client,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        timeout_s=settings.upstream_timeout_s,
        max_connections=settings.upstream_max_connections,
    )
    sends = PoolSends(table, usage, clock, metrics) if connect_controller else None
    accounting = Accounting(usage=usage, metrics=metrics, clock=clock, table=table, sends=sends)
    cooldowns = Cooldowns(clock)
    outliers = Outliers(clock)
    metrics.cooling.set_function(cooldowns.cooling)
    metrics.ejected.set_function(lambda: sum(1 for _ in outliers.ejected()))
    holds = Holds(table, metrics, settings.max_held_requests)
    metrics.held.set_function(holds.total)
    metrics.registry.register(CacheEstimates(table))
    link = (
        ControllerLink(
            target=settings.controller,
            credentials=(
                settings.controller_tls.channel_credentials()
                if settings.controller_tls is not None
                else None
            ),
            gateway_id=settings.gateway_id,
            table=table,
            usage=usage,
            metrics=metrics,
            usage_interval_s=settings.usage_interval_s,
            backoff_factory=backoff_factory,
            conditions=lambda: member_conditions(outliers, cooldowns),
            held=holds.counts,
            learned=lambda: learned_caches(table),
            missed=lambda: missed_prefixes(table),
            sent=lambda: sent_prefixes(table),
            verdicts=lambda: verdicts(table),
            urgent=lambda: urgent(table),
            keys=keys,
            limiter=limiter,
            sends=sends,
        )
        if connect_controller
        else None
    )
    relay = Relay(
        table=table,
        upstream=upstream,
        metrics=metrics,
        usage=usage,
        clock=clock,
        max_body_bytes=settings.max_upstream_body_bytes,
        cooldowns=cooldowns,
        outliers=outliers,
        holds=holds,
        providers=build_providers(),
        credentials=credentials,
        admitter=admitter,
        asks=(HomeAsks(link.ask_home, link.ready, clock, metrics) if link is not None else None),
    )
    serving = ServingState()
    parts = GatewayParts(
        settings, table, usage, metrics, upstream, accounting, relay, link, serving
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if link is not None:
            await link.start()
        watcher = asyncio.create_task(credentials.watch(), name="gateway-credentials")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if link is not None:
                await link.close()
            await upstream.aclose()
            log.info("gateway stopped", extra={"gateway_id": settings.gateway_id})

    app = FastAPI(
        title="llm-pool gateway",
        description="OpenAI-compatible API in front of llm-pool's model pools.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.parts = parts
    app.add_exception_handler(GatewayError, handle_exception)
    app.add_exception_handler(StarletteHTTPException, handle_exception)
    app.add_exception_handler(Exception, handle_exception)

    def visible(request: Request) -> list[str]:
        """The models the request's key may use (every one when keys are off)."""
        if not table.received:
            # An empty list would tell clients that nothing is served here, which is not known.
            raise NotReadyError(
                "This gateway has no routing from the controller yet; retry shortly.",
                headers={"Retry-After": "1"},
            )
        principal = None
        if keys.required:
            client = request.client
            principal = keys.authenticate(request.headers, client.host if client else "")
        names = table.models()
        if principal is None:
            return names
        return [n for n in names if (r := table.get(n)) and principal.may_use(n, r.tenant)]

    def model_entry(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": table.created_s, "owned_by": "llm-pool"}

    @app.get("/v1/models", summary="Models this gateway routes that the key may use")
    async def list_models(request: Request) -> Response:
        data = [model_entry(name) for name in visible(request)]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/models/{model:path}", summary="One model, if the key may use it")
    async def get_model(model: str, request: Request) -> Response:
        if model not in visible(request):
            raise not_found(model)
        return JSONResponse(model_entry(model))

    @app.get("/healthz", summary="Liveness: 200 while the process runs")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once a routing snapshot has been received")
    async def readyz() -> Response:
        if serving.draining:
            return error_response(
                NotReadyError("Draining: the gateway is shutting down; send requests elsewhere.")
            )
        if not table.received or (keys.mode == "keys" and not keys.received):
            return error_response(
                NotReadyError("No routing snapshot from the controller yet; check --controller.")
            )
        return JSONResponse(
            {
                "status": "ready",
                "version": table.version,
                "models": len(table),
                "controller_connected": bool(link and link.connected),
            }
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return GatewayASGI(
        app,
        relay,
        accounting,
        settings.max_body_bytes,
        keys=keys,
        signatures=SignatureChecker(clock),
    )


def parts_of(app: Any) -> GatewayParts:
    parts: GatewayParts = app.state.parts
    return parts
