"""What prefix_aware believes of each member's cache, read from its policies at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.policies import PrefixAware
from gateway.routing import RoutingTable


class CacheEstimates(Collector):
    """llmpool_gateway_member_cache_tokens and llmpool_gateway_prefix_predictions_total, per
    model and member of the routes whose policy is prefix_aware (labels bounded by the table)."""

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        tokens = GaugeMetricFamily(
            "llmpool_gateway_member_cache_tokens",
            "The prefix cache prefix_aware believes a member has, in tokens: its engine's "
            "report, then learned from its answers (0: unbounded).",
            labels=["model", "backend"],
        )
        outcomes = CounterMetricFamily(
            "llmpool_gateway_prefix_predictions",
            "Requests prefix_aware expected to find their prefix cached, by what the answer "
            "showed (hit, miss), and surprise: a hit where a miss was expected.",
            labels=["model", "backend", "outcome"],
        )
        table = self._table
        for model in table.models():
            route = table.get(model)
            if route is None or not isinstance(route.policy, PrefixAware):
                continue
            policy = route.policy
            for member in route.candidates:
                mid = member.id
                tokens.add_metric([model, mid], float(policy.cache_tokens(mid)))
                seen = policy.sizer.outcomes.get(mid)
                if seen is not None:
                    outcomes.add_metric([model, mid, "hit"], float(seen.hits))
                    outcomes.add_metric([model, mid, "miss"], float(seen.misses))
                    outcomes.add_metric([model, mid, "surprise"], float(seen.surprises))
        yield tokens
        yield outcomes
