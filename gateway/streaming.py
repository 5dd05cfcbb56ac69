"""Relays an upstream SSE stream to the client with backpressure and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.connections import CANCEL_REASON, SHUTTING_DOWN
from gateway.errors import GatewayError, ShuttingDownError, UpstreamError, sse_error_event
from gateway.tokens import NO_USAGE, StreamTail, TokenUsage, usage_from_sse
from gateway.upstream import UpstreamResponse, UpstreamTransportError, failure_phrase
from llmpool.clock import Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    completed: bool
    client_disconnected: bool
    ttft_s: float | None
    usage: TokenUsage
    error: str | None


class StreamRelay(Response):
    """An ASGI response that copies upstream bytes to the client as they arrive.

    Backpressure: the next upstream chunk is read only after the server accepted the last
    one (uvicorn's send waits while the socket is paused). Cancellation: a client disconnect
    cancels the serving task (gateway/connections.py), which stops the copy at once and
    closes the upstream response, so the engine sees it too."""

    def __init__(
        self,
        upstream: UpstreamResponse,
        *,
        first: bytes = b"",
        chunks: AsyncIterator[bytes] | None = None,
        headers: dict[str, str],
        clock: Clock,
        started_at: float,
        on_done: Callable[[StreamOutcome], None],
        error_event: Callable[[GatewayError], bytes] = sse_error_event,
        strip_usage: bool = False,
    ) -> None:
        # The gateway asked for usage the client did not: counted, not sent on.
        self._strip_usage = strip_usage
        # How an error goes in-band: OpenAI's data line, or the Messages API's error event.
        self._error_event = error_event
        self.status_code = 200
        self.background = None
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self._upstream = upstream
        # The relay already read the first chunk (its first-byte deadline); the rest follows.
        self._first = first
        self._chunks = chunks if chunks is not None else upstream.iter_bytes()
        self._clock = clock
        self._started_at = started_at
        self._on_done = on_done
        self._tail = StreamTail()
        self._ttft: float | None = None
        self._completed = False
        self._disconnected = False
        self._error: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            await self._pump(send)
        except asyncio.CancelledError:
            # Ours (the client left, or the gateway stops) is absorbed; any other cancel goes up.
            reason = scope.get(CANCEL_REASON)
            if not reason or task.uncancel() > 0:
                raise
            if reason == SHUTTING_DOWN:
                self._error = "the gateway shut down"
                with contextlib.suppress(Exception):
                    await self._end_with(
                        ShuttingDownError("The gateway is shutting down; the stream ends here."),
                        send,
                    )
            else:
                self._disconnected = True
        except Exception as exc:
            log.error("stream relay failed", exc_info=exc)
        finally:
            with contextlib.suppress(Exception):
                closing = getattr(self._chunks, "aclose", None)
                if closing is not None:
                    await closing()
                await self._upstream.aclose()
            self._finish()

    def _finish(self) -> None:
        usage = usage_from_sse(self._tail.text()) if self._completed else NO_USAGE
        outcome = StreamOutcome(
            completed=self._completed,
            client_disconnected=self._disconnected,
            ttft_s=self._ttft,
            usage=usage,
            error=self._error,
        )
        try:
            self._on_done(outcome)
        except Exception:
            log.exception("stream accounting failed")

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            add = self._tail.add
            strip = self._strip_usage
            first = self._first
            if first:
                self._ttft = self._clock.monotonic() - self._started_at
                add(first)
                if strip and _USAGE_ONLY in first:
                    first = _without_usage_events(first)
                if first:
                    await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in self._chunks:
                if self._ttft is None:
                    self._ttft = self._clock.monotonic() - self._started_at
                add(chunk)
                if strip and _USAGE_ONLY in chunk:
                    chunk = _without_usage_events(chunk)
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamTransportError as exc:
            # Too late to retry or change the status: tell the client in-band, as OpenAI does.
            self._error = str(exc)
            log.warning("upstream stream broke", extra={"error": str(exc)})
            await self._end_with(
                UpstreamError(f"The upstream stream broke: {failure_phrase(exc)}."), send
            )
            return
        self._completed = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _end_with(self, error: GatewayError, send: Send) -> None:
        """Too late to change the status: the error goes in-band, as OpenAI does, then the end."""
        event = self._error_event(error)
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# In the usage-only chunk of an OpenAI stream (no choices, a usage object).
_USAGE_ONLY = b'"usage"'
# Engines write JSON with and without spaces after separators.
_NO_CHOICES = (b'"choices":[]', b'"choices": []')


def _without_usage_events(chunk: bytes) -> bytes:
    """chunk without its usage-only events (an event split across chunks passes whole)."""
    events = chunk.split(b"\n\n")
    kept = [e for e in events if not (b'"usage"' in e and any(n in e for n in _NO_CHOICES))]
    return b"\n\n".join(kept)
