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


_LINGER_S = 1.0


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
            self._header_bytes = 0
            self._oversized = False
            self._timer: asyncio.TimerHandle | None = None
            self._in_request = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self._limits.max_connections:
                log.warning(
                    "connection refused: at the limit", extra={"limit": limits.max_connections}
                )
                transport.abort()
                return
            # A connection that sends nothing is closed like one that sends too slowly.
            self._arm(self._limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._oversized:
                return
            if not self._in_request and self._timer is None:
                # The first byte of the next request on a kept-alive connection.
                self._arm(self._limits.header_timeout_s)
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            self._in_request = True

        def on_url(self, url: bytes) -> None:
            if self._count(len(url)):
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._count(len(name) + len(value) + 4):
                super().on_header(name, value)

        def _count(self, n: int) -> bool:
            if self._oversized:
                return False
            self._header_bytes += n
            if self._header_bytes <= self._limits.max_header_bytes:
                return True
            self._oversized = True
            self.transport.write(_431 % (len(_431_BODY), _431_BODY))
            # A lingering close: closing now, with the client's bytes unread, would send a
            # reset that can destroy the 431 before the client reads it. Send FIN, read and
            # drop what still comes for a moment, then close.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._arm(_LINGER_S)
            return False

        def on_headers_complete(self) -> None:
            if self._oversized:
                return
            # Headers are in; from here the body may not stall (reset on every chunk).
            self._arm(self._limits.body_timeout_s)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._oversized:
                return
            self._arm(self._limits.body_timeout_s)
            super().on_body(body)

        def on_message_complete(self) -> None:
            if self._oversized:
                return
            # The request is in: a long generation is bounded by the upstream timeouts.
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self._in_request = False
            super().on_response_complete()

    return BoundedProtocol


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
