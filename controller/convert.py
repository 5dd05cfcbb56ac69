"""The controller's edge: protobuf messages to and from its domain types, and update masks.

Pools, backends and templates convert field by field by name (llmpool.protoconv), so a field
declared on the message, the dataclass and the config model needs nothing here."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from llmpool.capacity import Capacity
from llmpool.config import Config
from llmpool.errors import InvalidArgumentError
from llmpool.protoconv import from_data, from_proto, to_proto
from llmpool.status import ReplicaStatus
from llmpool.v1 import agent_pb2, types_pb2

from .commands import AgentCommand, CancelTailCommand, StartCommand, StopCommand, TailCommand
from .model import BackendSpec, PoolSpec


def _updatable(message: type[types_pb2.Pool | types_pb2.Backend], key: str) -> tuple[str, ...]:
    return tuple(f.name for f in message.DESCRIPTOR.fields if f.name != key)


# What an update may change: every field but the key.
POOL_FIELDS = _updatable(types_pb2.Pool, "name")
BACKEND_FIELDS = _updatable(types_pb2.Backend, "id")
TEMPLATE_FIELDS = tuple(f.name for f in types_pb2.ReplicaTemplate.DESCRIPTOR.fields)


def pool_from_proto(msg: types_pb2.Pool) -> PoolSpec:
    # Zero means unset in specs people write: a pool without a policy is round_robin, a
    # template without an engine "sim" (llmpool.protoconv.from_proto).
    return from_proto(PoolSpec, msg)


def pool_to_proto(pool: PoolSpec) -> types_pb2.Pool:
    return to_proto(pool, types_pb2.Pool)


def backend_from_proto(msg: types_pb2.Backend) -> BackendSpec:
    return from_proto(BackendSpec, msg)


def backend_to_proto(backend: BackendSpec) -> types_pb2.Backend:
    return to_proto(backend, types_pb2.Backend)


def specs_from_config(config: Config) -> tuple[list[PoolSpec], list[BackendSpec]]:
    pools = [from_data(PoolSpec, p.model_dump()) for p in config.pools]
    backends = [from_data(BackendSpec, b.model_dump()) for b in config.backends()]
    return pools, backends


def status_from_proto(msg: types_pb2.ReplicaStatus) -> ReplicaStatus:
    return from_proto(ReplicaStatus, msg, zeros=True)


def capacity_from_proto(msg: types_pb2.Capacity) -> Capacity:
    return from_proto(Capacity, msg, zeros=True)


def command_to_proto(command: AgentCommand) -> agent_pb2.ControllerMessage:
    """The message that carries command to its agent (start and stop get a fresh command id,
    which the agent's answer names)."""
    if isinstance(command, StartCommand):
        return agent_pb2.ControllerMessage(
            start=to_proto(command, agent_pb2.StartReplica, command_id=uuid.uuid4().hex)
        )
    if isinstance(command, StopCommand):
        return agent_pb2.ControllerMessage(
            stop=to_proto(command, agent_pb2.StopReplica, command_id=uuid.uuid4().hex)
        )
    if isinstance(command, TailCommand):
        return agent_pb2.ControllerMessage(tail_logs=to_proto(command, agent_pb2.TailLogs))
    assert isinstance(command, CancelTailCommand)
    return agent_pb2.ControllerMessage(cancel_tail=to_proto(command, agent_pb2.CancelTail))


def _set_fields(msg: Message) -> set[str]:
    return {fd.name for fd, _ in msg.ListFields()}


def mask_paths(mask: FieldMask, msg: Message, allowed: Iterable[str], what: str) -> set[str]:
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
