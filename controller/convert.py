"""Conversions between protobuf messages and domain types, field masks included."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from google.protobuf.field_mask_pb2 import FieldMask

from llmpool.config import Config, RuleConfig, TemplateConfig
from llmpool.errors import InvalidArgumentError
from llmpool.v1 import types_pb2

from .model import BackendSpec, PoolSpec, RouteRule, SplitArm, Template

POOL_FIELDS = (
    "policy",
    "policy_params",
    "replicas",
    "template",
    "description",
    "rules",
    "splits",
    "split_header",
)
TEMPLATE_FIELDS = (
    "engine",
    "command",
    "env",
    "health_path",
    "metrics_path",
    "ready_timeout_s",
    "served_model",
    "gpus",
    "cpu_slots",
    "weights",
    "args",
    "input_cost_per_mtok",
    "output_cost_per_mtok",
)
BACKEND_FIELDS = (
    "pool",
    "url",
    "weight",
    "enabled",
    "kind",
    "zone",
    "upstream_model",
    "labels",
    "input_cost_per_mtok",
    "output_cost_per_mtok",
)


def template_from_proto(msg: types_pb2.ReplicaTemplate) -> Template:
    # proto3 cannot tell unset from zero: fill the defaults a person would expect.
    return Template(
        engine=msg.engine or "sim",
        command=tuple(msg.command),
        env=dict(msg.env),
        health_path=msg.health_path,
        metrics_path=msg.metrics_path,
        ready_timeout_s=msg.ready_timeout_s or 60.0,
        served_model=msg.served_model,
        gpus=msg.gpus,
        cpu_slots=msg.cpu_slots,
        weights=msg.weights,
        args=tuple(msg.args),
        input_cost_per_mtok=msg.input_cost_per_mtok,
        output_cost_per_mtok=msg.output_cost_per_mtok,
    )


def template_to_proto(t: Template) -> types_pb2.ReplicaTemplate:
    return types_pb2.ReplicaTemplate(
        engine=t.engine,
        command=list(t.command),
        env=t.env,
        health_path=t.health_path,
        metrics_path=t.metrics_path,
        ready_timeout_s=t.ready_timeout_s,
        served_model=t.served_model,
        gpus=t.gpus,
        cpu_slots=t.cpu_slots,
        weights=t.weights,
        args=list(t.args),
        input_cost_per_mtok=t.input_cost_per_mtok,
        output_cost_per_mtok=t.output_cost_per_mtok,
    )


def template_from_config(t: TemplateConfig) -> Template:
    return Template(
        engine=t.engine,
        command=tuple(t.command),
        env=dict(t.env),
        health_path=t.health_path,
        metrics_path=t.metrics_path,
        ready_timeout_s=t.ready_timeout_s,
        served_model=t.served_model,
        gpus=t.gpus,
        cpu_slots=t.cpu_slots,
        weights=t.weights,
        args=tuple(t.args),
        input_cost_per_mtok=t.input_cost_per_mtok,
        output_cost_per_mtok=t.output_cost_per_mtok,
    )


def rule_from_proto(msg: types_pb2.RouteRule) -> RouteRule:
    # The dataclass mirrors the message field for field.
    return RouteRule(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(RouteRule)})


def rule_to_proto(r: RouteRule) -> types_pb2.RouteRule:
    return types_pb2.RouteRule(**dataclasses.asdict(r))


def arm_to_proto(a: SplitArm) -> types_pb2.SplitArm:
    return types_pb2.SplitArm(target=a.target, weight=a.weight)


def rule_from_config(r: RuleConfig) -> RouteRule:
    return RouteRule(**r.model_dump())


def pool_from_proto(msg: types_pb2.Pool) -> PoolSpec:
    return PoolSpec(
        name=msg.name,
        policy=msg.policy or "round_robin",
        policy_params=dict(msg.policy_params),
        replicas=msg.replicas,
        template=template_from_proto(msg.template) if msg.HasField("template") else None,
        description=msg.description,
        rules=tuple(rule_from_proto(r) for r in msg.rules),
        splits=tuple(SplitArm(a.target, a.weight) for a in msg.splits),
        split_header=msg.split_header,
    )


def pool_to_proto(p: PoolSpec) -> types_pb2.Pool:
    msg = types_pb2.Pool(
        name=p.name,
        policy=p.policy,
        policy_params=p.policy_params,
        replicas=p.replicas,
        description=p.description,
        rules=[rule_to_proto(r) for r in p.rules],
        splits=[arm_to_proto(a) for a in p.splits],
        split_header=p.split_header,
    )
    if p.template is not None:
        msg.template.CopyFrom(template_to_proto(p.template))
    return msg


def backend_from_proto(msg: types_pb2.Backend) -> BackendSpec:
    return BackendSpec(
        id=msg.id,
        pool=msg.pool,
        url=msg.url,
        weight=msg.weight,
        enabled=msg.enabled,
        kind=msg.kind or "openai",
        zone=msg.zone,
        upstream_model=msg.upstream_model,
        labels=dict(msg.labels),
        input_cost_per_mtok=msg.input_cost_per_mtok,
        output_cost_per_mtok=msg.output_cost_per_mtok,
    )


def backend_to_proto(b: BackendSpec) -> types_pb2.Backend:
    return types_pb2.Backend(
        id=b.id,
        pool=b.pool,
        url=b.url,
        weight=b.weight,
        enabled=b.enabled,
        kind=b.kind,
        zone=b.zone,
        upstream_model=b.upstream_model,
        labels=b.labels,
        input_cost_per_mtok=b.input_cost_per_mtok,
        output_cost_per_mtok=b.output_cost_per_mtok,
    )


def specs_from_config(config: Config) -> tuple[list[PoolSpec], list[BackendSpec]]:
    pools = [
        PoolSpec(
            name=p.name,
            policy=p.policy,
            policy_params=dict(p.policy_params),
            replicas=p.replicas,
            template=template_from_config(p.template) if p.template else None,
            description=p.description,
            rules=tuple(rule_from_config(r) for r in p.rules),
            splits=tuple(SplitArm(a.target, a.weight) for a in p.splits),
            split_header=p.split_header,
        )
        for p in config.pools
    ]
    backends = [
        BackendSpec(
            id=b.id,
            pool=b.pool,
            url=b.url,
            weight=b.weight,
            enabled=b.enabled,
            kind=b.kind,
            zone=b.zone,
            upstream_model=b.upstream_model,
            labels=dict(b.labels),
            input_cost_per_mtok=b.input_cost_per_mtok,
            output_cost_per_mtok=b.output_cost_per_mtok,
        )
        for b in config.backends()
    ]
    return pools, backends


def _set_fields(msg: types_pb2.Pool | types_pb2.Backend | types_pb2.ReplicaTemplate) -> set[str]:
    return {fd.name for fd, _ in msg.ListFields()}


def mask_paths(
    mask: FieldMask, msg: types_pb2.Pool | types_pb2.Backend, allowed: Iterable[str], what: str
) -> set[str]:
    """The field paths an update touches: the mask, or every set (non-default) field when empty.
    Paths under template (template.engine) are kept as given."""
    allowed_set = set(allowed)
    if not mask.paths:
        paths = _set_fields(msg) & allowed_set
        if isinstance(msg, types_pb2.Pool) and "template" in paths:
            paths.discard("template")
            paths |= {f"template.{name}" for name in _set_fields(msg.template)}
        return paths
    paths = set()
    for path in mask.paths:
        head, _, sub = path.partition(".")
        ok = head in allowed_set and (not sub or (head == "template" and sub in TEMPLATE_FIELDS))
        if not ok:
            known = ", ".join(sorted(allowed_set))
            raise InvalidArgumentError(
                f"update_mask path {path!r} cannot be changed on a {what}: use one of {known}"
            )
        paths.add(path)
    return paths
