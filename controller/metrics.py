"""Prometheus metrics of the controller, on its own CollectorRegistry built at start-up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.agents = Gauge(
            "llmpool_controller_agents",
            "Agents known since start, by connection state",
            ["state"],
            registry=r,
        )
        self.replicas = Gauge(
            "llmpool_controller_replicas",
            "Managed replicas by pool and reported state",
            ["pool", "state"],
            registry=r,
        )
        self.snapshot_version = Gauge(
            "llmpool_controller_snapshot_version",
            "Version of the latest routing snapshot",
            registry=r,
        )
        self.snapshot_push_seconds = Histogram(
            "llmpool_controller_snapshot_push_seconds",
            "Time from a state change to its snapshot being queued to every gateway",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.gateways_connected = Gauge(
            "llmpool_controller_gateways_connected",
            "Gateways watching routing snapshots",
            registry=r,
        )
        self.reconcile_decisions = Counter(
            "llmpool_controller_reconcile_decisions_total",
            "Reconciler decisions applied",
            ["action"],
            registry=r,
        )
        self.rpc_refused = Counter(
            "llmpool_controller_rpc_refused_total",
            "Calls refused by authentication or RBAC",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "llmpool_controller_requests_total",
            "Requests gateways reported, by model",
            ["model"],
            registry=r,
        )
        self.request_errors = Counter(
            "llmpool_controller_request_errors_total",
            "Failed requests gateways reported",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "llmpool_controller_tokens_total",
            "Tokens gateways reported, by model and type",
            ["model", "type"],
            registry=r,
        )
        self.autoscale_events = Counter(
            "llmpool_controller_autoscale_events_total",
            "Replica counts the autoscaler changed, by pool and direction (up, down)",
            ["pool", "direction"],
            registry=r,
        )
        self.autoscale_recommended = Gauge(
            "llmpool_controller_autoscale_recommended_replicas",
            "Replicas an autoscaled pool's load asks for now, before windows and bounds",
            ["pool"],
            registry=r,
        )
        self.pool_desired_replicas = Gauge(
            "llmpool_controller_pool_desired_replicas",
            "Replicas each pool asks for now (set by people or the autoscaler)",
            ["pool"],
            registry=r,
        )
        self.replica_cost = Counter(
            "llmpool_pool_replica_cost_usd",
            "What a pool's replicas cost by their template's hourly_cost_usd while running, US "
            "dollars",
            ["pool"],
            registry=r,
        )
        self.cost = Counter(
            "llmpool_controller_cost_usd",
            "What requests cost by their members' prices, as gateways report it, US dollars",
            ["pool", "backend"],
            registry=r,
        )
