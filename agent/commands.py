"""Executes the controller's commands (start, stop, tail logs) against the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from agent.convert import log_chunk_message, result_message, spec_from_proto
from agent.supervisor import Supervisor
from llmpool.errors import LLMPoolError
from llmpool.v1 import agent_pb2

log = logging.getLogger(__name__)

Send = Callable[[agent_pb2.AgentMessage], None]

DEFAULT_TAIL_LINES = 100
# Well under gRPC's default 4 MiB message limit.
MAX_CHUNK_BYTES = 1 << 20


def split_chunks(lines: list[str], max_bytes: int = MAX_CHUNK_BYTES) -> list[list[str]]:
    """Lines grouped so that no group exceeds max_bytes (a single longer line stays alone)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode()) + 4
        if current and size + length > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(line)
        size += length
    if current or not chunks:
        chunks.append(current)
    return chunks


class CommandHandler:
    """One per open stream: start and stop run as tasks (they may take drain_s), tails until
    cancelled. `send` enqueues on the stream; `report_now` enqueues a Report ahead of a result
    so the controller sees the new state no later than the command's answer. `gpu_devices`
    are the GPU numbers this agent offers (a placement naming others is logged)."""

    def __init__(
        self,
        supervisor: Supervisor,
        send: Send,
        report_now: Callable[[], None],
        gpu_devices: tuple[int, ...] = (),
    ) -> None:
        self._supervisor = supervisor
        self._gpu_devices = gpu_devices
        self._send = send
        self._report_now = report_now
        self._tasks: set[asyncio.Task[None]] = set()
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._tail_replicas: dict[str, str] = {}

    def handle(self, msg: agent_pb2.ControllerMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "start":
            self._spawn(self._start(msg.start))
        elif kind == "stop":
            self._spawn(self._stop(msg.stop))
        elif kind == "tail_logs":
            self._tail(msg.tail_logs)
        elif kind == "cancel_tail":
            self._cancel_tail(msg.cancel_tail.request_id)
        else:
            log.warning("unexpected controller message", extra={"kind": kind})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _start(self, cmd: agent_pb2.StartReplica) -> None:
        error = ""
        try:
            created = await self._supervisor.start(spec_from_proto(cmd, self._gpu_devices))
            log.info(
                "start replica",
                extra={
                    "replica_id": cmd.replica_id,
                    "pool": cmd.pool,
                    "already_running": not created,
                },
            )
        except LLMPoolError as exc:
            error = str(exc)
            log.warning(
                "start replica failed", extra={"replica_id": cmd.replica_id, "error": error}
            )
        self._report_now()
        self._send(result_message(cmd.command_id, error, cmd.replica_id, cmd.pool))

    async def _stop(self, cmd: agent_pb2.StopReplica) -> None:
        error = ""
        try:
            await self._supervisor.stop(cmd.replica_id, max(cmd.drain_s, 0.0))
        except LLMPoolError as exc:
            error = str(exc)
        self._report_now()
        self._send(result_message(cmd.command_id, error))

    def _tail(self, cmd: agent_pb2.TailLogs) -> None:
        previous = self._tails.pop(cmd.request_id, None)
        if previous is not None:
            previous.cancel()
        task = self._spawn(self._run_tail(cmd))
        self._tails[cmd.request_id] = task
        self._tail_replicas[cmd.request_id] = cmd.replica_id
        task.add_done_callback(lambda t: self._forget_tail(cmd.request_id, t))

    def _forget_tail(self, request_id: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(request_id) is task:
            del self._tails[request_id]
            self._tail_replicas.pop(request_id, None)

    def _cancel_tail(self, request_id: str) -> None:
        task = self._tails.pop(request_id, None)
        if task is None:
            return
        task.cancel()
        replica_id = self._tail_replicas.pop(request_id, "")
        self._send(log_chunk_message(request_id, replica_id, [], done=True))

    async def _run_tail(self, cmd: agent_pb2.TailLogs) -> None:
        rid, replica_id = cmd.request_id, cmd.replica_id
        try:
            ring = self._supervisor.logs(replica_id)
        except LLMPoolError as exc:
            self._send(log_chunk_message(rid, replica_id, [], done=True, error=str(exc)))
            return
        count = cmd.lines or DEFAULT_TAIL_LINES
        if not cmd.follow:
            chunks = split_chunks(ring.tail(count))
            for i, chunk in enumerate(chunks):
                self._send(log_chunk_message(rid, replica_id, chunk, done=i == len(chunks) - 1))
            return
        # Follow first, then take the tail in the same step: no line falls in between.
        follower = ring.follow()
        try:
            for chunk in split_chunks(ring.tail(count)):
                self._send(log_chunk_message(rid, replica_id, chunk))
            while True:
                batch = await follower.next_batch()
                if not batch:
                    self._send(log_chunk_message(rid, replica_id, [], done=True))
                    return
                for chunk in split_chunks(batch):
                    self._send(log_chunk_message(rid, replica_id, chunk))
        finally:
            follower.close()

    async def close(self) -> None:
        """The stream is gone: tails end; start and stop run on to completion (their answers
        are dropped, the next Register carries the outcome)."""
        tails = list(self._tails.values())
        self._tails.clear()
        for task in tails:
            task.cancel()
        for task in tails:
            with contextlib.suppress(asyncio.CancelledError):
                await task
