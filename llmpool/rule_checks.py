"""Checks of content rules and A/B splits, shared by config and admin: regexes, targets, cycles."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from llmpool.linear_regex import Pattern, RegexError, compile_linear

# Pools a request may pass through by rules and splits before members are picked; the gateway
# stops there, so the controller refuses longer chains instead of letting them end silently.
MAX_ROUTE_HOPS = 4
HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")


class RouteGraphError(ValueError):
    """Rules or splits that cannot be routed; the message names the pools involved."""


def check_route_graph(edges: Mapping[str, Iterable[str]]) -> None:
    """edges: every pool -> the pools its rules and split arms send to. Raises RouteGraphError
    for an unknown or self target, a cycle, or a chain longer than MAX_ROUTE_HOPS."""
    graph = {pool: sorted(set(targets)) for pool, targets in edges.items()}
    for pool, targets in sorted(graph.items()):
        for target in targets:
            if target == pool:
                raise RouteGraphError(f"pool {pool!r} routes to itself")
            if target not in graph:
                raise RouteGraphError(
                    f"pool {pool!r} routes to {target!r}, which is not a pool: create it first"
                )
    depth: dict[str, int] = {}
    for pool in sorted(graph):
        _longest(pool, graph, depth, [])
    deepest = max(depth.items(), key=lambda kv: kv[1], default=("", 0))
    if deepest[1] > MAX_ROUTE_HOPS:
        raise RouteGraphError(
            f"pool {deepest[0]!r} starts a chain of {deepest[1]} rule/split hops; "
            f"gateways follow at most {MAX_ROUTE_HOPS}"
        )


def _longest(
    pool: str, graph: Mapping[str, list[str]], depth: dict[str, int], path: list[str]
) -> int:
    """Hops of the longest chain from pool (memoised); raises on a cycle through path."""
    if pool in depth:
        return depth[pool]
    if pool in path:
        cycle = " -> ".join([*path[path.index(pool) :], pool])
        raise RouteGraphError(f"rules/splits form a cycle: {cycle}")
    path.append(pool)
    best = 0
    for target in graph[pool]:
        best = max(best, 1 + _longest(target, graph, depth, path))
    path.pop()
    depth[pool] = best
    return best


def check_regex(what: str, pattern: str) -> Pattern | None:
    """Compiles a rule's regex (None for empty) with RE2; RouteGraphError says what is wrong."""
    if not pattern:
        return None
    try:
        return compile_linear(pattern)
    except RegexError as exc:
        raise RouteGraphError(f"{what} {pattern[:100]!r} is not a valid regex: {exc}") from None


class RuleLike(Protocol):
    """The fields of a content rule, as the config and the controller's model both hold them."""

    @property
    def target(self) -> str: ...
    @property
    def min_prompt_chars(self) -> int: ...
    @property
    def max_prompt_chars(self) -> int: ...
    @property
    def prompt_regex(self) -> str: ...
    @property
    def header(self) -> str: ...
    @property
    def header_regex(self) -> str: ...
    @property
    def metadata_key(self) -> str: ...
    @property
    def metadata_regex(self) -> str: ...


class ArmLike(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def weight(self) -> int: ...


def check_rule(rule: RuleLike) -> None:
    """One rule on its own: regexes compile, bounds and names make sense."""
    check_regex("prompt_regex", rule.prompt_regex)
    check_regex("header_regex", rule.header_regex)
    check_regex("metadata_regex", rule.metadata_regex)
    if rule.min_prompt_chars < 0 or rule.max_prompt_chars < 0:
        raise RouteGraphError("min_prompt_chars and max_prompt_chars must be >= 0")
    if rule.max_prompt_chars and rule.max_prompt_chars < rule.min_prompt_chars:
        raise RouteGraphError("max_prompt_chars is below min_prompt_chars: no prompt can match")
    if rule.header and not HEADER_RE.match(rule.header):
        raise RouteGraphError(f"header {rule.header!r} is not a valid HTTP header name")
    if rule.header_regex and not rule.header:
        raise RouteGraphError("header_regex needs header (the name of the header to match)")
    if rule.metadata_regex and not rule.metadata_key:
        raise RouteGraphError("metadata_regex needs metadata_key (the key to match)")


def check_splits(arms: Sequence[ArmLike], split_header: str) -> None:
    """A split's arms: weights, distinct targets, and the stickiness header's name."""
    if any(arm.weight < 0 for arm in arms):
        raise RouteGraphError("split weights must be >= 0")
    if arms and not any(arm.weight for arm in arms):
        raise RouteGraphError("every split arm has weight 0: give at least one arm traffic")
    if len({arm.target for arm in arms}) != len(arms):
        raise RouteGraphError("a split names the same target twice: merge the arms")
    if split_header and not HEADER_RE.match(split_header):
        raise RouteGraphError(f"split_header {split_header!r} is not a valid HTTP header name")
