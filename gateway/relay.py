"""Relays one parsed request to a pool member: pick, send, retry elsewhere before the first byte."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import orjson
from starlette.responses import Response

from gateway.accounting import RequestAccount
from gateway.cooldowns import Cooldowns, retry_after_s
from gateway.errors import (
    ModelNotFoundError,
    NoHealthyMemberError,
    NotReadyError,
    RateLimitedError,
    UpstreamError,
)
from gateway.members import Member
from gateway.metrics import GatewayMetrics
from gateway.parsing import ParsedRequest
from gateway.policies import PickContext
from gateway.responses import RawResponse
from gateway.routing import Route, RoutingTable
from gateway.streaming import StreamRelay
from gateway.tokens import NO_USAGE, usage_from_json
from gateway.upstream import (
    UpstreamClient,
    UpstreamResponse,
    UpstreamTransportError,
    failure_phrase,
)
from gateway.usage import UsageTracker
from llmpool.clock import Clock

MEMBER_HEADER = "x-llmpool-member"
_MEMBER_HEADER_RAW = MEMBER_HEADER.encode()
_JSON_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json",
    "accept-encoding": "identity",
}
_STREAM_HEADERS = {**_JSON_HEADERS, "accept": "text/event-stream"}
# Client headers worth passing on; credentials are not (members hold their own).
_FORWARDED = ("x-request-id", "traceparent", "tracestate")


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


class Relay:
    """The hot path. Holds nothing per request beyond the call; reads the live routing table."""

    def __init__(
        self,
        *,
        table: RoutingTable,
        upstream: UpstreamClient,
        metrics: GatewayMetrics,
        usage: UsageTracker,
        clock: Clock,
        max_tries: int = 3,
        retry_after_s: int = 1,
        max_body_bytes: int = 64 * 1024 * 1024,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self._max_body_bytes = max_body_bytes
        self._cooldowns = cooldowns or Cooldowns(clock)
        self._table = table
        self._upstream = upstream
        self._metrics = metrics
        self._usage = usage
        self._clock = clock
        self._max_tries = max_tries
        self._retry_after = str(retry_after_s)

    async def handle(
        self, req: ParsedRequest, headers: Mapping[str, str], account: RequestAccount
    ) -> Response:
        """The answer to req. Errors raise GatewayError; the caller closes the account for them
        (account.failed), as it does for a client that leaves."""
        account.model = req.model
        route = self._table.get(req.model)
        if route is None:
            if not self._table.received:
                # Without routing we cannot tell an unknown model from a known one: a client
                # that retries (as told) gets served once the first snapshot is in.
                raise NotReadyError(
                    "This gateway has no routing from the controller yet; retry shortly.",
                    headers={"Retry-After": self._retry_after},
                )
            raise ModelNotFoundError(
                f"The model {req.model!r} does not exist here; GET /v1/models lists the models.",
                param="model",
            )
        ctx = PickContext(
            model=req.model,
            body=req.body,
            payload=req.payload,
            headers=headers,
            in_flight=self._usage.in_flight,
            reported_in_flight=self._usage.reported_in_flight,
        )
        asked = req.model
        if route.redirects:
            route, req = self._redirect(route, req, ctx)
            account.model = req.model
        if not route.candidates:
            raise NoHealthyMemberError(
                _no_member_message(route, asked),
                headers={"Retry-After": self._retry_after},
            )
        account.begin(req.model, route.policy)
        return await self._try_members(route, req, ctx, headers, account)

    async def _try_members(
        self,
        route: Route,
        req: ParsedRequest,
        ctx: PickContext,
        headers: Mapping[str, str],
        account: RequestAccount,
    ) -> Response:
        up_headers = _STREAM_HEADERS if req.stream else _JSON_HEADERS
        extra = {name: headers[name] for name in _FORWARDED if name in headers}
        if extra:
            up_headers = {**up_headers, **extra}
        path = req.endpoint.value
        tried: list[str] = []
        last_error = "no member tried"
        cooldowns = self._cooldowns
        pool = cooldowns.available(route.candidates)
        if not pool:
            raise self._all_cooling(req.model, route)
        for attempt in range(self._max_tries):
            if attempt:
                pool = cooldowns.available(tuple(m for m in route.candidates if m.id not in tried))
                if not pool:
                    break
                self._metrics.model(req.model).retries.inc()
            member = route.policy.pick(pool, ctx)
            tried.append(member.id)
            account.sent(member)
            try:
                upstream = await self._upstream.post(
                    member.endpoint_url(path), req.body_for(member.upstream_model), up_headers
                )
            except UpstreamTransportError as exc:
                last_error = account.try_failed(failure_phrase(exc), str(exc))
                continue
            status = upstream.status_code
            if retryable_status(status):
                if status in (429, 503):
                    # The member said when to come back: leave it alone until then.
                    asked = retry_after_s(upstream.header("retry-after"), self._clock.wall())
                    if asked is not None:
                        cooldowns.cool(member.id, asked)
                        self._metrics.cooldowns.labels(req.model).inc()
                # Read a little so that the connection can be reused; never shown to anyone.
                await _drain_quietly(upstream)
                last_error = account.try_failed(f"answered HTTP {status}")
                continue
            if req.stream and status == 200:
                return self._stream(member, upstream, account)
            try:
                body = await upstream.read(self._max_body_bytes)
            except UpstreamTransportError as exc:
                last_error = account.try_failed(failure_phrase(exc), str(exc))
                continue
            account.answered(status, usage_from_json(body) if status == 200 else NO_USAGE)
            return RawResponse(
                body,
                status,
                upstream.content_type.encode(),
                [(_MEMBER_HEADER_RAW, member.id.encode())],
            )
        if not cooldowns.available(route.candidates):
            raise self._all_cooling(req.model, route)
        raise UpstreamError(
            f"Model {req.model!r}: {len(tried)} backend(s) failed; last error: {last_error}"
        )

    def _all_cooling(self, model: str, route: Route) -> RateLimitedError:
        wait = self._cooldowns.wait_s(route.candidates)
        return RateLimitedError(
            f"Every backend of model {model!r} asked to wait; retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )

    def _redirect(
        self, route: Route, req: ParsedRequest, ctx: PickContext
    ) -> tuple[Route, ParsedRequest]:
        """Applies route's rules and split. From here on the request is the target pool's:
        its policy, metrics labels and usage, and its name in the body sent upstream (so the
        response's `model` names the pool that served it)."""
        target, hops = self._table.resolve(route, ctx)
        for hop in hops:
            self._metrics.hop(hop.kind, hop.source, hop.target).inc()
        if target is route:
            return route, req
        payload = {**req.payload, "model": target.model}
        body = orjson.dumps(payload)
        ctx.model, ctx.body, ctx.payload = target.model, body, payload
        return target, dataclasses.replace(req, model=target.model, body=body, payload=payload)

    def _stream(
        self, member: Member, upstream: UpstreamResponse, account: RequestAccount
    ) -> StreamRelay:
        return StreamRelay(
            upstream,
            headers={
                "content-type": upstream.content_type,
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
                MEMBER_HEADER: member.id,
            },
            clock=self._clock,
            started_at=account.started_at,
            on_done=account.stream_ended,
        )


def _no_member_message(route: Route, asked: str) -> str:
    if route.redirects:
        return (
            f"No rule or split of model {asked!r} sent this request anywhere that can serve it, "
            "and it has no healthy backend of its own; retry shortly or check its rules."
        )
    via = "" if route.model == asked else f" (routed from {asked!r})"
    return f"No healthy backend for model {route.model!r}{via} right now; retry shortly."


# An error answer larger than this is not read: the connection is dropped instead.
_ERROR_BODY_BYTES = 4096


async def _drain_quietly(upstream: UpstreamResponse) -> None:
    try:
        await upstream.read(_ERROR_BODY_BYTES)
    except UpstreamTransportError:
        pass
