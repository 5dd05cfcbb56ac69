"""A field is declared once: every field of Backend and ReplicaTemplate (as the .proto has them,
so a new one is covered without touching this file) goes from the config file through the store
to admin answers, routing snapshots as gateways apply them, and the agent's start command."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor

from agent.convert import spec_from_proto
from agent.template import ReplicaSpec
from controller.commands import StartCommand
from controller.convert import (
    backend_to_proto,
    command_to_proto,
    pool_to_proto,
    specs_from_config,
)
from controller.model import Assignment, BackendSpec, PoolSpec, Template
from controller.publisher import RoutingUpdate
from controller.snapshot import LiveReplica, build_routes
from controller.store import Store
from gateway.members import Member
from gateway.routing import RoutingTable
from llmpool.config import BackendConfig, PoolConfig, TemplateConfig, parse_config
from llmpool.protoconv import to_proto
from llmpool.status import ReplicaState, ReplicaStatus
from llmpool.v1 import gateway_pb2, types_pb2

# Fields whose value must be one the system accepts; every other field gets sample().
BACKEND_VALUES = {
    "id": "b1",
    "url": "http://127.0.0.1:9",
    "kind": "openai",
    "pool": "p",
    "credential": "openai-prod",
    "tenant": "team-a",
}
# Two templates: weights and args shape an engine's default command, so they go without one.
TEMPLATE_VALUES = [
    {"engine": "vllm", "command": [], "weights": "org/model", "args": ["--x", "1"]},
    {"engine": "openai", "command": ["srv", "--port", "{port}"], "weights": "", "args": []},
]


def sample(fd: FieldDescriptor) -> Any:
    """A value of fd's type that is not its zero."""
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return {"k1": f"{fd.name}-v1", "k2": "v2"}
    one: Any
    if fd.type == FieldDescriptor.TYPE_STRING:
        one = f"/{fd.name}-value"
    elif fd.type == FieldDescriptor.TYPE_BOOL:
        one = True
    elif fd.type == FieldDescriptor.TYPE_DOUBLE:
        one = 2.5
    elif fd.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_INT32):
        one = 3
    else:
        raise AssertionError(f"give {fd.full_name} a sample value in this test")
    return [one, f"{one}-2"] if fd.is_repeated else one


def values_of(message: type[Any], fixed: dict[str, Any]) -> dict[str, Any]:
    return {
        fd.name: fixed[fd.name] if fd.name in fixed else sample(fd)
        for fd in message.DESCRIPTOR.fields
    }


def names(message: type[Any]) -> set[str]:
    return {fd.name for fd in message.DESCRIPTOR.fields}


def test_every_field_has_its_domain_and_config_line() -> None:
    for message, domain, config in (
        (types_pb2.Backend, BackendSpec, BackendConfig),
        (types_pb2.ReplicaTemplate, Template, TemplateConfig),
        (types_pb2.Pool, PoolSpec, PoolConfig),
    ):
        fields = {f.name for f in dataclasses.fields(domain)}
        assert names(message) <= fields, f"{domain.__name__} lacks a field of {message.__name__}"
        assert names(message) <= set(config.model_fields), f"{config.__name__} lacks one"
    # Routing members carry what the gateway reads of them, by the same names.
    assert names(gateway_pb2.Member) == {
        f.name for f in dataclasses.fields(Member) if not f.name.endswith("_url")
    } | {"url"}


@pytest.mark.parametrize("fixed", TEMPLATE_VALUES, ids=["default-command", "own-command"])
async def test_every_field_survives_config_store_snapshot_and_agent(
    tmp_path: Path, fixed: dict[str, Any]
) -> None:
    backend = values_of(types_pb2.Backend, BACKEND_VALUES)
    template = values_of(types_pb2.ReplicaTemplate, fixed)
    # In the file a backend is listed under its pool.
    listed = {k: v for k, v in backend.items() if k != "pool"}
    pool_entry = {"name": "p", "replicas": 1, "template": template, "backends": [listed]}
    text = yaml.safe_dump({"pools": [pool_entry]})
    pools, backends = specs_from_config(parse_config(text))

    # Through the store and back (a controller restart).
    store = await Store.open(tmp_path)
    try:
        await store.put_pool(pools[0])
        await store.put_backend(backends[0])
    finally:
        await store.close()
    store = await Store.open(tmp_path)
    try:
        [pool] = await store.load_pools()
        [stored] = await store.load_backends()
    finally:
        await store.close()

    # Admin answers hold every field as given.
    assert backend_to_proto(stored) == types_pb2.Backend(**backend)
    assert pool_to_proto(pool).template == types_pb2.ReplicaTemplate(**template)

    # The agent's start command carries the whole template; its spec takes what it uses.
    start = command_to_proto(StartCommand("p-1", "p", pool.template or Template(), {"E": "1"}))
    assert start.start.template == types_pb2.ReplicaTemplate(**template)
    spec = spec_from_proto(start.start)
    for field in dataclasses.fields(ReplicaSpec):
        if field.name in template and field.name != "env":
            given = template[field.name]
            expected = tuple(given) if isinstance(given, list) else given
            assert getattr(spec, field.name) == expected, field.name
    assert spec.env == {**template["env"], "E": "1"}

    # A snapshot as a gateway applies it: the backend's member and a replica's member carry
    # every field they share with Backend and ReplicaTemplate.
    replica = ReplicaStatus("p-1", "p", state=ReplicaState.READY, url="http://h:2", healthy=True)
    routes = build_routes(
        {"p": pool},
        {"b1": stored},
        {"p-1": Assignment("p-1", "p", "a")},
        {"p-1": LiveReplica(replica, "a", True)},
        {},
    )
    update = RoutingUpdate(version=1, full=True, routes=tuple(routes.values()))
    table = RoutingTable()
    table.apply(to_proto(update, gateway_pb2.RoutingSnapshot))
    route = table.get("p")
    assert route is not None
    members = {m.id: m for m in route.members}
    gateway_fields = names(gateway_pb2.Member)
    for name, value in backend.items():
        if name in gateway_fields and name != "upstream_model":
            assert getattr(members["b1"], name) == value, name
    assert members["b1"].upstream_model == backend["upstream_model"]
    for name, value in template.items():
        if name in gateway_fields:
            assert getattr(members["p-1"], name) == value, name
