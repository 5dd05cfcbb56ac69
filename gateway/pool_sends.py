"""This gateway's sends told to the other gateways as they happen, and theirs counted here
(GatewayService.ShareSends; controller/send_relay.py says why).

Out: a prefix_aware send in a pool with several gateways is told with its prompt's block hashes
(the same in every gateway), then its first byte and its end, each with the sender's times. The
hot path only appends a tuple; the link's writer builds the messages and sends whatever has
gathered as one batch as soon as it can.

In: each send told is counted as this gateway counts its own (PrefixAware.seen_sent: in its
index, in the member's queue, judged by its first byte and end) and in the in-flight counts the
policies read (UsageTracker.seen_started). When the stream ends, or a sender's does, what it
told is dropped: its ends would never come."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from gateway.metrics import GatewayMetrics
from gateway.policies import PickContext, Policy, PrefixAware
from gateway.policies.ticket import Ticket
from gateway.routing import RoutingTable
from gateway.usage import UsageTracker
from llmpool.clock import Clock
from llmpool.v1 import gateway_pb2

SENT = gateway_pb2.SendEvent.SENT
FIRST = gateway_pb2.SendEvent.FIRST
ENDED = gateway_pb2.SendEvent.ENDED
# Events waiting to go out; past it new ones are dropped (the stream is down or far behind),
# and the others learn of those requests from usage reports, as without sharing.
MAX_OUT = 4096
# Events in one batch (controller/send_relay.MAX_EVENTS).
BATCH = 1024
# Others' requests counted at once; past it new ones are not (a bound on memory).
MAX_SEEN = 65536
# A request told of but not ended after this long is dropped (its end was lost).
SEEN_TTL_S = 900.0


@dataclass(slots=True)
class _Seen:
    policy: PrefixAware
    member: str
    ticket: Ticket | None
    at: float


class PoolSends:
    """What this gateway tells the others of its sends, and what they told it of theirs."""

    def __init__(
        self, table: RoutingTable, usage: UsageTracker, clock: Clock, metrics: GatewayMetrics
    ) -> None:
        counts = metrics.shared_sends
        self._told = counts.labels("told")
        self._heard = counts.labels("heard")
        self._dropped = counts.labels("dropped")
        self._table = table
        self._usage = usage
        self._clock = clock
        self._numbers = itertools.count(1)
        # (kind, id, model, member, hashes, block_chars, stream, ttft_s, ok, cached tokens)
        self._out: list[tuple[int, int, str, str, object, int, bool, float, bool, int]] = []
        self._wake = asyncio.Event()
        # Per sender (the controller's name for its stream), its requests in flight by number.
        self._seen: dict[str, dict[int, _Seen]] = {}
        self._count = 0
        self._swept = clock.monotonic()
        # Whether the stream to the controller is up (nothing is told while it is down).
        self.live = False

    # ---- out (the request path)

    def sent(self, model: str, policy: Policy, member_id: str, ticket: object, stream: bool) -> int:
        """A try at member_id starts: told when the pool's policy shares (PrefixAware.shares).
        Returns the number its first byte and end are told with (0: not told)."""
        if not isinstance(policy, PrefixAware):
            return 0
        # The policy places as a gateway alone while it hears all (from its next pick).
        policy.hears_all = self.live and policy.shares
        if not (
            policy.hears_all
            and isinstance(ticket, Ticket)
            and ticket.hashes
            and len(self._out) < MAX_OUT
        ):
            return 0
        number = next(self._numbers)
        chars = policy.index.block_chars
        out = (SENT, number, model, member_id, ticket.hashes, chars, stream, 0.0, True, 0)
        self._out.append(out)
        self._wake.set()
        self._told.inc()
        return number

    def first(self, number: int, ttft_s: float) -> None:
        """The try's first byte came ttft_s after it was sent."""
        if number and self.live and len(self._out) < MAX_OUT:
            self._out.append((FIRST, number, "", "", (), 0, False, ttft_s, True, 0))
            self._wake.set()

    def ended(self, number: int, ok: bool, ttft_s: float | None, cached_tokens: int) -> None:
        """The try ended: ok with an answer the policy judges (ttft_s None: not streamed), or
        failed or left. Always told, past MAX_OUT too: the others' counts depend on it."""
        if number and self.live:
            ttft = ttft_s if ttft_s is not None and ttft_s > 0 else 0.0
            self._out.append((ENDED, number, "", "", (), 0, False, ttft, ok, cached_tokens))
            self._wake.set()

    async def next_batch(self) -> gateway_pb2.SendBatch:
        """The events gathered since the last batch (at most BATCH), once there are any."""
        while not self._out:
            self._wake.clear()
            await self._wake.wait()
        taken, self._out = self._out[:BATCH], self._out[BATCH:]
        if self._out:
            self._wake.set()
        batch = gateway_pb2.SendBatch()
        events = batch.events
        for kind, number, model, member, hashes, chars, stream, ttft, ok, cached in taken:
            event = events.add(kind=kind, id=number)
            if kind == SENT:
                event.model = model
                event.member_id = member
                event.hashes.extend(hashes)  # type: ignore[arg-type]
                event.block_chars = chars
                event.stream = stream
            else:
                event.ttft_s = ttft
                event.ok = ok
                event.cached_tokens = min(cached, 2**32 - 1)
        return batch

    # ---- in (the link's reader)

    def told(self, batch: gateway_pb2.SendBatch) -> None:
        """Another gateway's batch, as the controller passed it on (no events: that gateway's
        stream ended)."""
        sender = batch.gateway_id
        if not batch.events:
            self._drop(sender)
            return
        now = self._clock.monotonic()
        if now - self._swept > SEEN_TTL_S / 10:
            self._sweep(now)
        seen = self._seen.setdefault(sender, {})
        for event in batch.events:
            if event.kind == SENT:
                self._sent(seen, event, now)
                continue
            entry = seen.get(event.id) if event.kind == FIRST else seen.pop(event.id, None)
            if entry is None:
                continue
            ticket = entry.ticket
            if event.kind == FIRST:
                if ticket is not None:
                    entry.policy.began(ticket, event.ttft_s)
                continue
            self._count -= 1
            self._usage.seen_finished(entry.member)
            if ticket is not None:
                if event.ok and not ticket.judged:
                    entry.policy.settle(ticket, event.ttft_s or None, event.cached_tokens)
                elif not ticket.started:
                    entry.policy.began(ticket, None)
        if not seen:
            del self._seen[sender]

    def _sent(self, seen: dict[int, _Seen], event: gateway_pb2.SendEvent, now: float) -> None:
        route = self._table.get(event.model)
        member = (
            next((m for m in route.candidates if m.id == event.member_id), None)
            if route is not None and isinstance(route.policy, PrefixAware)
            else None
        )
        if member is None or self._count >= MAX_SEEN or event.id in seen:
            self._dropped.inc()
            return
        assert route is not None and isinstance(route.policy, PrefixAware)
        policy = route.policy
        ticket = None
        if event.block_chars == policy.index.block_chars:
            usage = self._usage
            ctx = PickContext(
                model=event.model,
                payload={"stream": event.stream},
                in_flight=usage.in_flight,
                reported_in_flight=usage.reported_in_flight,
            )
            ticket = policy.seen_sent(member, event.hashes, ctx)
        seen[event.id] = _Seen(policy, member.id, ticket, now)
        self._count += 1
        self._usage.seen_started(member.id)
        self._heard.inc()

    def _drop(self, sender: str) -> None:
        for entry in self._seen.pop(sender, {}).values():
            self._count -= 1
            self._usage.seen_finished(entry.member)

    def _sweep(self, now: float) -> None:
        self._swept = now
        for sender, seen in list(self._seen.items()):
            for number in [n for n, e in seen.items() if now - e.at > SEEN_TTL_S]:
                self._count -= 1
                self._usage.seen_finished(seen.pop(number).member)
            if not seen:
                del self._seen[sender]

    def reset(self) -> None:
        """The stream to the controller ended: nothing told goes out, what the others told is
        dropped (their ends may be lost), until it is up again."""
        self.live = False
        self._out.clear()
        for model in self._table.models():
            route = self._table.get(model)
            if route is not None and isinstance(route.policy, PrefixAware):
                route.policy.hears_all = False
        for sender in list(self._seen):
            self._drop(sender)
