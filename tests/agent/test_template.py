"""Template substitution, spec validation, port picking, conversions and command-line options."""

from __future__ import annotations

import socket

import pytest

from agent.cli import build_parser, options_from_args, parse_labels
from agent.convert import spec_from_proto, status_to_proto
from agent.engines import adapter_for
from agent.ports import PortAllocator, parse_port_range, port_is_free
from agent.template import ReplicaSpec, render, substitute, validate
from llmpool.errors import InvalidArgumentError, UnavailableError
from llmpool.status import ReplicaState, ReplicaStatus
from llmpool.v1 import agent_pb2, types_pb2


def test_substitute_replaces_known_placeholders_only() -> None:
    values = {"port": "1", "host": "h", "model": "m", "replica_id": "r", "pool": "p", "python": "x"}
    assert substitute("{host}:{port}/{model}/{pool}/{replica_id}", values) == "h:1/m/p/r"
    assert substitute('{"json": {port}} {unknown}', values) == '{"json": 1} {unknown}'


def test_render_fills_command_and_env() -> None:
    spec = ReplicaSpec(
        replica_id="r1",
        pool="chat",
        engine="vllm",
        command=("vllm", "serve", "{model}", "--port", "{port}", "--host", "{host}"),
        env={"TAG": "{pool}-{replica_id}", "CUDA_VISIBLE_DEVICES": "0"},
        served_model="meta/llama",
    )
    launch = render(spec, "10.0.0.5", 20001, python="/usr/bin/python3")
    assert launch.argv == ("vllm", "serve", "meta/llama", "--port", "20001", "--host", "10.0.0.5")
    assert launch.env == {"TAG": "chat-r1", "CUDA_VISIBLE_DEVICES": "0"}


def test_sim_with_empty_command_gets_default_and_pool_as_model() -> None:
    spec = adapter_for("sim").fill(ReplicaSpec(replica_id="r", pool="sim-small"))
    launch = render(spec, "127.0.0.1", 5, python="/py")
    assert launch.argv == (
        "/py", "-m", "llmpool.cli", "sim-engine", "--host", "127.0.0.1", "--port", "5",
        "--model", "sim-small",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (ReplicaSpec(replica_id="", pool="p"), "replica_id"),
        (ReplicaSpec(replica_id="r", pool="p", engine="tensorrt"), "unknown engine .tensorrt."),
        (ReplicaSpec(replica_id="r", pool="p", engine="vllm"), "vllm' needs template.weights"),
        (ReplicaSpec(replica_id="r", pool="p", engine="openai"), "no default command"),
        (ReplicaSpec(replica_id="r", pool="p", ready_timeout_s=0), "ready_timeout_s"),
    ],
)
def test_validate_explains_what_is_wrong(spec: ReplicaSpec, needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        validate(spec)


def test_spec_from_proto_merges_env_and_defaults() -> None:
    msg = agent_pb2.StartReplica(
        replica_id="r",
        pool="p",
        template=types_pb2.ReplicaTemplate(engine="", env={"A": "1", "B": "t"}),
        env={"B": "placement"},
    )
    spec = spec_from_proto(msg)
    assert spec.engine == "sim" and spec.env == {"A": "1", "B": "placement"}
    assert spec.health_path == "/health" and spec.ready_timeout_s == 60.0
    assert spec.model == "p"


def test_spec_from_proto_carries_weights_args_and_the_engines_paths() -> None:
    template = types_pb2.ReplicaTemplate(
        engine="openai", command=["srv", "{port}"], weights="org/m", args=["--x", "1"]
    )
    spec = spec_from_proto(agent_pb2.StartReplica(replica_id="r", pool="p", template=template))
    assert (spec.weights, spec.args) == ("org/m", ("--x", "1"))
    # Empty paths are the engine's: an OpenAI-compatible server has /v1/models and no metrics.
    assert (spec.health_path, spec.metrics_path) == ("/v1/models", "")
    template = types_pb2.ReplicaTemplate(engine="vllm", health_path="/ping", metrics_path="/m")
    spec = spec_from_proto(agent_pb2.StartReplica(replica_id="r", pool="p", template=template))
    assert (spec.health_path, spec.metrics_path) == ("/ping", "/m")


def test_status_to_proto_maps_every_field() -> None:
    status = ReplicaStatus(
        replica_id="r", pool="p", engine="sim", served_model="m", state=ReplicaState.DRAINING,
        url="http://h:1", healthy=True, running=2, waiting=1, kv_usage=-1, latency_ms=3.5,
        restarts=4, message="why", pid=99,
    )  # fmt: skip
    msg = status_to_proto(status)
    assert msg.state == types_pb2.REPLICA_STATE_DRAINING
    assert (msg.url, msg.kv_usage, msg.restarts) == ("http://h:1", -1, 4)
    assert (msg.pid, msg.message, msg.healthy) == (99, "why", True)


def test_port_range_parsing() -> None:
    assert parse_port_range("20000-29999") == (20000, 29999)
    assert parse_port_range("8080") == (8080, 8080)
    for bad in ("a-b", "30000-20000", "0-10", "1-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_allocator_skips_ports_bound_by_others() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert not port_is_free("127.0.0.1", busy)
        with pytest.raises(UnavailableError, match="port-range"):
            PortAllocator("127.0.0.1", busy, busy).acquire()


def test_allocator_never_hands_out_a_held_port_twice() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    alloc = PortAllocator("127.0.0.1", port, port)
    assert alloc.acquire() == port
    with pytest.raises(UnavailableError):
        alloc.acquire()
    alloc.release(port)
    assert alloc.acquire() == port


def test_labels_from_env_and_flags() -> None:
    assert parse_labels(["zone=a, rack=3", "", "zone=b"]) == {"zone": "b", "rack": "3"}
    with pytest.raises(ValueError, match="key=value"):
        parse_labels(["zone"])


def test_options_from_flags_and_env() -> None:
    env = {
        "LLMPOOL_CONTROLLER_ADDR": "ctl:6000",
        "LLMPOOL_AGENT_LABELS": "zone=a,rack=3",
        "LLMPOOL_AGENT_PORT_RANGE": "21000-21010",
        "LLMPOOL_AGENT_ENGINE_HOST": "0.0.0.0",
    }
    args = build_parser(env).parse_args(["--label", "rack=4", "--metrics-listen", ":0"])
    opts = options_from_args(args, env)
    assert opts.controller == "ctl:6000"
    assert dict(opts.labels) == {"zone": "a", "rack": "4"}
    assert (opts.port_low, opts.port_high) == (21000, 21010)
    assert (opts.metrics_host, opts.metrics_port) == ("127.0.0.1", 0)
    # Engines on every interface are advertised by host name.
    assert opts.advertise_host == socket.gethostname()


def test_bad_flag_values_name_the_flag() -> None:
    args = build_parser({}).parse_args(["--port-range", "x"])
    with pytest.raises(ValueError, match="--port-range"):
        options_from_args(args, {})
