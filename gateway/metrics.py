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
            "Tokens reported by upstream usage, by kind (prompt or completion).",
            ["model", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "llmpool_gateway_upstream_retries",
            "Requests retried on another member after a failure before the first byte.",
            ["model"],
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
