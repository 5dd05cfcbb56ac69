"""The autoscale loop on a fake clock: signals from agents' and gateways' reports, the replica
count written to the store, metrics and GetPoolStatus's view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.agents import AgentConnection
from controller.autoscale import ScaleDown, ScaleUp
from controller.metrics import ControllerMetrics
from controller.model import Assignment, Autoscale, PoolSpec, Template
from controller.parts import ControllerParts, build_parts
from controller.store import Store
from controller.usage import UsageReport
from controller.validation import check_pool
from llmpool.clock import FakeClock
from llmpool.config import ConfigError, parse_config
from llmpool.errors import FailedPreconditionError, InvalidArgumentError
from llmpool.v1 import agent_pb2, types_pb2

POOL = PoolSpec(
    name="p",
    replicas=1,
    template=Template(engine="sim", command=("sim",)),
    autoscale=Autoscale(
        min_replicas=0, max_replicas=3, target=1, up_window_s=2, down_window_s=5,
        up_cooldown_s=0, down_cooldown_s=0, cold_start_timeout_s=40,
    ),
)  # fmt: skip
READY = types_pb2.REPLICA_STATE_READY


@pytest.fixture()
async def parts(tmp_path: Path) -> AsyncIterator[ControllerParts]:
    store = await Store.open(tmp_path)
    built = await build_parts(
        store=store, seed=None, clock=FakeClock(), metrics=ControllerMetrics(), lease_s=5.0,
        report_interval_s=1.0, drain_s=5.0, extra_policies=(),
    )  # fmt: skip
    await built.desired.put_pool(POOL)
    try:
        yield built
    finally:
        await store.close()


def report(parts: ControllerParts, running: float, waiting: float) -> None:
    status = types_pb2.ReplicaStatus(
        replica_id="p-1", pool="p", state=READY, healthy=True, url="http://127.0.0.1:1",
        running=running, waiting=waiting, kv_usage=0.5,
    )  # fmt: skip
    if parts.registry.get("a") is None:
        msg = agent_pb2.Register(
            agent_id="a", capacity=types_pb2.Capacity(cpu_slots=4), replicas=[status]
        )
        parts.registry.register(msg, AgentConnection("a"))
    else:
        parts.registry.report("a", [status])


async def tick(
    parts: ControllerParts, seconds: int = 1, load: tuple[float, float] | None = None
) -> list[object]:
    """Steps the autoscaler `seconds` times, a second apart; with `load` (running, waiting) the
    agent reports its replica with it before each."""
    clock = parts.clock
    assert isinstance(clock, FakeClock)
    applied: list[object] = []
    for _ in range(seconds):
        clock.advance(1.0)
        if load is not None:
            report(parts, *load)
        applied += await parts.autoscaler.run_once()
    return applied


async def test_a_queue_scales_the_pool_up_and_its_end_scales_it_down(
    parts: ControllerParts,
) -> None:
    await parts.desired.put_assignment(Assignment("p-1", "p", "a", True, 0.0))
    queued = (2.0, 4.0)  # batch 2, queue 4 > target 1: 6 / (2 + 1) -> 2 replicas
    assert await tick(parts, 2, queued) == []  # the up window is 2 s
    [up] = await tick(parts, 1, queued)
    assert isinstance(up, ScaleUp) and (up.current, up.target) == (1, 2)
    assert parts.desired.pools["p"].replicas == 2
    view = parts.autoscaler.status("p")
    assert view is not None and (view.last_from, view.last_to) == (1, 2)
    assert view.metric == "waiting" and view.value == 4 and view.ready == 1
    sample = parts.metrics.registry.get_sample_value
    assert (
        sample("llmpool_controller_autoscale_events_total", {"pool": "p", "direction": "up"}) == 1
    )
    assert sample("llmpool_controller_autoscale_recommended_replicas", {"pool": "p"}) == 2

    idle = (0.0, 0.0)  # and no gateway reports requests
    assert await tick(parts, 4, idle) == []
    [down] = await tick(parts, 2, idle)
    assert isinstance(down, ScaleDown) and down.target == 0
    assert "no request" in down.reason
    assert parts.desired.pools["p"].replicas == 0


async def test_requests_held_at_a_gateway_start_the_first_replica_at_once(
    parts: ControllerParts,
) -> None:
    await parts.admin.scale_pool("p", 0)
    assert await tick(parts, 3) == []
    parts.usage.record(UsageReport("g1", held={"p": 2}))
    [up] = await tick(parts)
    assert isinstance(up, ScaleUp) and up.target == 1 and "held" in up.reason
    parts.publisher.publish()
    status = parts.admin.pool_status("p")
    assert status.autoscale is not None and status.autoscale.replicas == 1
    # The snapshot tells gateways to hold requests for this pool up to its cold start.
    assert parts.publisher.routes["p"].hold_s == 40


async def test_a_pool_people_scaled_meanwhile_is_not_overwritten(parts: ControllerParts) -> None:
    fixed = PoolSpec(name="q", replicas=1, template=POOL.template)
    await parts.desired.put_pool(fixed)
    await tick(parts, 10)
    assert parts.desired.pools["q"].replicas == 1
    assert parts.autoscaler.status("q") is None


async def test_scale_pool_outside_the_autoscale_range_is_refused(parts: ControllerParts) -> None:
    await parts.admin.scale_pool("p", 3)
    assert parts.desired.pools["p"].replicas == 3
    with pytest.raises(FailedPreconditionError, match="autoscaled between 0 and 3"):
        await parts.admin.scale_pool("p", 4)


@pytest.mark.parametrize(
    ("autoscale", "slo", "problem"),
    [
        ({"max_replicas": 2, "min_replicas": 3}, 0, "above max_replicas"),
        ({"max_replicas": 2, "metric": "gpu"}, 0, "metric"),
        ({"max_replicas": 2, "metric": "ttft"}, 0, "ttft_slo_ms"),
        ({"max_replicas": 2, "metric": "kv", "target": 80}, 0, "at most 1"),
        ({"max_replicas": 0}, 0, "max_replicas"),
        ({"max_replicas": 2, "up_window_s": -1}, 0, "up_window_s"),
    ],
)
def test_bad_autoscale_policies_are_refused_with_the_reason(
    autoscale: dict[str, Any], slo: float, problem: str
) -> None:
    pool = {"name": "p", "template": {"engine": "sim"}, "ttft_slo_ms": slo, "autoscale": autoscale}
    with pytest.raises(ConfigError, match=problem):
        parse_config(yaml.safe_dump({"pools": [pool]}))
    policy = Autoscale(**{"min_replicas": 1, **autoscale})
    spec = PoolSpec(name="p", template=POOL.template, autoscale=policy, ttft_slo_ms=slo)
    with pytest.raises(InvalidArgumentError, match=problem):
        check_pool(spec)


def test_an_autoscaled_pool_needs_a_template() -> None:
    with pytest.raises(InvalidArgumentError, match="template"):
        check_pool(PoolSpec(name="p", autoscale=Autoscale(max_replicas=2)))
