"""A fake agent: a real AgentService client that registers, reports and records commands."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from llmpool.v1 import agent_pb2, agent_pb2_grpc, types_pb2


class FakeAgent:
    def __init__(
        self, target: str, agent_id: str = "agent-1", cpu_slots: int = 4, gpus: int = 0
    ) -> None:
        self.target = target
        self.agent_id = agent_id
        self.cpu_slots = cpu_slots
        self.gpus = gpus
        self.received: list[agent_pb2.ControllerMessage] = []
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, replicas: list[types_pb2.ReplicaStatus] | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(self.target)
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self.send(
            agent_pb2.AgentMessage(
                register=agent_pb2.Register(
                    agent_id=self.agent_id,
                    hostname="test-host",
                    capacity=types_pb2.Capacity(cpu_slots=self.cpu_slots, gpus=self.gpus),
                    engines=["sim"],
                    replicas=replicas or [],
                )
            )
        )
        call = stub.Connect(self._requests())
        self._task = asyncio.create_task(self._read(call))

    async def _requests(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        while (msg := await self._outbox.get()) is not None:
            yield msg

    async def _read(self, call: AsyncIterator[agent_pb2.ControllerMessage]) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for msg in call:
                self.received.append(msg)

    def send(self, msg: agent_pb2.AgentMessage) -> None:
        self._outbox.put_nowait(msg)

    def report(self, replicas: list[types_pb2.ReplicaStatus]) -> None:
        self.send(agent_pb2.AgentMessage(report=agent_pb2.Report(replicas=replicas)))

    def of(self, kind: str) -> list[agent_pb2.ControllerMessage]:
        return [m for m in self.received if m.WhichOneof("msg") == kind]

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()
