"""UpstreamClient on httpx: kept for comparison (`--upstream-client httpx`); aiohttp is faster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx

from gateway.upstream import (
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
    UpstreamTransportError,
    safe_content_type,
)


def _wrap(exc: httpx.HTTPError) -> UpstreamTransportError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"upstream timed out ({type(exc).__name__})")
    return UpstreamTransportError(f"upstream unreachable ({type(exc).__name__}: {exc})")


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    @property
    def content_type(self) -> str:
        return safe_content_type(self._response.headers.get("content-type"))

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in self._response.aiter_raw():
                size += len(chunk)
                if size > limit:
                    raise UpstreamTooLargeError(f"upstream body is over {limit} bytes")
                parts.append(chunk)
            return b"".join(parts)
        except httpx.HTTPError as exc:
            raise _wrap(exc) from exc
        finally:
            await self._response.aclose()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            # Raw bytes: we ask for identity encoding, so there is nothing to decode.
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _wrap(exc) from exc

    async def aclose(self) -> None:
        # Closing before the body is read drops the connection: the engine sees the cancel.
        await self._response.aclose()


class HttpxUpstream:
    """One shared AsyncClient: a connection pool per backend, sized for the concurrency."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        max_connections: int = 1024,
    ) -> None:
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            timeout=httpx.Timeout(
                connect=connect_timeout_s, read=timeout_s, write=timeout_s, pool=connect_timeout_s
            ),
            # Proxy variables meant for people's shells must not reroute backend traffic.
            trust_env=False,
            follow_redirects=False,
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        request = self._client.build_request("POST", url, content=body, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _wrap(exc) from exc
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()
