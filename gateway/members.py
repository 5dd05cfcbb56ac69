"""Pool members as the gateway routes to them: built once per snapshot, URLs precomputed."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmpool.addr import base_url
from llmpool.protoconv import from_proto
from llmpool.v1 import gateway_pb2


@dataclass(frozen=True, slots=True)
class Member:
    """One place a request for a model can go, with everything the hot path needs ready."""

    id: str
    url: str
    weight: int
    healthy: bool
    draining: bool
    zone: str
    kind: str
    # Model name to send upstream when it differs from the client's; None keeps the body as is.
    upstream_model: str | None
    running: float
    waiting: float
    kv_usage: float
    in_flight: float
    latency_ms: float
    chat_url: str
    completions_url: str
    embeddings_url: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # US dollars per million tokens; 0 when unknown.
    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
    # 0..1 as the engine reports it; negative when it does not say.
    prefix_cache_hit_rate: float = -1.0
    # The API key's name (gateway/credentials.py resolves it) and Azure's api-version.
    credential: str = ""
    api_version: str = ""
    cached_input_cost_per_mtok: float = 0.0
    # A static backend, not a replica an agent runs: the pool's redaction applies to it.
    backend: bool = False
    # The engine's KV cache in tokens, tokens per block, requests at once; 0: unknown.
    cache_tokens: int = 0
    cache_block_size: int = 0
    max_running: int = 0
    # The cache gateways learned it has (lower median), tokens, and the prefill speed gateways
    # learned there, seconds a token; 0: none.
    learned_cache_tokens: int = 0
    learned_prefill_s_per_token: float = 0.0
    # Prompt prefixes (first-block hashes) gateways found it no longer held, latest last.
    missed_prefixes: tuple[int, ...] = ()
    # Prompt prefixes gateways sent it within the last 30 s, latest last, the tokens of the
    # prompt each came with and how many gateways sent it (sent_prefix_tokens[i] and
    # sent_prefix_senders[i] for sent_prefixes[i]).
    sent_prefixes: tuple[int, ...] = ()
    sent_prefix_tokens: tuple[int, ...] = ()
    sent_prefix_senders: tuple[int, ...] = ()
    # Prompt prefixes whose home it is: with several gateways, every one sends them here
    # (controller/prefix_homes.py).
    home_prefixes: tuple[int, ...] = ()

    @property
    def priced(self) -> bool:
        return bool(self.input_cost_per_mtok or self.output_cost_per_mtok)

    def cost_usd(self, prompt: int, cached: int, completion: int) -> float:
        """What a request with this usage cost here, US dollars (0 for a member without prices);
        cached prompt tokens at their own price when it has one."""
        cached_price = self.cached_input_cost_per_mtok or self.input_cost_per_mtok
        fresh = max(prompt - cached, 0)
        return (
            fresh * self.input_cost_per_mtok
            + min(cached, prompt) * cached_price
            + completion * self.output_cost_per_mtok
        ) / 1e6

    @property
    def routable(self) -> bool:
        return self.healthy and not self.draining

    def endpoint_url(self, path: str) -> str:
        """The full upstream URL for an API path such as /v1/chat/completions."""
        if path == "/v1/chat/completions":
            return self.chat_url
        if path == "/v1/completions":
            return self.completions_url
        if path == "/v1/embeddings":
            return self.embeddings_url
        return base_url(self.url) + path


def member_from_proto(msg: gateway_pb2.Member, model: str) -> Member:
    """Every field of the message by name (llmpool.protoconv), plus what the hot path would
    otherwise work out per request."""
    base = base_url(msg.url)
    upstream = msg.upstream_model if msg.upstream_model and msg.upstream_model != model else None
    return from_proto(
        Member,
        msg,
        zeros=True,
        upstream_model=upstream,
        # A member that does not say speaks OpenAI's API (engines, OpenAI-compatible servers).
        kind=msg.kind or "openai",
        chat_url=base + "/v1/chat/completions",
        completions_url=base + "/v1/completions",
        embeddings_url=base + "/v1/embeddings",
    )


def idle_member(member_id: str, url: str = "http://127.0.0.1:1", **fields: Any) -> Member:
    """A healthy member with no load, as a snapshot would give it, with fields replaced: for
    tests, benchmarks and policy plugin authors."""
    msg = gateway_pb2.Member(
        id=member_id, url=url, weight=1, healthy=True, kind="openai", kv_usage=-1.0,
        prefix_cache_hit_rate=-1.0,
    )  # fmt: skip
    return dataclasses.replace(member_from_proto(msg, ""), **fields)
