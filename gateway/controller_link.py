"""The gateway's link to the controller: routing snapshots down, usage reports up, reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from gateway.keys import Keyring
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.pool_sends import PoolSends
from gateway.routing import RoutingTable
from gateway.usage import UsageTracker
from llmpool.backoff import Backoff, reconnect_backoff
from llmpool.tls import aio_channel
from llmpool.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2

if TYPE_CHECKING:
    from llmpool.v1.gateway_pb2_grpc import GatewayServiceAsyncStub

log = logging.getLogger(__name__)

# A usage report goes this soon after the last at the earliest when it carries news the other
# gateways need now (a homed prefix found missing: ControllerLink._urgent).
URGENT_S = 0.2


class ControllerLink:
    """Keeps WatchRouting and ReportUsage streams up; the table serves on while they are down."""

    def __init__(
        self,
        *,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        gateway_id: str,
        table: RoutingTable,
        usage: UsageTracker,
        metrics: GatewayMetrics,
        usage_interval_s: float = 1.0,
        backoff_factory: Callable[[], Backoff] = reconnect_backoff,
        conditions: Callable[[], Iterable[types_pb2.MemberCondition]] = tuple,
        held: Callable[[], Mapping[str, int]] = dict,
        learned: Callable[[], Mapping[str, tuple[int, float]]] = dict,
        missed: Callable[[], Mapping[str, Sequence[int]]] = dict,
        sent: Callable[[], Mapping[str, Mapping[int, int]]] = dict,
        verdicts: Callable[[], Mapping[str, Sequence[tuple[int, bool]]]] = dict,
        urgent: Callable[[], bool] = bool,
        keys: Keyring | None = None,
        limiter: Limiter | None = None,
        sends: PoolSends | None = None,
    ) -> None:
        # This gateway's sends told to the others, and theirs heard (ShareSends).
        self._sends = sends
        # The API key table and this gateway's slices of the limits come with routing.
        self._keys = keys
        self._limiter = limiter
        # Requests held per model for want of a member: they ask the autoscaler for a replica.
        self._held = held
        # Members this gateway keeps out of its picks, sent in full with every usage report.
        self._conditions = conditions
        # What this gateway learned of members' caches (tokens) and prefill speed (seconds a
        # token), sent with their usage.
        self._learned = learned
        # Prompt prefixes it found members no longer held since the last report (drained;
        # bounded per member where they are gathered, cache_metrics.missed_prefixes).
        self._missed = missed
        # Prompt prefixes it sent members since the last report, with their prompts' tokens
        # (drained; bounded per member, cache_metrics.sent_prefixes).
        self._sent = sent
        # Verdicts on its predictions since the last report: (depth in the member's LRU,
        # tokens; hit) (drained; bounded per member, cache_metrics.verdicts).
        self._verdicts = verdicts
        # Whether the next report should go sooner than due (news others need now).
        self._urgent = urgent
        self._target = target
        self._credentials = credentials
        self._gateway_id = gateway_id
        self._table = table
        self._usage = usage
        self._metrics = metrics
        self._usage_interval_s = usage_interval_s
        self._backoff_factory = backoff_factory
        self._channel: grpc.aio.Channel | None = None
        self._stub: GatewayServiceAsyncStub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False
        # Counts streams that delivered at least one snapshot; tests and logs use it.
        self.sessions = 0
        self._sequence = 0

    async def start(self) -> None:
        self._channel = aio_channel(self._target, self._credentials)
        stub: GatewayServiceAsyncStub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._stub = stub
        self._tasks = [
            asyncio.create_task(self._watch_loop(stub), name="gateway-watch-routing"),
            asyncio.create_task(self._usage_loop(stub), name="gateway-report-usage"),
        ]
        if self._sends is not None:
            task = self._share_loop(stub, self._sends)
            self._tasks.append(asyncio.create_task(task, name="gateway-share-sends"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
        self._stub = None
        self._set_connected(False)

    def ready(self) -> bool:
        """Whether the controller answers now (an ask would not wait on a reconnect)."""
        return self.connected and self._stub is not None

    async def ask_home(self, model: str, prefix: int, tokens: int, timeout_s: float) -> str:
        """GatewayService.AskHome: the member the controller homes the prompt prefix on ("":
        none). Raises grpc.aio.AioRpcError, DEADLINE_EXCEEDED past timeout_s."""
        stub = self._stub
        if stub is None:
            raise ConnectionError("not connected to the controller")
        request = gateway_pb2.AskHomeRequest(
            gateway_id=self._gateway_id, model=model, prefix=prefix, tokens=min(tokens, 2**32 - 1)
        )
        answer = await stub.AskHome(request, timeout=timeout_s)
        return answer.member_id

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        self._metrics.controller_connected.set(1 if value else 0)

    async def _watch_loop(self, stub: GatewayServiceAsyncStub) -> None:
        backoff = self._backoff_factory()
        was_down = False
        while True:
            request = gateway_pb2.WatchRoutingRequest(
                gateway_id=self._gateway_id, known_version=self._table.version
            )
            call = stub.WatchRouting(request)
            try:
                first = True
                async for snapshot in call:
                    if snapshot.HasField("keys") and self._keys is not None:
                        self._keys.apply(snapshot.keys)
                    if snapshot.HasField("quotas") and self._limiter is not None:
                        self._limiter.apply(snapshot.quotas)
                    if snapshot.full or snapshot.routes or snapshot.removed_models:
                        self._table.apply(snapshot)
                    self._metrics.snapshot_version.set(self._table.version)
                    if first:
                        first = False
                        self.sessions += 1
                        self._set_connected(True)
                        backoff.reset()
                        if was_down:
                            log.info(
                                "controller stream restored",
                                extra={"controller": self._target, "version": self._table.version},
                            )
                        was_down = False
                error = "routing stream ended by the controller"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            finally:
                call.cancel()
            self._set_connected(False)
            delay = backoff.delay()
            if not was_down:
                # One line per outage, not per attempt.
                log.warning(
                    "controller unreachable, serving the last routing table",
                    extra={
                        "controller": self._target,
                        "error": error,
                        "version": self._table.version,
                        "models": len(self._table),
                    },
                )
                was_down = True
            await asyncio.sleep(delay)

    async def _usage_loop(self, stub: GatewayServiceAsyncStub) -> None:
        backoff = self._backoff_factory()
        while True:
            call = stub.ReportUsage(self._reports(backoff))
            try:
                await call
                error = "usage stream ended by the controller"
            except grpc.RpcError as exc:
                error = repr(exc)
            finally:
                call.cancel()
            log.debug("usage stream down", extra={"error": error})
            await asyncio.sleep(backoff.delay())

    async def _share_loop(self, stub: GatewayServiceAsyncStub, sends: PoolSends) -> None:
        """Keeps ShareSends up: this gateway's sends out as they happen, the others' in."""
        backoff = self._backoff_factory()
        metadata = (("llmpool-gateway-id", self._gateway_id),)
        while True:
            call = stub.ShareSends(self._batches(sends), metadata=metadata)
            sends.live = True
            try:
                async for batch in call:
                    sends.told(batch)
                    backoff.reset()
                error = "send stream ended by the controller"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            finally:
                call.cancel()
                sends.reset()
            log.debug("send stream down", extra={"error": error})
            await asyncio.sleep(backoff.delay())

    @staticmethod
    async def _batches(sends: PoolSends) -> AsyncIterator[gateway_pb2.SendBatch]:
        while True:
            yield await sends.next_batch()

    async def _report_due(self) -> None:
        """Returns when the usage interval has passed since the last report, or sooner, at
        most every URGENT_S, while there is news other gateways need now (self._urgent)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._usage_interval_s
        while True:
            left = due - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, URGENT_S))
            if self._urgent():
                return

    async def _reports(self, backoff: Backoff) -> AsyncIterator[gateway_pb2.UsageReport]:
        while True:
            await self._report_due()
            report = self._usage.drain_report(self._gateway_id)
            missed = self._missed()
            sent = self._sent()
            # Kept for a report that names members (a verdict comes with a request's end).
            verdicts = self._verdicts() if report.members else {}
            if report.members:
                learned = self._learned()
                if learned:
                    for m in report.members:
                        tokens, speed = learned.get(m.member_id, (0, 0.0))
                        m.learned_cache_tokens = tokens
                        m.learned_prefill_s_per_token = speed
                if missed:
                    for m in report.members:
                        keys = missed.get(m.member_id)
                        if keys:
                            m.missed_prefixes.extend(keys)
                if sent:
                    for m in report.members:
                        sizes = sent.get(m.member_id)
                        if sizes:
                            m.sent_prefixes.extend(sizes)
                            m.sent_prefix_tokens.extend(sizes.values())
                if verdicts:
                    for m in report.members:
                        points = verdicts.get(m.member_id)
                        if points:
                            m.verdict_reach_tokens.extend(reach for reach, _ in points)
                            m.verdict_hits.extend(hit for _, hit in points)
            report.routing_version = self._table.version
            report.conditions.extend(self._conditions())
            report.held.update(self._held())
            if self._limiter is not None:
                self._sequence += 1
                report.sequence = self._sequence
                report.subjects.update(self._limiter.drain_report(self._sequence))
            yield report
            # grpc asks for the next report only after it sent this one: the stream works.
            backoff.reset()
