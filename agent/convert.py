"""Conversions between the agent's own types and llmpool.v1 protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence

from agent.engines import ADAPTERS
from agent.gpus import launch_env
from agent.status import ReplicaState, ReplicaStatus
from agent.template import ReplicaSpec
from llmpool.v1 import agent_pb2, types_pb2

_STATE_TO_PROTO: dict[ReplicaState, types_pb2.ReplicaState.ValueType] = {
    ReplicaState.STARTING: types_pb2.REPLICA_STATE_STARTING,
    ReplicaState.READY: types_pb2.REPLICA_STATE_READY,
    ReplicaState.DRAINING: types_pb2.REPLICA_STATE_DRAINING,
    ReplicaState.FAILED: types_pb2.REPLICA_STATE_FAILED,
    ReplicaState.STOPPED: types_pb2.REPLICA_STATE_STOPPED,
}

# A template with ready_timeout_s unset (0) gets this.
DEFAULT_READY_TIMEOUT_S = 60.0


def spec_from_proto(
    msg: agent_pb2.StartReplica, gpu_devices: Sequence[int] | None = None
) -> ReplicaSpec:
    """gpu_devices: the host's numbers of the GPUs the agent offers, in the order the
    controller numbers them; None takes the controller's numbers as they are."""
    template = msg.template
    engine = template.engine or "sim"
    # Empty paths are the engine's own; an unknown engine fails validate() later, by replica id.
    adapter = ADAPTERS.get(engine) or ADAPTERS["sim"]
    return ReplicaSpec(
        replica_id=msg.replica_id,
        pool=msg.pool,
        engine=engine,
        command=tuple(template.command),
        # Placement env (e.g. CUDA_VISIBLE_DEVICES) overrides the template's.
        env=launch_env(template.env, msg.env, gpu_devices),
        health_path=template.health_path or adapter.health_path,
        metrics_path=template.metrics_path or adapter.metrics_path,
        ready_timeout_s=template.ready_timeout_s or DEFAULT_READY_TIMEOUT_S,
        served_model=template.served_model,
        weights=template.weights,
        args=tuple(template.args),
    )


def status_to_proto(status: ReplicaStatus) -> types_pb2.ReplicaStatus:
    return types_pb2.ReplicaStatus(
        replica_id=status.replica_id,
        pool=status.pool,
        state=_STATE_TO_PROTO[status.state],
        url=status.url,
        healthy=status.healthy,
        running=status.running,
        waiting=status.waiting,
        kv_usage=status.kv_usage,
        prefix_cache_hit_rate=status.prefix_cache_hit_rate,
        latency_ms=status.latency_ms,
        restarts=status.restarts,
        engine=status.engine,
        served_model=status.served_model,
        message=status.message,
        pid=status.pid,
        attached=status.attached,
    )


def report_message(
    statuses: list[ReplicaStatus], capacity: types_pb2.Capacity | None = None
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        report=agent_pb2.Report(replicas=[status_to_proto(s) for s in statuses], capacity=capacity)
    )


def result_message(command_id: str, error: str = "") -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        result=agent_pb2.CommandResult(command_id=command_id, ok=not error, error=error)
    )


def log_chunk_message(
    request_id: str, replica_id: str, lines: list[str], done: bool = False, error: str = ""
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        log_chunk=agent_pb2.LogChunk(
            request_id=request_id, replica_id=replica_id, lines=lines, done=done, error=error
        )
    )
