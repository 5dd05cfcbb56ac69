"""Relays one parsed request to a pool member: pick, send, retry elsewhere before the first byte."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping

import orjson
from starlette.responses import Response

from gateway import fallbacks
from gateway.accounting import RequestAccount
from gateway.admission import Admitter, not_found
from gateway.bodies import first_byte_deadline, wants_usage, with_usage
from gateway.cooldowns import Cooldowns, reset_after_s, retry_after_s
from gateway.credentials import Credentials
from gateway.errors import (
    GatewayError,
    NoHealthyMemberError,
    NotReadyError,
    RateLimitedError,
    UpstreamError,
    anthropic_error_event,
    sse_error_event,
)
from gateway.holds import Holds
from gateway.home_asks import HomeAsks
from gateway.keys import Principal
from gateway.members import Member
from gateway.metrics import GatewayMetrics
from gateway.outliers import Outliers
from gateway.parsing import Endpoint, ParsedRequest
from gateway.policies import PickContext
from gateway.providers import Provider, Translator, build_providers
from gateway.redacting import Redacted, redact
from gateway.responses import RawResponse
from gateway.retry_budget import RetryBudget
from gateway.routing import Route, RoutingTable
from gateway.streaming import StreamRelay
from gateway.tokens import NO_USAGE, usage_from_json
from gateway.upstream import (
    UpstreamClient,
    UpstreamResponse,
    UpstreamTransportError,
    drain_quietly,
    failure_phrase,
)
from gateway.usage import UsageTracker
from llmpool.clock import Clock

log = logging.getLogger(__name__)

MESSAGES = Endpoint.MESSAGES

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


# How long a member that answered 429 without Retry-After is left alone.
_DEFAULT_429_COOLDOWN_S = 1.0


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
        outliers: Outliers | None = None,
        budget: RetryBudget | None = None,
        holds: Holds | None = None,
        providers: Mapping[str, Provider] | None = None,
        credentials: Credentials | None = None,
        admitter: Admitter | None = None,
        asks: HomeAsks | None = None,
    ) -> None:
        # Asks the controller for a long new prompt prefix's home before it is picked.
        self._asks = asks
        self._admitter = admitter
        self._holds = holds
        self._providers = providers if providers is not None else build_providers()
        self._credentials = credentials
        self._outliers = outliers or Outliers(clock)
        self._budget = budget or RetryBudget(clock)
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
        self,
        req: ParsedRequest,
        headers: Mapping[str, str],
        account: RequestAccount,
        principal: Principal | None = None,
    ) -> Response:
        """The answer to req for principal (None: keys are off). Errors raise GatewayError; the
        caller closes the account for them (account.failed), as it does for a client that
        leaves."""
        account.model = req.model
        route = self._table.get(req.model)
        if principal is not None and route is not None:
            if not principal.may_use(route.model, route.tenant):
                raise not_found(req.model)
        if route is None:
            if not self._table.received:
                # Without routing we cannot tell an unknown model from a known one: a client
                # that retries (as told) gets served once the first snapshot is in.
                raise NotReadyError(
                    "This gateway has no routing from the controller yet; retry shortly.",
                    headers={"Retry-After": self._retry_after},
                )
            raise not_found(req.model)
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
        limit_headers = (
            await self._admitter.admit(principal, route, req, account)
            if self._admitter is not None
            else ()
        )
        response = await self._serve(route, req, ctx, headers, account, asked)
        if limit_headers:
            response.raw_headers.extend(limit_headers)
        return response

    async def _serve(
        self,
        route: Route,
        req: ParsedRequest,
        ctx: PickContext,
        headers: Mapping[str, str],
        account: RequestAccount,
        asked: str,
    ) -> Response:
        if route.fallbacks:
            return await self._with_fallbacks(route, req, ctx, headers, account, asked)
        if not route.candidates:
            if route.hold_s <= 0 or self._holds is None:
                raise NoHealthyMemberError(
                    _no_member_message(route, asked),
                    headers={"Retry-After": self._retry_after},
                )
            # A pool scaled to zero: wait for its first replica (the wait asks for one).
            route = await self._holds.wait(route)
        account.begin(req.model, route.policy)
        if req.stream:
            account.prompt_chars = len(req.body)
        return await self._try_members(route, req, ctx, headers, account)

    async def _with_fallbacks(
        self,
        route: Route,
        req: ParsedRequest,
        ctx: PickContext,
        headers: Mapping[str, str],
        account: RequestAccount,
        asked: str,
    ) -> Response:
        """The pool, then its fallbacks in order: the next one takes the request when this one
        has no healthy member, when every member failed before the first byte, or when it is
        saturated (never the last). The answer names the pool that served."""
        pools = fallbacks.chain(route, self._table.get)
        account.prompt_chars = len(req.body)
        error: GatewayError = NoHealthyMemberError(
            _no_member_message(route, asked), headers={"Retry-After": self._retry_after}
        )
        reason = ""
        for i, target in enumerate(pools):
            if i:
                req = self._retarget(target, req, ctx)
            if not target.candidates:
                reason = reason or "no_member"
                continue
            if i < len(pools) - 1:
                if fallbacks.saturated(target):
                    reason = reason or "saturated"
                    continue
                if fallbacks.over_slo(target, account.ttft_forecast, len(req.body)):
                    reason = reason or "ttft_slo"
                    continue
            account.switch(target.model, target.policy)
            try:
                response = await self._try_members(target, req, ctx, headers, account)
            except (UpstreamError, RateLimitedError) as exc:
                error, reason = exc, reason or "failed"
                continue
            if i:
                self._metrics.spilled.labels(route.model, target.model, reason).inc()
            response.raw_headers.append((fallbacks.POOL_HEADER_RAW, target.model.encode()))
            return response
        raise error

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
        if req.endpoint is MESSAGES and "anthropic-beta" in headers:
            # An Anthropic client's beta features, for an Anthropic member (others ignore it).
            extra["anthropic-beta"] = headers["anthropic-beta"]
        if extra:
            up_headers = {**up_headers, **extra}
        path = req.endpoint.value
        tried: list[str] = []
        last_error = "no member tried"
        cooldowns = self._cooldowns
        outliers = self._outliers
        self._budget.deposit()
        pool = cooldowns.available(route.candidates)
        if not pool:
            raise self._all_cooling(req.model, route)
        pool = outliers.available(pool)
        if route.local:
            pool = fallbacks.zone_first(route, pool)
        deadline = first_byte_deadline(route.ttfb_timeout_s, req)
        # The pool's backends get the request with personal data out (gateway/redacting.py).
        redacted = (
            redact(route.redactor, req)
            if route.redactor is not None and any(m.backend for m in route.candidates)
            else None
        )
        policy = route.policy
        if policy.asks and self._asks is not None:
            # A long new prompt prefix goes where the controller homes it (home_asks.py).
            await self._asks.home(policy, pool, ctx, route.model)
        for attempt in range(self._max_tries):
            if attempt:
                pool = cooldowns.available(tuple(m for m in route.candidates if m.id not in tried))
                if not pool:
                    break
                if not self._budget.withdraw():
                    self._metrics.retry_budget_exhausted.labels(req.model).inc()
                    break
                pool = outliers.available(pool)
                self._metrics.model(req.model).retries.inc()
            member = policy.pick(pool, ctx)
            tried.append(member.id)
            account.sent(member, ctx.ticket, req.stream)
            probe = outliers.picked(member.id)
            sent = redacted if redacted is not None and member.backend else None
            try:
                answer = await self._try(
                    member, route, sent.req if sent else req, path, up_headers, deadline, account,
                    sent,
                )  # fmt: skip
            except BaseException:
                if probe:
                    # Cancelled (the client left): the probe proved nothing either way.
                    outliers.released(member.id)
                raise
            if isinstance(answer, str):
                last_error = answer
                continue
            return answer
        if not cooldowns.available(route.candidates):
            raise self._all_cooling(req.model, route)
        raise UpstreamError(
            f"Model {req.model!r}: {len(tried)} backend(s) failed; last error: {last_error}"
        )

    async def _try(
        self,
        member: Member,
        route: Route,
        req: ParsedRequest,
        path: str,
        up_headers: Mapping[str, str],
        deadline: float | None,
        account: RequestAccount,
        redacted: Redacted | None = None,
    ) -> Response | str:
        """One try: the response, or what went wrong (counted against the member) for a retry.
        A redacted request's answer gets its placeholders back when the pool asks."""
        upstream: UpstreamResponse | None = None
        chunks: AsyncIterator[bytes] | None = None
        first = b""
        translator: Translator | None = None
        if member.kind == "openai" and not member.credential and req.endpoint is not MESSAGES:
            # The hot path: local engines and open endpoints get the client's bytes as they are.
            url, body, headers = (
                member.endpoint_url(path),
                req.body_for(member.upstream_model),
                up_headers,
            )
        else:
            provider = self._providers.get(member.kind)
            key = self._credentials.get(member.credential) if self._credentials else None
            if provider is None or (member.credential and key is None):
                why = "has no credential on this gateway" if provider else "is of an unknown kind"
                return account.try_failed(why)
            call = provider.prepare(member, req, up_headers, key)
            url, body, headers, translator = call.url, call.body, call.headers, call.translator
        # Streams always carry usage (token counts, the ledger): asked for upstream, kept out of
        # the client's stream when the client did not ask.
        strip_usage = req.stream and not wants_usage(req)
        if strip_usage and translator is None:
            if req.endpoint is Endpoint.CHAT or req.endpoint is Endpoint.COMPLETIONS:
                body = with_usage(body, req)
            else:
                strip_usage = False
        try:
            async with asyncio.timeout(deadline):
                upstream = await self._upstream.post(url, body, headers)
                if req.stream and upstream.status_code == 200:
                    # Wait for the stream's first bytes here, while another member can still
                    # take the request; the client gets headers once the member has begun.
                    chunks = upstream.iter_bytes()
                    if translator is not None:
                        # Translators always emit usage; strip_usage drops it if not asked.
                        chunks = translator.stream(chunks, req.model, True)
                    if redacted is not None:
                        chunks = redacted.stream(chunks)
                    first = await anext(chunks, b"")
                    account.first_byte()
        except TimeoutError:
            if upstream is not None:
                await upstream.aclose()
            self._metrics.ttfb_timeouts.labels(req.model).inc()
            self._failed(member, route, req.model)
            return account.try_failed(
                f"sent no first byte within {route.ttfb_timeout_s:g} s", "ttfb deadline"
            )
        except UpstreamTransportError as exc:
            if upstream is not None:
                await upstream.aclose()
            self._failed(member, route, req.model)
            return account.try_failed(failure_phrase(exc), str(exc))
        status = upstream.status_code
        if retryable_status(status):
            cooled = False
            if status in (429, 503, 529):
                # The member said when to come back: leave it alone until then. A 429 that does
                # not say when still means "slow down": a second.
                asked = retry_after_s(upstream.header("retry-after"), self._clock.wall())
                if asked is None and status == 429:
                    asked = reset_after_s(upstream.header, self._clock.wall())
                    if asked is None:
                        asked = _DEFAULT_429_COOLDOWN_S
                if asked is not None:
                    cooled = True
                    self._cooldowns.cool(member.id, asked)
                    self._metrics.cooldowns.labels(req.model).inc()
            if cooled:
                self._outliers.released(member.id)
            else:
                self._failed(member, route, req.model)
            # Read a little so that the connection can be reused; never shown to anyone.
            await drain_quietly(upstream)
            return account.try_failed(f"answered HTTP {status}")
        if status in (401, 403) and member.credential:
            # The provider refused this gateway's key, not the client's request: never show the
            # client its answer (it may quote part of the key) or a 401 about a key it did not
            # send; another member may serve.
            self._failed(member, route, req.model)
            await drain_quietly(upstream)
            log.warning(
                "member refused this gateway's credential",
                extra={"member": member.id, "credential": member.credential, "status": status},
            )
            return account.try_failed("refused the gateway's credential")
        self._outliers.success(member.id)
        if chunks is not None:
            return self._stream(member, upstream, first, chunks, account, req.endpoint, strip_usage)
        try:
            body = await upstream.read(self._max_body_bytes)
        except UpstreamTransportError as exc:
            self._failed(member, route, req.model)
            return account.try_failed(failure_phrase(exc), str(exc))
        content_type = upstream.content_type.encode()
        if translator is not None:
            try:
                body = (
                    translator.answer(body, req.model)
                    if status == 200
                    else translator.error(status, body)
                )
            except (ValueError, TypeError, AttributeError):
                self._failed(member, route, req.model)
                return account.try_failed("answered with a body it could not translate")
            content_type = b"application/json"
        if redacted is not None and status == 200:
            body = redacted.answer(body)
        account.answered(status, usage_from_json(body) if status == 200 else NO_USAGE)
        return RawResponse(body, status, content_type, [(_MEMBER_HEADER_RAW, member.id.encode())])

    def _failed(self, member: Member, route: Route, model: str) -> None:
        if self._outliers.failure(member.id, route.ejection):
            self._metrics.ejections.labels(model).inc()
            log.warning(
                "member ejected after failures",
                extra={"model": model, "member": member.id},
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
        return target, self._retarget(target, req, ctx)

    @staticmethod
    def _retarget(target: Route, req: ParsedRequest, ctx: PickContext) -> ParsedRequest:
        """req as target's: its name in the body sent upstream (so the answer's `model` names
        the pool that served), in the pick context and in metrics."""
        payload = {**req.payload, "model": target.model}
        body = orjson.dumps(payload)
        ctx.model, ctx.body, ctx.payload = target.model, body, payload
        return dataclasses.replace(req, model=target.model, body=body, payload=payload)

    def _stream(
        self,
        member: Member,
        upstream: UpstreamResponse,
        first: bytes,
        chunks: AsyncIterator[bytes],
        account: RequestAccount,
        endpoint: Endpoint,
        strip_usage: bool = False,
    ) -> StreamRelay:
        return StreamRelay(
            upstream,
            first=first,
            chunks=chunks,
            headers={
                "content-type": upstream.content_type,
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
                MEMBER_HEADER: member.id,
            },
            clock=self._clock,
            started_at=account.started_at,
            on_done=account.stream_ended,
            error_event=anthropic_error_event if endpoint is MESSAGES else sse_error_event,
            strip_usage=strip_usage,
        )


def _no_member_message(route: Route, asked: str) -> str:
    if route.redirects:
        return (
            f"No rule or split of model {asked!r} sent this request anywhere that can serve it, "
            "and it has no healthy backend of its own; retry shortly or check its rules."
        )
    via = "" if route.model == asked else f" (routed from {asked!r})"
    return f"No healthy backend for model {route.model!r}{via} right now; retry shortly."
