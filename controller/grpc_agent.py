"""AgentService servicer: one stream per agent; reports and log chunks in, commands out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmpool.errors import InvalidArgumentError
from llmpool.protoconv import from_proto
from llmpool.v1 import agent_pb2, agent_pb2_grpc

from .agents import AgentConnection, AgentRegistry
from .tails import LogChunk, LogTails
from .validation import check_name

log = logging.getLogger(__name__)
Ctx = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        registry: AgentRegistry,
        tails: LogTails,
        controller_id: str,
        report_interval_s: float,
    ) -> None:
        self._registry = registry
        self._tails = tails
        self._controller_id = controller_id
        self._report_interval_s = report_interval_s

    async def Connect(  # type: ignore[override]
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Ctx
    ) -> AsyncIterator[agent_pb2.ControllerMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("register"):
            raise InvalidArgumentError("the first message on AgentService.Connect must be register")
        register = first.register
        check_name("agent_id", register.agent_id)
        agent_id = register.agent_id
        conn = AgentConnection(agent_id)
        self._registry.register(register, conn)
        log.info(
            "agent connected",
            extra={
                "agent_id": agent_id,
                "hostname": register.hostname,
                "replicas": len(register.replicas),
            },
        )
        reader = asyncio.create_task(self._read(agent_id, request_iterator, conn))
        try:
            yield agent_pb2.ControllerMessage(
                welcome=agent_pb2.Welcome(
                    controller_id=self._controller_id,
                    report_interval_s=self._report_interval_s,
                    lease_s=self._registry.lease_s,
                )
            )
            while (msg := await conn.outbox.get()) is not None:
                yield msg
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._registry.disconnect(agent_id, conn)
            self._tails.agent_gone(agent_id)
            log.info("agent disconnected", extra={"agent_id": agent_id})

    async def _read(
        self,
        agent_id: str,
        messages: AsyncIterator[agent_pb2.AgentMessage],
        conn: AgentConnection,
    ) -> None:
        try:
            async for msg in messages:
                kind = msg.WhichOneof("msg")
                if kind == "report":
                    self._registry.report(
                        agent_id,
                        list(msg.report.replicas),
                        msg.report.capacity if msg.report.HasField("capacity") else None,
                    )
                    continue
                self._registry.touch(agent_id)
                if kind == "log_chunk":
                    self._tails.deliver(agent_id, from_proto(LogChunk, msg.log_chunk, zeros=True))
                elif kind == "result" and not msg.result.ok:
                    if msg.result.replica_id and msg.result.pool:
                        self._registry.start_failed(
                            agent_id, msg.result.replica_id, msg.result.pool, msg.result.error
                        )
                    log.warning(
                        "agent command failed",
                        extra={
                            "agent_id": agent_id,
                            "command_id": msg.result.command_id,
                            "error": msg.result.error,
                        },
                    )
                elif kind == "register":
                    log.warning("agent sent register twice; ignored", extra={"agent_id": agent_id})
        except grpc.aio.AioRpcError:
            pass
        except Exception:
            log.exception("agent stream failed", extra={"agent_id": agent_id})
        finally:
            # The agent stopped sending: end our half too so the stream closes.
            conn.close()
