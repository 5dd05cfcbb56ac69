"""Relays one parsed request to a pool member: pick, send, retry elsewhere before the first byte."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import orjson
from starlette.responses import Response

from gateway.errors import ModelNotFoundError, NoHealthyMemberError, UpstreamError
from gateway.members import Member
from gateway.metrics import NO_BACKEND, UNKNOWN_MODEL, GatewayMetrics, ModelMetrics
from gateway.parsing import ParsedRequest
from gateway.policies import PickContext, Policy
from gateway.responses import RawResponse
from gateway.routing import Route, RoutingTable
from gateway.streaming import StreamOutcome, StreamRelay
from gateway.tokens import NO_USAGE, TokenUsage, usage_from_json
from gateway.upstream import UpstreamClient, UpstreamResponse, UpstreamTransportError
from gateway.usage import UsageTracker
from llmpool.clock import Clock

log = logging.getLogger(__name__)

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
        usage: UsageTracker,
        metrics: GatewayMetrics,
        clock: Clock,
        max_tries: int = 3,
        retry_after_s: int = 1,
    ) -> None:
        self._table = table
        self._upstream = upstream
        self._usage = usage
        self._metrics = metrics
        self._clock = clock
        self._max_tries = max_tries
        self._retry_after = str(retry_after_s)

    def count_rejected(self, status: int, model: str | None = None) -> None:
        """Counts a request answered with an error before any member was chosen."""
        label = model if model is not None and model in self._table else UNKNOWN_MODEL
        self._metrics.model(label).requests(NO_BACKEND, status).inc()

    async def handle(
        self, req: ParsedRequest, headers: Mapping[str, str], started_at: float
    ) -> Response:
        route = self._table.get(req.model)
        if route is None:
            self.count_rejected(404)
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
        if not route.candidates:
            self.count_rejected(503, req.model)
            raise NoHealthyMemberError(
                _no_member_message(route, asked),
                headers={"Retry-After": self._retry_after},
            )
        mm = self._metrics.model(req.model)
        mm.in_flight.inc()
        handed_off = False
        try:
            response = await self._try_members(route, req, mm, ctx, headers, started_at)
            handed_off = isinstance(response, StreamRelay)
            return response
        finally:
            if not handed_off:
                mm.in_flight.dec()
                mm.duration.observe(self._clock.monotonic() - started_at)

    async def _try_members(
        self,
        route: Route,
        req: ParsedRequest,
        mm: ModelMetrics,
        ctx: PickContext,
        headers: Mapping[str, str],
        started_at: float,
    ) -> Response:
        up_headers = _STREAM_HEADERS if req.stream else _JSON_HEADERS
        extra = {name: headers[name] for name in _FORWARDED if name in headers}
        if extra:
            up_headers = {**up_headers, **extra}
        path = req.endpoint.value
        tried: list[str] = []
        last_error = "no member tried"
        last_member = NO_BACKEND
        pool = route.candidates
        for attempt in range(self._max_tries):
            if attempt:
                pool = tuple(m for m in route.candidates if m.id not in tried)
                if not pool:
                    break
                mm.retries.inc()
            member = route.policy.pick(pool, ctx)
            tried.append(member.id)
            last_member = member.id
            sent_at = self._clock.monotonic()
            self._usage.started(member.id, req.model)
            try:
                upstream = await self._upstream.post(
                    member.endpoint_url(path), req.body_for(member.upstream_model), up_headers
                )
            except UpstreamTransportError as exc:
                last_error = self._failed(member, req, sent_at, str(exc), route.policy)
                continue
            except BaseException:
                self._failed(member, req, sent_at, "cancelled", log_it=False)
                raise
            status = upstream.status_code
            if retryable_status(status):
                detail = await _read_quietly(upstream)
                error = f"answered HTTP {status}: {_snippet(detail)}"
                last_error = self._failed(member, req, sent_at, error, route.policy)
                continue
            if req.stream and status == 200:
                return self._stream(member, req, mm, upstream, started_at, sent_at, route.policy)
            try:
                body = await upstream.read()
            except UpstreamTransportError as exc:
                last_error = self._failed(member, req, sent_at, str(exc), route.policy)
                continue
            except BaseException:
                self._failed(member, req, sent_at, "cancelled", log_it=False)
                raise
            tokens = usage_from_json(body) if status == 200 else NO_USAGE
            self._done(member, req, mm, status, sent_at, tokens, ok=status < 400)
            if route.policy.observes and status < 400:
                # Not streamed: the whole answer's time stands for the time to first token.
                route.policy.observe(
                    member.id, self._clock.monotonic() - sent_at, 0.0, tokens.prompt, True
                )
            return RawResponse(
                body,
                status,
                upstream.content_type.encode("latin-1"),
                [(_MEMBER_HEADER_RAW, member.id.encode())],
            )
        mm.requests(last_member, 502).inc()
        raise UpstreamError(
            f"Model {req.model!r}: {len(tried)} backend(s) failed; last error: {last_error}"
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
        self,
        member: Member,
        req: ParsedRequest,
        mm: ModelMetrics,
        upstream: UpstreamResponse,
        started_at: float,
        sent_at: float,
        policy: Policy,
    ) -> StreamRelay:
        def on_done(outcome: StreamOutcome) -> None:
            now = self._clock.monotonic()
            mm.in_flight.dec()
            mm.duration.observe(now - started_at)
            if outcome.ttft_s is not None:
                mm.ttft.observe(outcome.ttft_s)
            # A client that went away is not the member's fault.
            ok = outcome.error is None
            self._done(
                member, req, mm, 200, sent_at, outcome.usage, ok=ok, ttft_s=outcome.ttft_s, now=now
            )
            if policy.observes:
                observe_stream(policy, member.id, outcome, started_at, sent_at, now)

        return StreamRelay(
            upstream,
            headers={
                "content-type": upstream.content_type,
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
                MEMBER_HEADER: member.id,
            },
            clock=self._clock,
            started_at=started_at,
            on_done=on_done,
        )

    def _done(
        self,
        member: Member,
        req: ParsedRequest,
        mm: ModelMetrics,
        status: int,
        sent_at: float,
        tokens: TokenUsage,
        *,
        ok: bool,
        ttft_s: float | None = None,
        now: float | None = None,
    ) -> None:
        end = self._clock.monotonic() if now is None else now
        self._usage.finished(
            member.id,
            req.model,
            ok=ok,
            latency_s=end - sent_at,
            ttft_s=ttft_s,
            prompt_tokens=tokens.prompt,
            completion_tokens=tokens.completion,
        )
        mm.requests(member.id, status).inc()
        if tokens.prompt:
            mm.prompt_tokens.inc(tokens.prompt)
        if tokens.completion:
            mm.completion_tokens.inc(tokens.completion)

    def _failed(
        self,
        member: Member,
        req: ParsedRequest,
        sent_at: float,
        error: str,
        policy: Policy | None = None,
        log_it: bool = True,
    ) -> str:
        elapsed = self._clock.monotonic() - sent_at
        self._usage.finished(member.id, req.model, ok=False, latency_s=elapsed)
        if policy is not None and policy.observes:
            policy.observe(member.id, elapsed, 0.0, 0, False)
        if log_it:
            log.warning(
                "upstream try failed",
                extra={"model": req.model, "member": member.id, "error": error},
            )
        return f"member {member.id} {error}"


def observe_stream(
    policy: Policy,
    member_id: str,
    outcome: StreamOutcome,
    started_at: float,
    sent_at: float,
    now: float,
) -> None:
    """Tells the policy how a stream went: time to the first upstream chunk after sending, and
    time per output token after it when the usage says how many tokens came."""
    if outcome.ttft_s is None:
        if outcome.error is not None:
            policy.observe(member_id, now - sent_at, 0.0, 0, False)
        # No byte before the client left: nothing known about the member.
        return
    ttft = outcome.ttft_s - (sent_at - started_at)
    tokens = outcome.usage.completion
    tpot = (now - sent_at - ttft) / (tokens - 1) if tokens > 1 else 0.0
    policy.observe(member_id, ttft, tpot, outcome.usage.prompt, outcome.error is None)


def _no_member_message(route: Route, asked: str) -> str:
    if route.redirects:
        return (
            f"No rule or split of model {asked!r} sent this request anywhere that can serve it, "
            "and it has no healthy backend of its own; retry shortly or check its rules."
        )
    via = "" if route.model == asked else f" (routed from {asked!r})"
    return f"No healthy backend for model {route.model!r}{via} right now; retry shortly."


async def _read_quietly(upstream: UpstreamResponse) -> bytes:
    try:
        return await upstream.read()
    except UpstreamTransportError:
        return b""


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", errors="replace").strip()
    return text + ("..." if len(body) > limit else "")
