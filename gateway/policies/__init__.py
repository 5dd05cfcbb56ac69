"""Routing policies: one signature, pick(candidates, ctx), built by a PolicyRegistry."""

from gateway.policies.base import ParamReader, PickContext, Policy, UnknownPolicyError
from gateway.policies.basic import LeastConnections, LeastInFlight, RoundRobin, WeightedRoundRobin
from gateway.policies.cost import Cost
from gateway.policies.prefix_aware import PrefixAware
from gateway.policies.queue_aware import QueueAware
from gateway.policies.registry import (
    BUILTIN_POLICIES,
    ENTRY_POINT_GROUP,
    PolicyPluginError,
    PolicyRegistry,
    load_plugin,
    validate_policy,
)
from gateway.policies.response_time import ResponseTime
from gateway.policies.session import Session

__all__ = [
    "BUILTIN_POLICIES",
    "ENTRY_POINT_GROUP",
    "Cost",
    "LeastConnections",
    "LeastInFlight",
    "ParamReader",
    "PickContext",
    "Policy",
    "PolicyPluginError",
    "PolicyRegistry",
    "PrefixAware",
    "QueueAware",
    "ResponseTime",
    "RoundRobin",
    "Session",
    "UnknownPolicyError",
    "WeightedRoundRobin",
    "load_plugin",
    "validate_policy",
]
