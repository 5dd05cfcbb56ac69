"""Conversions between protobuf messages and domain types, field masks included."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.field_mask_pb2 import FieldMask

from llmpool.config import Config, TemplateConfig
from llmpool.errors import InvalidArgumentError
from llmpool.v1 import types_pb2

from .model import BackendSpec, PoolSpec, Template

POOL_FIELDS = ("policy", "policy_params", "replicas", "template", "description")
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
)
BACKEND_FIELDS = ("pool", "url", "weight", "enabled", "kind", "zone", "upstream_model", "labels")


def template_from_proto(msg: types_pb2.ReplicaTemplate) -> Template:
    # proto3 cannot tell unset from zero: fill the defaults a person would expect.
    return Template(
        engine=msg.engine or "sim",
        command=tuple(msg.command),
        env=dict(msg.env),
        health_path=msg.health_path or "/health",
        metrics_path=msg.metrics_path,
        ready_timeout_s=msg.ready_timeout_s or 60.0,
        served_model=msg.served_model,
        gpus=msg.gpus,
        cpu_slots=msg.cpu_slots,
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
    )


def pool_from_proto(msg: types_pb2.Pool) -> PoolSpec:
    return PoolSpec(
        name=msg.name,
        policy=msg.policy or "round_robin",
        policy_params=dict(msg.policy_params),
        replicas=msg.replicas,
        template=template_from_proto(msg.template) if msg.HasField("template") else None,
        description=msg.description,
    )


def pool_to_proto(p: PoolSpec) -> types_pb2.Pool:
    msg = types_pb2.Pool(
        name=p.name,
        policy=p.policy,
        policy_params=p.policy_params,
        replicas=p.replicas,
        description=p.description,
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
