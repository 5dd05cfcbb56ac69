"""The agent's stream to the controller: Register, Welcome, reports, commands, and reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.commands import CommandHandler
from agent.convert import capacity_to_proto, report_message, status_to_proto
from agent.gpus import GpuInfo, capacity
from agent.supervisor import Supervisor
from llmpool.backoff import Backoff, reconnect_backoff
from llmpool.engines import ENGINES
from llmpool.tls import aio_channel
from llmpool.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

Outbox = asyncio.Queue[agent_pb2.AgentMessage | None]


class SessionError(Exception):
    """The controller broke the protocol or closed the stream; the session reconnects."""


@dataclass(frozen=True)
class AgentIdentity:
    agent_id: str
    hostname: str
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu_slots: int = 1
    # The GPUs offered for placement, by host number, with their use as last read.
    gpus: tuple[GpuInfo, ...] = ()
    engines: tuple[str, ...] = tuple(ENGINES)


class ControllerSession:
    """Keeps one AgentService.Connect stream open until close(), reconnecting with backoff;
    replicas keep running while the controller is away."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        identity: AgentIdentity,
        supervisor: Supervisor,
        report_interval_s: float = 1.0,
        backoff: Backoff | None = None,
        on_connected: Callable[[bool], None] | None = None,
        welcome_timeout_s: float = 10.0,
        coalesce_s: float = 0.05,
    ) -> None:
        self._target = target
        self._credentials = credentials
        # Replaced by the agent once its GPUs are known, before run().
        self.identity = identity
        self._supervisor = supervisor
        self.report_interval_s = report_interval_s
        self._backoff = backoff or reconnect_backoff()
        self._on_connected = on_connected
        self._welcome_timeout_s = welcome_timeout_s
        self._coalesce_s = coalesce_s
        self._closing = asyncio.Event()
        self.connected = False
        self.controller_id = ""
        # Streams opened so far (tests wait on reconnects with it).
        self.sessions = 0

    async def run(self) -> None:
        """Connects, serves, reconnects; returns after close()."""
        failures = 0
        while not self._closing.is_set():
            error = ""
            try:
                await self._serve_once()
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except (SessionError, TimeoutError) as exc:
                error = str(exc) or "no Welcome in time"
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:
                error = repr(exc)
            finally:
                was_connected = self.connected
                self._set_connected(False)
            if self._closing.is_set():
                return
            failures = 1 if was_connected else failures + 1
            delay = self._backoff.delay()
            # Loud on the first failure of a streak, then quiet: an absent controller
            # must not flood the log with one warning per retry.
            level = logging.WARNING if failures == 1 or failures % 50 == 0 else logging.DEBUG
            log.log(
                level,
                "controller stream down; reconnecting",
                extra={
                    "controller": self._target,
                    "error": error,
                    "attempt": failures,
                    "delay_s": round(delay, 3),
                },
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()

    def close(self) -> None:
        """Asks run() to send a last report, half-close the stream and return."""
        self._closing.set()

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if self._on_connected is not None:
                self._on_connected(connected)

    def _register(self) -> agent_pb2.AgentMessage:
        ident = self.identity
        return agent_pb2.AgentMessage(
            register=agent_pb2.Register(
                agent_id=ident.agent_id,
                hostname=ident.hostname,
                labels=dict(ident.labels),
                capacity=capacity_to_proto(capacity(ident.gpus, ident.cpu_slots)),
                engines=list(ident.engines),
                # Only what runs now; replicas stopped meanwhile go out in the first Report.
                replicas=[status_to_proto(s) for s in self._supervisor.statuses()],
            )
        )

    def _report(self) -> agent_pb2.AgentMessage:
        ident = self.identity
        # GPU use changes all the time; hosts without GPUs have nothing to refresh.
        offer = capacity(ident.gpus, ident.cpu_slots) if ident.gpus else None
        return report_message(self._supervisor.take_report(), offer)

    def _apply_welcome(self, welcome: agent_pb2.Welcome) -> None:
        self.controller_id = welcome.controller_id
        if welcome.report_interval_s > 0:
            self.report_interval_s = welcome.report_interval_s
            # Load is read as often as it is reported: fresher numbers would go nowhere.
            self._supervisor.settings.probe_interval_s = welcome.report_interval_s

    async def _serve_once(self) -> None:
        outbox: Outbox = asyncio.Queue()
        outbox.put_nowait(self._register())
        async with aio_channel(self._target, self._credentials) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            # Requests go out through call.write() from a task of ours. (A request iterator
            # would leave gRPC's own consumer task pending on our queue when the stream ends:
            # "Task was destroyed but it is pending!" on every reconnect.)
            call = stub.Connect()  # type: ignore[call-arg]
            writer = asyncio.create_task(self._write(call, outbox), name="agent-stream-writer")
            try:
                responses = call.__aiter__()
                try:
                    async with asyncio.timeout(self._welcome_timeout_s):
                        first = await anext(responses)
                except StopAsyncIteration:
                    raise SessionError("controller closed the stream before Welcome") from None
                kind = first.WhichOneof("msg")
                if kind != "welcome":
                    raise SessionError(f"controller sent {kind!r} before Welcome")
                self._apply_welcome(first.welcome)
                self._backoff.reset()
                self.sessions += 1
                self._set_connected(True)
                log.info(
                    "connected to controller",
                    extra={"controller": self._target, "controller_id": self.controller_id},
                )
                await self._exchange(responses, outbox, writer)
            finally:
                call.cancel()
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    @staticmethod
    async def _write(call: Any, outbox: Outbox) -> None:
        """The stream's request side; None ends it (half-close). task_done() runs once a
        message is written, so outbox.join() waits for the last report to leave."""
        while True:
            msg = await outbox.get()
            try:
                if msg is None:
                    await call.done_writing()
                    return
                await call.write(msg)
            finally:
                outbox.task_done()

    async def _exchange(
        self,
        responses: AsyncIterator[agent_pb2.ControllerMessage],
        outbox: Outbox,
        writer: asyncio.Task[None],
    ) -> None:
        handler = CommandHandler(
            self._supervisor,
            outbox.put_nowait,
            lambda: outbox.put_nowait(self._report()),
            gpu_devices=tuple(g.index for g in self.identity.gpus),
        )
        tasks = [
            asyncio.create_task(self._read(responses, handler)),
            asyncio.create_task(self._report_loop(outbox)),
        ]
        closing = asyncio.create_task(self._closing.wait())
        try:
            done, _ = await asyncio.wait(
                [*tasks, writer, closing], return_when=asyncio.FIRST_COMPLETED
            )
            if closing in done:
                outbox.put_nowait(self._report())
                outbox.put_nowait(None)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await outbox.join()
                return
            for task in done:
                task.result()
            raise SessionError("stream task ended")
        finally:
            for task in [*tasks, closing]:
                task.cancel()
            await asyncio.gather(*tasks, closing, return_exceptions=True)
            await handler.close()

    async def _read(
        self, responses: AsyncIterator[agent_pb2.ControllerMessage], handler: CommandHandler
    ) -> None:
        async for msg in responses:
            if msg.WhichOneof("msg") == "welcome":
                self._apply_welcome(msg.welcome)
                continue
            handler.handle(msg)
        raise SessionError("controller closed the stream")

    async def _report_loop(self, outbox: Outbox) -> None:
        changed = self._supervisor.changed
        while True:
            # asyncio.timeout, not wait_for: wait_for on 3.11 can swallow a cancellation that
            # coincides with the event, and this loop would then outlive its stream.
            try:
                async with asyncio.timeout(self.report_interval_s):
                    await changed.wait()
            except TimeoutError:
                pass
            else:
                # A burst of changes (several replicas failing together) goes out as one report.
                await asyncio.sleep(self._coalesce_s)
            changed.clear()
            outbox.put_nowait(self._report())
