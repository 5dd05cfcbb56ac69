"""The gateway's Prometheus metrics, on a registry of its own built at start-up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN_MODEL = "unknown"
NO_BACKEND = "none"

# Seconds; LLM requests run from milliseconds (embeddings) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class GatewayMetrics:
    """Metric objects of one gateway. Label values come only from the routing table (bounded)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmpool_gateway_requests",
            "Requests answered, by model, backend member and HTTP status.",
            ["model", "backend", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "llmpool_gateway_request_duration_seconds",
            "Time from request received to last byte relayed.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmpool_gateway_time_to_first_token_seconds",
            "Time from request received to the first upstream byte of a stream.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "llmpool_gateway_in_flight_requests",
            "Requests being relayed now.",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "llmpool_gateway_tokens",
            "Tokens reported by upstream usage, by kind (prompt, completion, and cached: the "
            "prompt tokens read from a prompt cache).",
            ["model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "llmpool_gateway_cost_usd",
            "What requests cost by the serving member's prices (usage x price), US dollars.",
            ["model", "backend"],
            registry=r,
        )
        self.retries = Counter(
            "llmpool_gateway_upstream_retries",
            "Requests retried on another member after a failure before the first byte.",
            ["model"],
            registry=r,
        )
        self.cooldowns = Counter(
            "llmpool_gateway_member_cooldowns",
            "Times a member answered 429 or 503 with Retry-After and was left alone that long.",
            ["model"],
            registry=r,
        )
        self.ejections = Counter(
            "llmpool_gateway_member_ejections",
            "Times a member was ejected from this gateway's picks after failing (passive health).",
            ["model"],
            registry=r,
        )
        self.ejected = Gauge(
            "llmpool_gateway_members_ejected",
            "Members ejected or waiting for their probe on this gateway now.",
            registry=r,
        )
        self.cooling = Gauge(
            "llmpool_gateway_members_cooling",
            "Members cooling down after Retry-After on this gateway now.",
            registry=r,
        )
        self.ttfb_timeouts = Counter(
            "llmpool_gateway_ttfb_timeouts",
            "Tries that had no first byte within the pool's ttfb_timeout_s (counted as failed).",
            ["model"],
            registry=r,
        )
        self.retry_budget_exhausted = Counter(
            "llmpool_gateway_retry_budget_exhausted",
            "Failed tries not retried because retries were already at their budget.",
            ["model"],
            registry=r,
        )
        self.spilled = Counter(
            "llmpool_gateway_spilled_requests",
            "Requests a fallback pool served, by the pool asked for, the pool that served and why "
            "(no_member, failed: every member failed before the first byte, saturated: queued "
            "requests past spill_waiting, ttft_slo: every member forecast past ttft_slo_ms).",
            ["spilled_from", "model", "reason"],
            registry=r,
        )
        self.home_asks = Counter(
            "llmpool_gateway_home_asks",
            "Asks to the controller for a long new prompt prefix's home (prefix_aware with "
            "several gateways), by outcome (homed; none: the pool gives no homes; failed: an "
            "error or no answer in time, and asks pause a second; skipped: not asked, as the "
            "controller is away, asks are paused or too many are pending; ahead: not asked, "
            "as the pool's new prefixes do not recur: it took the home booked after the "
            "previous one).",
            ["outcome"],
            registry=r,
        )
        self.shared_sends = Counter(
            "llmpool_gateway_shared_sends",
            "Sends told between gateways as they happen (prefix_aware with several gateways, "
            "GatewayService.ShareSends), by direction (told: this gateway's, to the others; "
            "heard: the others', counted here as its own; dropped: heard but not counted, past "
            "the bound or for a pool or member this gateway does not route).",
            ["direction"],
            registry=r,
        )
        self.missing_credentials = Gauge(
            "llmpool_gateway_missing_credentials",
            "Credentials that members name and this gateway cannot find (those members are "
            "left out of its routing).",
            registry=r,
        )
        self.held = Gauge(
            "llmpool_gateway_requests_held",
            "Requests waiting on this gateway for a pool with no member to start one.",
            registry=r,
        )
        self.held_requests = Counter(
            "llmpool_gateway_held_requests",
            "Requests held for want of any member, by how the wait ended (served, timeout, "
            "full: refused as too many were held).",
            ["model", "outcome"],
            registry=r,
        )
        self.snapshot_version = Gauge(
            "llmpool_gateway_snapshot_version",
            "Version of the routing snapshot in use (0: none yet).",
            registry=r,
        )
        self.controller_connected = Gauge(
            "llmpool_gateway_controller_connected",
            "1 while the routing stream from the controller is up.",
            registry=r,
        )
        self.split_requests = Counter(
            "llmpool_gateway_split_requests",
            "Requests an A/B split sent to one of its arms, by split model and arm (target pool).",
            ["model", "arm"],
            registry=r,
        )
        self.rule_matches = Counter(
            "llmpool_gateway_rule_matches",
            "Requests a content rule sent to another pool, by model and target pool.",
            ["model", "target"],
            registry=r,
        )
        self.api_keys = Gauge(
            "llmpool_gateway_api_keys",
            "API keys in the table this gateway checks requests against.",
            registry=r,
        )
        self.auth_failures = Counter(
            "llmpool_gateway_auth_failures",
            "Requests refused for their API key (missing, invalid, expired) or signature.",
            ["reason"],
            registry=r,
        )
        self.limited = Counter(
            "llmpool_gateway_limited_requests",
            "Requests refused with 429 by a limit or budget, by the kind of subject (key, "
            "tenant, pool) and what ran out (requests, tokens, budget).",
            ["subject", "limit"],
            registry=r,
        )
        self.queued = Counter(
            "llmpool_gateway_queued_requests",
            "Requests that waited in a saturated pool's fair queue, by pool and how the wait "
            "ended (admitted, shed).",
            ["model", "outcome"],
            registry=r,
        )
        self.waiting = Gauge(
            "llmpool_gateway_requests_queued",
            "Requests waiting now in saturated pools' fair queues.",
            registry=r,
        )
        # Children per (model, arm or target): the pools of the config bound them.
        self._hops: dict[tuple[str, str, str], Counter] = {}
        # Label children per model, so the hot path does no .labels() lookup per request.
        # Bounded like the children themselves: by the models the routing table has held.
        self._models: dict[str, ModelMetrics] = {}

    def hop(self, kind: str, model: str, target: str) -> Counter:
        """The split_requests (kind "split") or rule_matches (kind "rule") child."""
        key = (kind, model, target)
        child = self._hops.get(key)
        if child is None:
            family = self.split_requests if kind == "split" else self.rule_matches
            child = self._hops[key] = family.labels(model, target)
        return child

    def model(self, model: str) -> ModelMetrics:
        """The label children of one model (made on first use, then reused)."""
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = ModelMetrics(self, model)
        return found


class ModelMetrics:
    """The children of GatewayMetrics for one model label value, looked up once."""

    __slots__ = (
        "_costs",
        "_model",
        "_parent",
        "_requests",
        "cached_tokens",
        "completion_tokens",
        "duration",
        "in_flight",
        "prompt_tokens",
        "retries",
        "ttft",
    )

    def __init__(self, parent: GatewayMetrics, model: str) -> None:
        self._parent = parent
        self._model = model
        self.duration = parent.duration.labels(model)
        self.ttft = parent.ttft.labels(model)
        self.in_flight = parent.in_flight.labels(model)
        self.retries = parent.retries.labels(model)
        self.prompt_tokens = parent.tokens.labels(model, "prompt")
        self.completion_tokens = parent.tokens.labels(model, "completion")
        self.cached_tokens = parent.tokens.labels(model, "cached")
        self._requests: dict[tuple[str, int], Counter] = {}
        self._costs: dict[str, Counter] = {}

    def cost(self, backend: str) -> Counter:
        """The cost counter child for backend (looked up once per member)."""
        child = self._costs.get(backend)
        if child is None:
            child = self._costs[backend] = self._parent.cost.labels(self._model, backend)
        return child

    def requests(self, backend: str, status: int) -> Counter:
        """The requests counter child for (backend, status)."""
        key = (backend, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self._parent.requests.labels(
                self._model, backend, str(status)
            )
        return child
