"""GatewayService servicer: routing snapshots out (WatchRouting), usage in (ReportUsage), prompt
prefixes' homes on asking (AskHome), gateways' sends passed on to the others (ShareSends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmpool.errors import NotFoundError
from llmpool.protoconv import from_proto, to_proto
from llmpool.v1 import gateway_pb2, gateway_pb2_grpc

from .prefix_homes import PrefixHomes
from .publisher import SnapshotPublisher
from .quotas import Quotas
from .send_relay import Listener, SendRelay, invalid
from .usage import UsageAggregator, UsageReport

Ctx = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        publisher: SnapshotPublisher,
        usage: UsageAggregator,
        quotas: Quotas | None = None,
        homes: PrefixHomes | None = None,
        relay: SendRelay | None = None,
    ) -> None:
        self._relay = relay if relay is not None else SendRelay()
        self._homes = homes
        self._quotas = quotas
        self._publisher = publisher
        self._usage = usage

    async def WatchRouting(  # type: ignore[override]
        self, request: gateway_pb2.WatchRoutingRequest, context: Ctx
    ) -> AsyncIterator[gateway_pb2.RoutingSnapshot]:
        sub = self._publisher.subscribe(request.gateway_id or context.peer())
        try:
            while (batch := await sub.next_batch()) is not None:
                messages = [to_proto(u, gateway_pb2.RoutingSnapshot) for u in batch]
                keys, quotas = sub.take_extras()
                if keys is not None or quotas is not None:
                    if not messages:
                        # Keys or quotas alone: no routes, the version the gateway holds.
                        messages.append(
                            gateway_pb2.RoutingSnapshot(version=self._publisher.version)
                        )
                    if keys is not None:
                        messages[0].keys.CopyFrom(keys)
                    if quotas is not None:
                        messages[0].quotas.CopyFrom(quotas)
                for message in messages:
                    yield message
        finally:
            self._publisher.unsubscribe(sub)

    async def ReportUsage(  # type: ignore[override]
        self, request_iterator: AsyncIterator[gateway_pb2.UsageReport], context: Ctx
    ) -> gateway_pb2.UsageAck:
        async for report in request_iterator:
            self._usage.record(from_proto(UsageReport, report, zeros=True))
            # Every gateway hears of it now: with no agent reporting (static backends) the
            # next rebuild would otherwise wait for the refresh, a second.
            self._publisher.nudge()
            if report.subjects and self._quotas is not None:
                self._quotas.record(report.gateway_id, report.subjects, report.sequence)
        return gateway_pb2.UsageAck()

    async def AskHome(  # type: ignore[override]
        self, request: gateway_pb2.AskHomeRequest, context: Ctx
    ) -> gateway_pb2.AskHomeResponse:
        # Routes as last published: the pool's homes exist only where they were built.
        if request.model not in self._publisher.routes:
            raise NotFoundError(f"no pool routes model {request.model[:128]!r}")
        if self._homes is None:
            return gateway_pb2.AskHomeResponse()
        # Other gateways hear of the home at the next rebuild (or ask, and get the same one).
        member = self._homes.ask(request.model, request.prefix, request.tokens)
        return gateway_pb2.AskHomeResponse(member_id=member)

    async def ShareSends(  # type: ignore[override]
        self, request_iterator: AsyncIterator[gateway_pb2.SendBatch], context: Ctx
    ) -> AsyncIterator[gateway_pb2.SendBatch]:
        metadata = dict(context.invocation_metadata() or ())
        name = str(metadata.get("llmpool-gateway-id", "")) or context.peer()
        listener = self._relay.join(name)
        error: list[str] = []
        reader = asyncio.create_task(self._read_sends(request_iterator, listener, error))
        try:
            while (batch := await listener.next()) is not None:
                yield batch
            if error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error[0])
            if listener.overflowed:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "fell behind the other gateways' sends"
                )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._relay.leave(listener)

    async def _read_sends(
        self,
        request_iterator: AsyncIterator[gateway_pb2.SendBatch],
        listener: Listener,
        error: list[str],
    ) -> None:
        """Passes the gateway's batches on until its side ends or one is invalid; then ends
        its stream (a None for ShareSends)."""
        try:
            async for batch in request_iterator:
                why = invalid(batch)
                if why:
                    error.append(why)
                    break
                self._relay.pass_on(listener, batch)
        finally:
            listener.put(None)
