"""Conversions between the agent's own types and llmpool.v1 protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence

from agent.engines import ADAPTERS
from agent.gpus import launch_env
from agent.template import ReplicaSpec
from llmpool.capacity import Capacity
from llmpool.protoconv import from_proto, to_proto
from llmpool.status import ReplicaStatus
from llmpool.v1 import agent_pb2, types_pb2


def spec_from_proto(
    msg: agent_pb2.StartReplica, gpu_devices: Sequence[int] | None = None
) -> ReplicaSpec:
    """The template's fields the spec has, by name (unset ones take the spec's defaults: engine
    "sim", a 60 s ready timeout), plus what only this start says. gpu_devices: the host's
    numbers of the GPUs the agent offers; None takes the controller's numbers as they are."""
    template = msg.template
    # Empty paths are the engine's own; an unknown engine fails validate() later, by replica id.
    adapter = ADAPTERS.get(template.engine or "sim") or ADAPTERS["sim"]
    return from_proto(
        ReplicaSpec,
        template,
        replica_id=msg.replica_id,
        pool=msg.pool,
        # Placement env (e.g. CUDA_VISIBLE_DEVICES) overrides the template's.
        env=launch_env(template.env, msg.env, gpu_devices),
        health_path=template.health_path or adapter.health_path,
        metrics_path=template.metrics_path or adapter.metrics_path,
    )


def status_to_proto(status: ReplicaStatus) -> types_pb2.ReplicaStatus:
    return to_proto(status, types_pb2.ReplicaStatus)


def capacity_to_proto(capacity: Capacity) -> types_pb2.Capacity:
    return to_proto(capacity, types_pb2.Capacity)


def report_message(
    statuses: list[ReplicaStatus], capacity: Capacity | None = None
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        report=agent_pb2.Report(
            replicas=[status_to_proto(s) for s in statuses],
            capacity=capacity_to_proto(capacity) if capacity is not None else None,
        )
    )


def result_message(
    command_id: str, error: str = "", replica_id: str = "", pool: str = ""
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        result=agent_pb2.CommandResult(
            command_id=command_id, ok=not error, error=error, replica_id=replica_id, pool=pool
        )
    )


def log_chunk_message(
    request_id: str, replica_id: str, lines: list[str], done: bool = False, error: str = ""
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        log_chunk=agent_pb2.LogChunk(
            request_id=request_id, replica_id=replica_id, lines=lines, done=done, error=error
        )
    )
