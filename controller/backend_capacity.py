"""What the engines behind static backends say of their KV cache, read as agents read their own.

A static backend is often an engine someone already runs (vLLM, SGLang, TGI, llama-server), and
each says how much KV cache it has somewhere (llmpool/engine_capacity.py's parsers): /metrics
(vLLM's cache_config_info, SGLang's and TGI's gauges, our simulator), else SGLang's
/get_server_info, llama-server's /props or TGI's /info. The controller asks once and hands it
out with the member (cache_tokens, cache_block_size, max_running), so that every gateway sizes
and weighs that member alike from its first request rather than each learning it from misses
(the vLLM router scrapes its static workers' /metrics the same way). Engines that say nothing
and remote APIs (404) are left to the gateways' estimates (cache_estimate.py).

Asked again every REFRESH_S (a restart with other flags); one that did not answer, sooner
(1 s, doubling to RETRY_S: it may still be starting). Azure and Anthropic backends are not
asked. No credential is sent (the controller holds none), no redirect followed, and an answer
is read up to MAX_BYTES within TIMEOUT_S; URLs are the ones the admin API let in
(backend_urls.py) or the operator's config file."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import httpx

from llmpool.addr import base_url
from llmpool.clock import Clock
from llmpool.engine_capacity import (
    UNKNOWN,
    EngineCapacity,
    capacity_from_info,
    capacity_from_metrics,
)

from .model import BackendSpec

log = logging.getLogger(__name__)

# Where each engine says it, in the order asked, with the parser's engine name for the JSON
# documents ("" for /metrics: every engine's names are tried).
PATHS: tuple[tuple[str, str], ...] = (
    ("/metrics", ""),
    ("/get_server_info", "sglang"),
    ("/props", "llama-server"),
    ("/info", "tgi"),
)
MAX_BYTES = 4 << 20
TIMEOUT_S = 3.0
REFRESH_S = 300.0
RETRY_S = 60.0
# How often due backends are looked for (new ones are asked within this).
TICK_S = 2.0
# Backends asked at once.
AT_ONCE = 16

# url -> (HTTP status, body); raises OSError or httpx.HTTPError when nothing came back.
Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]


def capacity_of(engine: str, status: int, body: bytes) -> EngineCapacity:
    """What one answer says ("" for /metrics text, else the engine whose JSON document it
    is); UNKNOWN for an error status or a body that is not what that path returns."""
    if status != 200 or not body:
        return UNKNOWN
    if not engine:
        try:
            return capacity_from_metrics("openai", body.decode("utf-8", "replace"))
        except ValueError:
            return UNKNOWN
    try:
        doc = json.loads(body)
    except ValueError:
        return UNKNOWN
    return capacity_from_info(engine, doc) if isinstance(doc, dict) else UNKNOWN


def asked(backend: BackendSpec) -> bool:
    """Backends whose engine may say: enabled OpenAI-compatible ones."""
    return backend.enabled and backend.kind == "openai"


@dataclass
class _Due:
    url: str
    at: float = 0.0
    failures: int = 0


class BackendCapacities:
    """The capacity each static backend's engine said, kept up to date by run()."""

    def __init__(
        self,
        fetch: Fetch,
        clock: Clock,
        backends: Callable[[], Iterable[BackendSpec]],
        on_change: Callable[[], None],
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._backends = backends
        self._on_change = on_change
        # Backend id -> what its engine said (only ones that said something).
        self.found: dict[str, EngineCapacity] = {}
        self._due: dict[str, _Due] = {}

    async def run(self) -> None:
        while True:
            await self.sweep()
            await self._clock.sleep(TICK_S)

    async def sweep(self) -> None:
        """Asks every backend whose time has come; tells on_change when what they said
        changed."""
        now = self._clock.monotonic()
        current = {b.id: b for b in self._backends() if asked(b)}
        changed = False
        for bid in [k for k, d in self._due.items() if k not in current or d.url != current[k].url]:
            del self._due[bid]
            changed |= self.found.pop(bid, None) is not None
        due = [b for b in current.values() if b.id not in self._due or self._due[b.id].at <= now][
            :AT_ONCE
        ]
        said = await asyncio.gather(*(self._ask(b.url) for b in due))
        now = self._clock.monotonic()
        for b, capacity in zip(due, said, strict=True):
            entry = self._due.setdefault(b.id, _Due(b.url))
            if capacity is None:
                # No answer: it may be starting; what it said before still stands.
                entry.failures += 1
                entry.at = now + min(RETRY_S, 2.0 ** (entry.failures - 1))
                continue
            entry.failures = 0
            entry.at = now + REFRESH_S
            before = self.found.get(b.id)
            if capacity.known and capacity != before:
                self.found[b.id] = capacity
                changed = True
                log.info(
                    "static backend's engine said its cache",
                    extra={
                        "backend": b.id,
                        "cache_tokens": capacity.cache_tokens,
                        "block_size": capacity.block_size,
                    },
                )
            elif not capacity.known and before is not None:
                del self.found[b.id]
                changed = True
        if changed:
            self._on_change()

    async def _ask(self, url: str) -> EngineCapacity | None:
        """What the engine at url says (UNKNOWN: it answered but said nothing); None when
        nothing answered at all."""
        base = base_url(url)
        answered = False
        for path, engine in PATHS:
            try:
                status, body = await self._fetch(base + path)
            except (OSError, httpx.HTTPError):
                # Not reachable (or not in time): the other paths would wait the same.
                break
            answered = True
            capacity = capacity_of(engine, status, body)
            if capacity.known:
                return capacity
        return UNKNOWN if answered else None

    def get(self) -> Mapping[str, EngineCapacity]:
        return self.found


class HttpFetch:
    """Fetch over one shared client: GET without redirects, the body read up to MAX_BYTES
    (a larger one reads as status 413: no engine's document is that large), the whole answer
    within timeout_s (httpx's own timeouts are per read: a server dripping bytes would hold
    the sweep)."""

    def __init__(self, client: httpx.AsyncClient, timeout_s: float = TIMEOUT_S) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def __call__(self, url: str) -> tuple[int, bytes]:
        async with asyncio.timeout(self._timeout_s):
            return await self._get(url)

    async def _get(self, url: str) -> tuple[int, bytes]:
        async with self._client.stream("GET", url, timeout=self._timeout_s) as response:
            if response.status_code != 200:
                return response.status_code, b""
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BYTES:
                    return 413, b""
                chunks.append(chunk)
            return 200, b"".join(chunks)
