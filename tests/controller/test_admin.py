"""Admin validation and errors over the real gRPC server: codes and actionable messages."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from controller.server import ControllerServer
from controller.usage import MemberUsage, UsageReport
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.support import refused

TEMPLATE = types_pb2.ReplicaTemplate(engine="sim", command=["sim"], cpu_slots=1)


def add(
    b_id: str, pool: str = "p", url: str = "http://127.0.0.1:9000"
) -> admin_pb2.AddBackendRequest:
    return admin_pb2.AddBackendRequest(backend=types_pb2.Backend(id=b_id, pool=pool, url=url))


async def test_add_backend_creates_pool_and_rejects_duplicates(
    admin: admin_pb2_grpc.AdminServiceAsyncStub,
) -> None:
    added = await admin.AddBackend(add("b1", "fresh"))
    assert added.enabled and added.weight == 1 and added.kind == "openai"
    pool = await admin.GetPool(admin_pb2.GetPoolRequest(name="fresh"))
    assert pool.policy == "round_robin" and pool.replicas == 0
    err = await refused(admin.AddBackend(add("b1", "fresh")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "UpdateBackend" in (err.details() or "")


@pytest.mark.parametrize(
    ("backend", "needle"),
    [
        (types_pb2.Backend(id="b", pool="p", url="ftp://x"), "base URL"),
        (types_pb2.Backend(id="b", pool="p", url="http://"), "base URL"),
        (types_pb2.Backend(id="bad id!", pool="p", url="http://h:1"), "letters, digits"),
        (types_pb2.Backend(id="", pool="p", url="http://h:1"), "backend id is required"),
        (types_pb2.Backend(id="b", pool="p", url="http://h:1", kind="grpc"), "known kinds"),
    ],
)
async def test_add_backend_validation(
    admin: admin_pb2_grpc.AdminServiceAsyncStub, backend: types_pb2.Backend, needle: str
) -> None:
    err = await refused(admin.AddBackend(admin_pb2.AddBackendRequest(backend=backend)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.details() or "")


async def test_unknown_policy_lists_known_ones(admin: admin_pb2_grpc.AdminServiceAsyncStub) -> None:
    err = await refused(
        admin.CreatePool(
            admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="x", policy="fastest"))
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "round_robin" in (err.details() or "") and "least_in_flight" in (err.details() or "")


async def test_not_found_and_replicas_need_template(
    admin: admin_pb2_grpc.AdminServiceAsyncStub,
) -> None:
    for call in (
        admin.GetBackend(admin_pb2.GetBackendRequest(id="nope")),
        admin.GetPool(admin_pb2.GetPoolRequest(name="nope")),
        admin.DeletePool(admin_pb2.DeletePoolRequest(name="nope")),
        admin.DrainBackend(admin_pb2.DrainBackendRequest(id="nope")),
        admin.TailLogs(admin_pb2.TailLogsRequest(replica_id="nope")).read(),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    await admin.CreatePool(admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="bare")))
    err = await refused(admin.ScalePool(admin_pb2.ScalePoolRequest(name="bare", replicas=2)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "template" in (err.details() or "")


async def test_update_masks(admin: admin_pb2_grpc.AdminServiceAsyncStub) -> None:
    await admin.AddBackend(add("b1"))
    # Empty mask: only the fields that are set change.
    updated = await admin.UpdateBackend(
        admin_pb2.UpdateBackendRequest(backend=types_pb2.Backend(id="b1", weight=5))
    )
    assert (updated.weight, updated.url, updated.enabled) == (5, "http://127.0.0.1:9000", True)
    # Explicit mask: zone cleared, weight untouched although given.
    updated = await admin.UpdateBackend(
        admin_pb2.UpdateBackendRequest(
            backend=types_pb2.Backend(id="b1", weight=9, zone=""),
            update_mask=FieldMask(paths=["zone"]),
        )
    )
    assert updated.weight == 5
    err = await refused(
        admin.UpdateBackend(
            admin_pb2.UpdateBackendRequest(
                backend=types_pb2.Backend(id="b1"), update_mask=FieldMask(paths=["colour"])
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "colour" in (err.details() or "")

    await admin.CreatePool(
        admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="q", template=TEMPLATE))
    )
    pool = await admin.UpdatePool(
        admin_pb2.UpdatePoolRequest(
            pool=types_pb2.Pool(name="q", template=types_pb2.ReplicaTemplate(served_model="m")),
            update_mask=FieldMask(paths=["template.served_model"]),
        )
    )
    assert pool.template.served_model == "m" and list(pool.template.command) == ["sim"]
    pool = await admin.UpdatePool(
        admin_pb2.UpdatePoolRequest(pool=types_pb2.Pool(name="q", policy="least_in_flight"))
    )
    assert pool.policy == "least_in_flight" and pool.template.served_model == "m"


async def test_delete_pool_removes_backends_and_enable_ends_drain(
    admin: admin_pb2_grpc.AdminServiceAsyncStub, controller: ControllerServer
) -> None:
    await admin.AddBackend(add("b1", "p"))
    await admin.AddBackend(add("b2", "p"))
    msg = await admin.DrainBackend(admin_pb2.DrainBackendRequest(id="b1"))
    assert "draining" in msg.message and controller.parts.desired.backends["b1"].draining
    off = await admin.SetBackendEnabled(admin_pb2.SetBackendEnabledRequest(id="b1", enabled=False))
    assert not off.enabled
    on = await admin.SetBackendEnabled(admin_pb2.SetBackendEnabledRequest(id="b1", enabled=True))
    assert on.enabled and not controller.parts.desired.backends["b1"].draining
    await admin.DeletePool(admin_pb2.DeletePoolRequest(name="p"))
    listed = await admin.ListBackends(admin_pb2.ListBackendsRequest())
    assert list(listed.backends) == []


async def test_a_policy_change_drops_what_gateways_learned_of_the_pools_members(
    controller: ControllerServer, admin: admin_pb2_grpc.AdminServiceAsyncStub
) -> None:
    """Caches, speeds and lost prefixes gateways learned under the old policy or its params go
    with them (every gateway starts the new policy afresh); other pools' stay."""
    await admin.AddBackend(add("b1", pool="p"))
    await admin.AddBackend(add("b2", pool="q", url="http://127.0.0.1:9001"))
    usage = controller.parts.usage
    lines = tuple(
        MemberUsage(m, learned_cache_tokens=4096, learned_prefill_s_per_token=1e-5,
                    missed_prefixes=(7,))
        for m in ("b1", "b2")
    )  # fmt: skip
    usage.record(UsageReport(gateway_id="g", members=lines))

    def learned(member: str) -> tuple[int, float, tuple[int, ...]]:
        load = usage.loads()[member]
        return load.learned_cache_tokens, load.learned_prefill_s_per_token, load.missed_prefixes

    mask = FieldMask(paths=["policy"])
    # The same policy again: nothing changed, nothing forgotten.
    await admin.UpdatePool(
        admin_pb2.UpdatePoolRequest(pool=types_pb2.Pool(name="p", policy="round_robin"),
                                    update_mask=mask)
    )  # fmt: skip
    assert learned("b1") == (4096, 1e-5, (7,))
    await admin.UpdatePool(
        admin_pb2.UpdatePoolRequest(pool=types_pb2.Pool(name="p", policy="prefix_aware"),
                                    update_mask=mask)
    )  # fmt: skip
    assert learned("b1") == (0, 0.0, ())
    assert learned("b2") == (4096, 1e-5, (7,))
