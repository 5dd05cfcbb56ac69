"""The upstream HTTP client interface, its errors, and the factory that picks an implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol


class UpstreamTransportError(Exception):
    """The member could not be reached or stopped answering (connect error, reset, timeout)."""


class UpstreamTimeoutError(UpstreamTransportError):
    pass


class UpstreamTooLargeError(UpstreamTransportError):
    """The answer is larger than the gateway takes; the connection was dropped unread."""


def failure_phrase(exc: UpstreamTransportError) -> str:
    """What a client may hear of a failed try: a fixed phrase, no address or upstream text
    (those go to the log)."""
    if isinstance(exc, UpstreamTimeoutError):
        return "timed out"
    if isinstance(exc, UpstreamTooLargeError):
        return "answered more than the gateway accepts"
    return "could not be reached"


def safe_content_type(value: str | None) -> str:
    """The upstream Content-Type if it is printable ASCII (it goes into our response headers),
    else application/json: bytes we cannot re-encode never become a 500."""
    if not value or len(value) > 256 or not value.isascii() or not value.isprintable():
        return "application/json"
    return value


class UpstreamResponse(Protocol):
    """A response whose headers have arrived and whose body has not been read yet."""

    @property
    def status_code(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    def header(self, name: str) -> str | None:
        """A response header's value (None when absent)."""
        ...

    async def read(self, limit: int) -> bytes:
        """The whole body, or UpstreamTooLargeError (the connection closed) past `limit` bytes."""
        ...

    def iter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Sends the request and returns once the response headers are in."""
        ...

    async def aclose(self) -> None: ...


UPSTREAM_CLIENTS = ("aiohttp", "httpx")
DEFAULT_UPSTREAM_CLIENT = "aiohttp"


def build_upstream(
    kind: str,
    *,
    connect_timeout_s: float,
    timeout_s: float,
    max_connections: int = 1024,
) -> UpstreamClient:
    """The one factory: "aiohttp" (the default, faster under concurrency) or "httpx"."""
    if kind == "aiohttp":
        from gateway.upstream_aiohttp import AiohttpUpstream

        return AiohttpUpstream(
            connect_timeout_s=connect_timeout_s,
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
    if kind == "httpx":
        from gateway.upstream_httpx import HttpxUpstream

        return HttpxUpstream(
            connect_timeout_s=connect_timeout_s,
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
    raise ValueError(f"unknown upstream client {kind!r}; known: {', '.join(UPSTREAM_CLIENTS)}")


# An error answer larger than this is not read: the connection is dropped instead.
_ERROR_BODY_BYTES = 4096


async def drain_quietly(upstream: UpstreamResponse) -> None:
    """Reads a little of an answer nobody will see, so that its connection can be reused."""
    try:
        await upstream.read(_ERROR_BODY_BYTES)
    except UpstreamTransportError:
        pass
