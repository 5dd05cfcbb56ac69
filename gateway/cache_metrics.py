"""What prefix_aware believes of each member's cache, read from its policies at scrape time
(and at usage reports: learned_caches)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.policies import PrefixAware
from gateway.policies.cache_estimate import VERDICTS_TO_REPORT
from gateway.policies.missed import TO_REPORT
from gateway.policies.prefix_aware import CHARS_PER_TOKEN
from gateway.policies.shared_sends import TO_REPORT as SENT_TO_REPORT
from gateway.routing import RoutingTable

T = TypeVar("T")


def learned_caches(table: RoutingTable) -> dict[str, tuple[int, float]]:
    """Per member, what this gateway's prefix_aware routes learned there: the smallest cache
    (tokens; 0: none) and a prefill speed (seconds a token; 0: none), for usage reports."""
    found: dict[str, tuple[int, float]] = {}
    for model in table.models():
        route = table.get(model)
        if route is None or not isinstance(route.policy, PrefixAware):
            continue
        learned = route.policy.learned(m.id for m in route.candidates)
        for mid, (tokens, speed) in learned.items():
            seen, known = found.get(mid, (0, 0.0))
            if tokens and (not seen or tokens < seen):
                seen = tokens
            found[mid] = (seen, known or speed)
    return found


def missed_prefixes(table: RoutingTable) -> dict[str, list[int]]:
    """Per member, the prompt prefixes this gateway's prefix_aware routes found it no longer
    held since the last call (drained), for usage reports: at most TO_REPORT a member, the
    routes' together (the controller takes no more from a report's line)."""
    return _per_member(table, PrefixAware.drain_missed, TO_REPORT)


def urgent(table: RoutingTable) -> bool:
    """Whether a prefix_aware route has news the controller should hear before the next usage
    report is due (PrefixAware.urgent)."""
    for model in table.models():
        route = table.get(model)
        if route is not None and isinstance(route.policy, PrefixAware) and route.policy.urgent():
            return True
    return False


def verdicts(table: RoutingTable) -> dict[str, list[tuple[int, bool]]]:
    """Per member, the verdicts on this gateway's prefix_aware predictions since the last call
    (drained): how deep in the member's LRU each prompt's held part sat, tokens, and whether it
    was found cached, for usage reports; at most VERDICTS_TO_REPORT a member, the routes'
    together."""
    return _per_member(table, PrefixAware.drain_verdicts, VERDICTS_TO_REPORT)


def _per_member(
    table: RoutingTable, drain: Callable[[PrefixAware], dict[str, list[T]]], most: int
) -> dict[str, list[T]]:
    """What `drain` takes from each prefix_aware route, per member, the routes' together, at
    most `most` a member."""
    found: dict[str, list[T]] = {}
    for model in table.models():
        route = table.get(model)
        if route is None or not isinstance(route.policy, PrefixAware):
            continue
        for mid, items in drain(route.policy).items():
            mine = found.setdefault(mid, [])
            mine.extend(items[: most - len(mine)])
    return found


def sent_prefixes(table: RoutingTable) -> dict[str, dict[int, int]]:
    """Per member, the prompt prefixes this gateway's prefix_aware routes sent it since the
    last call (drained), each with its prompt's tokens, for usage reports: at most
    shared_sends.TO_REPORT a member, the routes' together."""
    found: dict[str, dict[int, int]] = {}
    for model in table.models():
        route = table.get(model)
        if route is None or not isinstance(route.policy, PrefixAware):
            continue
        for mid, sent in route.policy.drain_sent().items():
            mine = found.setdefault(mid, {})
            for prefix, tokens in sent.items():
                if len(mine) >= SENT_TO_REPORT:
                    break
                mine[prefix] = tokens
    return found


class CacheEstimates(Collector):
    """llmpool_gateway_member_cache_tokens, llmpool_gateway_member_kv_room_tokens and
    llmpool_gateway_prefix_predictions_total, per model and member of the routes whose policy is
    prefix_aware (labels bounded by the table)."""

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        speed = GaugeMetricFamily(
            "llmpool_gateway_prefill_seconds_per_token",
            "The prefill speed prefix_aware learned from its answers, seconds a prompt token "
            "takes (0: not learned yet; engines' cached-token reports need none).",
            labels=["model"],
        )
        tokens = GaugeMetricFamily(
            "llmpool_gateway_member_cache_tokens",
            "The prefix cache prefix_aware believes a member has, in tokens: its engine's "
            "report, then learned from its answers (0: unbounded).",
            labels=["model", "backend"],
        )
        others = GaugeMetricFamily(
            "llmpool_gateway_member_others_tokens",
            "Tokens of the prompts other gateways sent a member lately (the controller's "
            "union of their reports), which prefix_aware counts in its cache besides its own.",
            labels=["model", "backend"],
        )
        room = GaugeMetricFamily(
            "llmpool_gateway_member_kv_room_tokens",
            "Prompt tokens prefix_aware saw a member unable to run at once: a prompt waited "
            "for KV room beside this gateway's requests running there (0: none lately).",
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
            speed.add_metric([model], policy.sizer.token_s())
            foreign = policy.sends.foreign
            unit_tokens = policy.index.block_chars / CHARS_PER_TOKEN
            for member in route.candidates:
                mid = member.id
                tokens.add_metric([model, mid], float(policy.cache_tokens(mid)))
                others.add_metric([model, mid], foreign.get(mid, 0) * unit_tokens)
                room.add_metric([model, mid], float(policy.room_tokens(mid)))
                seen = policy.sizer.outcomes.get(mid)
                if seen is not None:
                    outcomes.add_metric([model, mid, "hit"], float(seen.hits))
                    outcomes.add_metric([model, mid, "miss"], float(seen.misses))
                    outcomes.add_metric([model, mid, "surprise"], float(seen.surprises))
        yield tokens
        yield others
        yield room
        yield outcomes
        yield speed
