"""GetUsage over gRPC: the ledger's rows and total; a bad window is INVALID_ARGUMENT."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from controller.server import ControllerServer
from controller.usage import MemberUsage, UsageReport
from llmpool.v1 import admin_pb2


async def test_get_usage_sums_what_gateways_reported(
    controller: ControllerServer, admin: Any
) -> None:
    parts = controller.parts
    assert parts is not None
    parts.usage.record(
        UsageReport("g1", members=(
            MemberUsage("oai", "cloud", requests=3, prompt_tokens=30, cached_tokens=10,
                        completion_tokens=9, cost_usd=0.75),
            MemberUsage("r-1", "local", requests=2, prompt_tokens=5, completion_tokens=5),
        ))
    )  # fmt: skip
    answer = await admin.GetUsage(admin_pb2.GetUsageRequest())
    rows = {(r.pool, r.backend): r for r in answer.rows}
    assert rows[("cloud", "oai")].requests == 3 and rows[("cloud", "oai")].cached_tokens == 10
    assert answer.cost_usd == pytest.approx(0.75)
    only = await admin.GetUsage(admin_pb2.GetUsageRequest(pool="local"))
    assert [(r.pool, r.requests) for r in only.rows] == [("local", 2)]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await admin.GetUsage(admin_pb2.GetUsageRequest(since=100.0, until=50.0))
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
