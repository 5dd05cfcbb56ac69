"""UpstreamClient on aiohttp: the default, because its pool does not serialise under load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from gateway.upstream import (
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
    UpstreamTransportError,
    safe_content_type,
)


def _wrap(exc: BaseException) -> UpstreamTransportError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeoutError(f"upstream timed out ({type(exc).__name__})")
    return UpstreamTransportError(f"upstream unreachable ({type(exc).__name__}: {exc})")


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
# Members come and go with snapshots; past this many distinct URLs the cache starts over.
_MAX_CACHED_URLS = 4096


class _AiohttpResponse:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    @property
    def content_type(self) -> str:
        return safe_content_type(self._response.headers.get("Content-Type"))

    async def read(self, limit: int) -> bytes:
        response = self._response
        declared = response.content_length
        try:
            if declared is not None and declared > limit:
                response.close()
                raise UpstreamTooLargeError(f"upstream body of {declared} bytes is over {limit}")
            if declared is not None:
                return await response.read()
            parts: list[bytes] = []
            size = 0
            content = response.content
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    response.close()
                    raise UpstreamTooLargeError(f"upstream body is over {limit} bytes")
                parts.append(chunk)
            return b"".join(parts)
        except _ERRORS as exc:
            response.close()
            raise _wrap(exc) from exc
        finally:
            # Back to the pool when the body was read whole; a no-op after close().
            response.release()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            # Whatever has arrived, as soon as it arrives: one upstream write, one chunk here.
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except _ERRORS as exc:
            raise _wrap(exc) from exc

    async def aclose(self) -> None:
        # Closing before the body ends drops the connection: the engine sees the cancel.
        # After a complete body, release() returns the connection to the pool instead.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpUpstream:
    """One ClientSession (made on first use, inside the running loop) with a keep-alive pool."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        max_connections: int = 1024,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # Parsed URLs by text: members' URLs repeat, and yarl parsing costs more than the lookup.
        self._urls: dict[str, URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._connect_timeout_s,
                sock_read=self._timeout_s,
            ),
            # Bytes pass through as the engine sent them; we ask for identity encoding anyway.
            auto_decompress=False,
            # Proxy variables meant for people's shells must not reroute backend traffic.
            trust_env=False,
            skip_auto_headers=("User-Agent",),
        )
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        session = self._session or self._open()
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _MAX_CACHED_URLS:
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        try:
            response = await session.post(parsed, data=body, headers=headers, allow_redirects=False)
        except _ERRORS as exc:
            raise _wrap(exc) from exc
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
