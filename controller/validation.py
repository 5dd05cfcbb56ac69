"""Validation of admin input (names, URLs, policies, engines) with actionable messages."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from gateway.policies.registry import BUILTIN_POLICIES, PolicyPluginError, validate_policy
from gateway.redaction import parse_profile
from llmpool.bounds import check_bounds
from llmpool.config import NAME_RE, credential_name_problem
from llmpool.engines import template_problem
from llmpool.errors import FailedPreconditionError, InvalidArgumentError
from llmpool.rule_checks import RouteGraphError, check_route_graph, check_rule, check_splits
from llmpool.specs import autoscale_problem

from .model import BackendSpec, PoolSpec, Template

# The gateway's built-in routing policies; installed `llmpool.policies` entry points count too.
KNOWN_POLICIES: tuple[str, ...] = tuple(sorted(cls.name for cls in BUILTIN_POLICIES))
KNOWN_BACKEND_KINDS: tuple[str, ...] = ("openai", "azure", "anthropic")


def check_name(what: str, value: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{what} is required")
    if not NAME_RE.match(value):
        raise InvalidArgumentError(
            f"{what} {value!r} is not valid: use 1-128 letters, digits and . _ : / - "
            "(starting with a letter or digit)"
        )
    return value


def check_url(value: str) -> str:
    """A base URL like http://127.0.0.1:8001 (no trailing slash kept); the admin API checks its
    address too (controller/backend_urls.py)."""
    parts = urlsplit(value)
    if "?" in value or "#" in value:
        raise InvalidArgumentError(f"url {value[:200]!r}: a backend URL has no query or fragment")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgumentError(
            f"url {value!r} is not valid: give a base URL like http://127.0.0.1:8001"
        )
    try:
        _ = parts.port
    except ValueError:
        raise InvalidArgumentError(f"url {value!r} has an invalid port") from None
    return value.rstrip("/")


def check_policy(
    value: str, params: Mapping[str, str] | None = None, extra: Collection[str] = ()
) -> str:
    """The gateway's rules (gateway.policies.validate_policy): names from `extra` (plugins that
    only gateways load, --extra-policies) are accepted with any params."""
    try:
        validate_policy(value, params or {}, extra_names=extra)
    except (ValueError, PolicyPluginError) as exc:
        raise InvalidArgumentError(str(exc)) from None
    return value


def check_template(pool: str, template: Template) -> Template:
    problem = template_problem(template.engine, template.command, template.weights, template.args)
    if problem is not None:
        raise InvalidArgumentError(f"pool {pool!r}: {problem}")
    if not template.ready_timeout_s > 0:
        raise InvalidArgumentError(f"pool {pool!r}: template.ready_timeout_s must be > 0")
    if template.input_cost_per_mtok < 0 or template.output_cost_per_mtok < 0:
        raise InvalidArgumentError(f"pool {pool!r}: template prices must be >= 0")
    return template


def check_pool(pool: PoolSpec, extra_policies: Collection[str] = ()) -> PoolSpec:
    check_name("pool name", pool.name)
    check_bounds(pool, f"pool {pool.name!r}")
    check_policy(pool.policy, pool.policy_params, extra_policies)
    if not pool.ttfb_timeout_s > 0 or not pool.eject_base_s > 0:
        raise InvalidArgumentError(
            f"pool {pool.name!r}: ttfb_timeout_s and eject_base_s must be > 0 "
            "(0 or unset: the defaults)"
        )
    if pool.template is not None:
        check_template(pool.name, pool.template)
    if pool.tenant:
        check_name(f"pool {pool.name!r}: tenant", pool.tenant)
    if pool.redaction:
        try:
            parse_profile(pool.redaction)
        except ValueError as exc:
            raise InvalidArgumentError(f"pool {pool.name!r}: redaction: {exc}") from None
    if pool.ttft_slo_ms < 0:
        raise InvalidArgumentError(f"pool {pool.name!r}: ttft_slo_ms must be >= 0")
    if pool.autoscale is not None:
        problem = autoscale_problem(pool.autoscale, pool.ttft_slo_ms, pool.template is not None)
        if problem is not None:
            raise InvalidArgumentError(f"pool {pool.name!r}: {problem}")
    if pool.replicas > 0 and pool.template is None:
        raise InvalidArgumentError(
            f"pool {pool.name!r} asks for {pool.replicas} replicas but has no template: "
            "set pool.template (engine, command) first"
        )
    return pool


def check_backend(backend: BackendSpec) -> BackendSpec:
    check_name("backend id", backend.id)
    check_name("backend pool", backend.pool)
    check_bounds(backend, f"backend {backend.id!r}")
    check_url(backend.url)
    if backend.tenant:
        check_name(f"backend {backend.id!r}: tenant", backend.tenant)
    problem = credential_name_problem(backend.credential)
    if problem:
        raise InvalidArgumentError(f"backend {backend.id!r}: {problem}")
    if backend.kind not in KNOWN_BACKEND_KINDS:
        raise InvalidArgumentError(
            f"backend {backend.id!r}: unknown kind {backend.kind!r}: "
            f"known kinds are {', '.join(KNOWN_BACKEND_KINDS)}"
        )
    if backend.weight < 0:
        raise InvalidArgumentError(f"backend {backend.id!r}: weight must be >= 0")
    if backend.input_cost_per_mtok < 0 or backend.output_cost_per_mtok < 0:
        raise InvalidArgumentError(f"backend {backend.id!r}: prices must be >= 0")
    return backend


def check_pool_routes(pool: PoolSpec, pools: Mapping[str, PoolSpec]) -> PoolSpec:
    """pool's rules and split on their own, then the graph of every pool with pool in it
    (replacing its stored self): targets exist, no cycles, chains short enough."""
    for i, rule in enumerate(pool.rules):
        check_name(f"pool {pool.name!r}: rules[{i}].target", rule.target)
    for i, arm in enumerate(pool.splits):
        check_name(f"pool {pool.name!r}: splits[{i}].target", arm.target)
    for i, name in enumerate(pool.fallbacks):
        check_name(f"pool {pool.name!r}: fallbacks[{i}]", name)
    if len(set(pool.fallbacks)) != len(pool.fallbacks):
        raise InvalidArgumentError(f"pool {pool.name!r}: fallbacks lists a pool twice")
    try:
        for i, rule in enumerate(pool.rules):
            try:
                check_rule(rule)
            except RouteGraphError as exc:
                raise RouteGraphError(f"rules[{i}]: {exc}") from None
        check_splits(pool.splits, pool.split_header)
        graph = {name: p.route_targets() for name, p in pools.items()}
        graph[pool.name] = pool.route_targets()
        check_route_graph(graph)
    except RouteGraphError as exc:
        raise InvalidArgumentError(f"pool {pool.name!r}: {exc}") from None
    return pool


def check_not_routed_to(name: str, pools: Mapping[str, PoolSpec]) -> None:
    """A pool that other pools' rules or splits send to cannot go away under them."""
    users = sorted(p.name for p in pools.values() if p.name != name and name in p.route_targets())
    if users:
        raise FailedPreconditionError(
            f"pool {name!r} is a rule, split or fallback target of "
            f"{', '.join(map(repr, users))}: remove it from them first (UpdatePool)"
        )
