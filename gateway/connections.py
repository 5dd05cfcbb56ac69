"""Client connections with bounds: header size, header and body read time, count.

uvicorn's httptools protocol reads headers of any size for as long as a client likes to send
them, and keeps a connection that never sends a request. This subclass closes a connection
whose request line and headers pass `max_header_bytes` (431), that does not finish its headers
within `header_timeout_s` of its first byte (a new connection, or a kept-alive one that starts
its next request), or whose body stalls for `body_timeout_s`; past `max_connections` a new
connection is closed at once. The checks are a length sum per header and a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_431_BODY = (
    b'{"error":{"message":"Request line and headers are larger than the gateway accepts.",'
    b'"type":"invalid_request_error","param":null,"code":"headers_too_large"}}'
)


# Scope keys shared with the app (gateway/asgi.py): the task serving the request, and why it
# was cancelled. uvicorn does not cancel an app whose client left; we do, so that the upstream
# request ends with it, plain or streaming, before or after its headers. At the end of a
# graceful shutdown what is still open is cancelled with SHUTTING_DOWN and answers so.
CLIENT_TASK = "llmpool.task"
CANCEL_REASON = "llmpool.cancel_reason"
CLIENT_GONE = "client_gone"
SHUTTING_DOWN = "shutting_down"

_LINGER_S = 1.0
_HEAD, _BODY = "head", "body"


class _HeadTooLargeError(Exception):
    pass


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    max_connections: int = 10_000


def bounded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol class (what uvicorn.Config(http=...) takes) with `limits`."""

    class BoundedProtocol(HttpToolsProtocol):
        _limits = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Reading a request's head (_HEAD) or its body (_BODY); after the body, _HEAD again
            # with no deadline until the next request's first byte.
            self._phase = _HEAD
            self._head_bytes = 0
            self._oversized = False
            # One timer per connection, re-armed only when it fires: a request moves the
            # deadline with a float store, not a new timer (timers cost on the hot path).
            self._deadline = math.inf
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self._limits.max_connections:
                log.warning(
                    "connection refused: at the limit", extra={"limit": limits.max_connections}
                )
                transport.abort()
                return
            # A connection that sends nothing is closed like one that sends too slowly.
            self._deadline = self.loop.time() + self._limits.header_timeout_s
            self._timer = self.loop.call_at(self._deadline, self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            cancel_request(self, CLIENT_GONE)
            super().connection_lost(exc)

        def _check(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            if now >= self._deadline:
                self.transport.close()
                return
            # Not due: wake at the deadline, or now and then while nothing is timed.
            wake = min(self._deadline, now + self._limits.header_timeout_s)
            self._timer = self.loop.call_at(wake, self._check)

        def data_received(self, data: bytes) -> None:
            if self._oversized:
                return
            phase = self._phase
            if phase is _HEAD:
                if self._deadline == math.inf:
                    # The first byte of the next request on a kept-alive connection.
                    self._deadline = self.loop.time() + self._limits.header_timeout_s
                self._head_bytes += len(data)
            elif phase is _BODY:
                self._deadline = self.loop.time() + self._limits.body_timeout_s
            super().data_received(data)
            # Still reading the head after this read: bytes so far are head bytes (a body in
            # the same read would have ended the head first).
            if self._phase is _HEAD and self._head_bytes > self._limits.max_header_bytes:
                self._refuse_head()

        def _refuse_head(self) -> None:
            self._oversized = True
            self.transport.write(_431 % (len(_431_BODY), _431_BODY))
            # A lingering close: closing now, with the client's bytes unread, would send a
            # reset that can destroy the 431 before the client reads it. Send FIN, read and
            # drop what still comes for a moment, then close.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._deadline = self.loop.time() + _LINGER_S
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._check)

        def on_headers_complete(self) -> None:
            # The reads so far over the bound may hold body bytes too: only then is the head
            # measured exactly (a whole head larger than the bound can arrive in one read).
            if self._head_bytes > self._limits.max_header_bytes and (
                len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
                > self._limits.max_header_bytes
            ):
                self._refuse_head()
                # Stops the parser: no request is started (uvicorn's 400 is skipped below).
                raise _HeadTooLargeError
            # Headers are in; from here the body may not stall (each read moves the deadline).
            self._phase = _BODY
            self._deadline = self.loop.time() + self._limits.body_timeout_s
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._oversized:
                super().send_400_response(msg)

        def on_message_complete(self) -> None:
            # The request is in: a long generation is bounded by the upstream timeouts. The
            # next bytes are the next request's head, timed from its first byte.
            self._phase = _HEAD
            self._head_bytes = 0
            self._deadline = math.inf
            super().on_message_complete()

    return BoundedProtocol


def cancel_request(connection: Any, reason: str) -> bool:
    """Cancels the task serving `connection`'s unfinished response, saying why in its scope.
    True when there was one."""
    cycle = getattr(connection, "cycle", None)
    if cycle is None or cycle.response_complete:
        return False
    task: asyncio.Task[None] | None = cycle.scope.get(CLIENT_TASK)
    if task is None or task.done() or cycle.scope.get(CANCEL_REASON):
        return False
    cycle.scope[CANCEL_REASON] = reason
    task.cancel()
    return True


def raise_open_files_limit(wanted: int) -> int:
    """Raises this process's soft limit on open files towards `wanted` (within the hard limit):
    the default 1024 would refuse connections long before max_connections. Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft
