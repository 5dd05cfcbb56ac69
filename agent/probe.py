"""HTTP probes of one engine: health (with round-trip time) and load from its /metrics."""

from __future__ import annotations

import dataclasses

import httpx

from agent.engine_metrics import NO_LOAD, EngineLoad, parse_engine_metrics
from agent.engines import ADAPTERS
from llmpool.clock import Clock
from llmpool.engine_capacity import (
    INFO_PATHS,
    UNKNOWN,
    EngineCapacity,
    capacity_from_info,
    capacity_from_metrics,
)

# An info document larger than this is not read (they are a few kilobytes).
_MAX_INFO_BYTES = 1024 * 1024


class ProbeError(Exception):
    """The engine did not answer as expected; the message says how."""


class Prober:
    """Shares one connection pool for every probe of every replica on this host."""

    def __init__(self, client: httpx.AsyncClient, clock: Clock) -> None:
        self._client = client
        self._clock = clock

    async def health(self, url: str, timeout_s: float) -> float:
        """Round-trip seconds of a 200 answer; ProbeError otherwise."""
        started = self._clock.monotonic()
        try:
            response = await self._client.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise ProbeError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise ProbeError(f"GET {url}: HTTP {response.status_code}")
        return self._clock.monotonic() - started

    async def load(self, engine: str, url: str, timeout_s: float) -> EngineLoad:
        """The engine's load, read by its adapter; NO_LOAD when it has no metrics endpoint (404)."""
        try:
            response = await self._client.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise ProbeError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            return NO_LOAD
        if response.status_code != 200:
            raise ProbeError(f"GET {url}: HTTP {response.status_code}")
        adapter = ADAPTERS.get(engine)
        try:
            if adapter is None:
                # Not a kind this agent knows (a newer controller): try every engine's names.
                load = parse_engine_metrics(engine, response.text)
            else:
                load = adapter.parse_load(response.text)
            capacity = capacity_from_metrics(engine, response.text)
        except ValueError as exc:
            raise ProbeError(f"GET {url}: {exc}") from exc
        if not capacity.known:
            return load
        return dataclasses.replace(
            load,
            cache_tokens=capacity.cache_tokens,
            cache_block_size=capacity.block_size,
            max_running=capacity.max_running,
        )

    async def capacity(self, engine: str, base_url: str, timeout_s: float) -> EngineCapacity:
        """What the engine's JSON info endpoint (TGI /info, llama-server /props, SGLang
        /get_server_info) says of its capacity; UNKNOWN for engines without one, or when it does
        not answer with a JSON object (the capacity is a help, never a reason to fail)."""
        path = INFO_PATHS.get(engine, "")
        if not path:
            return UNKNOWN
        try:
            response = await self._client.get(base_url + path, timeout=timeout_s)
            if response.status_code != 200 or len(response.content) > _MAX_INFO_BYTES:
                return UNKNOWN
            doc = response.json()
        except (httpx.HTTPError, ValueError):
            return UNKNOWN
        return capacity_from_info(engine, doc) if isinstance(doc, dict) else UNKNOWN
