"""GatewayService servicer: routing snapshots out (WatchRouting), usage in (ReportUsage)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmpool.protoconv import from_proto, to_proto
from llmpool.v1 import gateway_pb2, gateway_pb2_grpc

from .publisher import SnapshotPublisher
from .usage import UsageAggregator, UsageReport

Ctx = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, publisher: SnapshotPublisher, usage: UsageAggregator) -> None:
        self._publisher = publisher
        self._usage = usage

    async def WatchRouting(  # type: ignore[override]
        self, request: gateway_pb2.WatchRoutingRequest, context: Ctx
    ) -> AsyncIterator[gateway_pb2.RoutingSnapshot]:
        sub = self._publisher.subscribe(request.gateway_id or context.peer())
        try:
            while (batch := await sub.next_batch()) is not None:
                for update in batch:
                    yield to_proto(update, gateway_pb2.RoutingSnapshot)
        finally:
            self._publisher.unsubscribe(sub)

    async def ReportUsage(  # type: ignore[override]
        self, request_iterator: AsyncIterator[gateway_pb2.UsageReport], context: Ctx
    ) -> gateway_pb2.UsageAck:
        async for report in request_iterator:
            self._usage.record(from_proto(UsageReport, report, zeros=True))
        return gateway_pb2.UsageAck()
