"""Fuzzing the admin API with generated pools and backends: every answer is OK or a status a
person can act on (never UNKNOWN or INTERNAL), and what was accepted is echoed as stored."""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import strategies as st

from controller.server import ControllerServer
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.support import examples

ACTIONABLE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
NAME = st.sampled_from(["p", "q", "chat-1", "a.b/c", "evil\n", "", " x", "x" * 129]) | st.text(
    max_size=20
)
NUMBER = st.floats() | st.integers(min_value=0, max_value=2**31)
TEXT = st.text(max_size=50) | st.sampled_from(["x" * 5000, "\x00", "\u202e"])
TEMPLATE = st.builds(
    types_pb2.ReplicaTemplate,
    engine=st.sampled_from(["sim", "vllm", "openai", "llamacpp", "nope", ""]),
    command=st.lists(TEXT, max_size=3),
    env=st.dictionaries(TEXT, TEXT, max_size=3),
    ready_timeout_s=st.floats(),
    gpus=st.integers(min_value=0, max_value=2**32 - 1),
    cpu_slots=st.integers(min_value=0, max_value=2**32 - 1),
    weights=TEXT,
    input_cost_per_mtok=st.floats(),
)
POOL = st.builds(
    types_pb2.Pool,
    name=NAME,
    policy=st.sampled_from(["round_robin", "least_connections", "prefix_aware", "nope", ""]),
    replicas=st.integers(min_value=0, max_value=2**32 - 1),
    description=TEXT,
    template=st.none() | TEMPLATE,
)
BACKEND = st.builds(
    types_pb2.Backend,
    id=NAME,
    pool=NAME,
    url=st.sampled_from(
        [
            "http://10.0.0.5:8000",
            "http://169.254.169.254",
            "http://[::1]/",
            "http://x?y",
            "",
            "ftp://a",
        ]
    )
    | TEXT,
    weight=st.integers(min_value=0, max_value=2**32 - 1),
    enabled=st.booleans(),
    zone=TEXT,
    upstream_model=TEXT,
    labels=st.dictionaries(TEXT, TEXT, max_size=3),
    input_cost_per_mtok=st.floats(),
    output_cost_per_mtok=st.floats(),
)


def _same(sent: Any, got: Any, field: str) -> bool:
    a, b = getattr(sent, field), getattr(got, field)
    return bool(a == b or (isinstance(a, str) and a.rstrip("/") == b))


async def test_generated_admin_calls_get_actionable_answers_and_echo_what_they_set(
    controller: ControllerServer, admin: admin_pb2_grpc.AdminServiceAsyncStub
) -> None:
    problems: list[str] = []
    accepted = {"pool": 0, "backend": 0}
    calls = examples(st.tuples(st.sampled_from(["pool", "backend"]), POOL, BACKEND), 300)
    for kind, pool, backend in calls:
        try:
            if kind == "pool":
                got = await admin.CreatePool(admin_pb2.CreatePoolRequest(pool=pool), timeout=5)
                sent = pool
                fields = ["name", "policy", "replicas", "description"]
                await admin.DeletePool(admin_pb2.DeletePoolRequest(name=got.name), timeout=5)
            else:
                got = await admin.AddBackend(
                    admin_pb2.AddBackendRequest(backend=backend), timeout=5
                )
                sent = backend
                fields = ["id", "pool", "url", "zone", "upstream_model", "labels", "enabled"]
                if backend.HasField("weight"):
                    fields.append("weight")
                await admin.DeleteBackend(admin_pb2.DeleteBackendRequest(id=got.id), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in ACTIONABLE:
                problems.append(f"{exc.code().name}: {exc.details()!r:.200} for {kind}")
            continue
        accepted[kind] += 1
        for field in fields:
            given = getattr(sent, field) or (
                field in ("enabled", "weight") and sent.HasField(field)
            )
            if given and not _same(sent, got, field):
                problems.append(
                    f"{kind} {field}: sent {getattr(sent, field)!r:.80}, got back "
                    f"{getattr(got, field)!r:.80}"
                )
    assert not problems, "\n".join(problems[:10])
    # The generator reaches past validation too, or the echo check would check nothing.
    assert accepted["pool"] > 0 and accepted["backend"] > 0, accepted
    assert controller.parts.admin.list_backends() == []
