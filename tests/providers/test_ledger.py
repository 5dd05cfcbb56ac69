"""The cost ledger: minute rows in the store, replicas' hourly cost, GetUsage's window; and a
mixed local and remote run whose ledger equals the sum of usage x prices the clients saw."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from controller.ledger import REPLICAS, Ledger
from controller.metrics import ControllerMetrics
from controller.store import Store
from controller.usage import MemberUsage, UsageAggregator, UsageReport
from gateway.app import parts_of
from llmpool.clock import FakeClock
from llmpool.protoconv import from_proto
from llmpool.sim.app import build_app
from llmpool.sim.engine import Engine
from llmpool.sim.settings import SimSettings
from llmpool.v1 import gateway_pb2
from tests.gateway.conftest import InProcessServer

KEY = "sk-ledger-test"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path)
    yield opened
    await opened.close()


async def test_rows_by_minute_pool_and_backend_and_replica_hours(store: Store) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    metrics = ControllerMetrics()
    running = [("local", "local-1", 3.6), ("local", "local-2", 3.6), ("free", "f-1", 0.0)]
    ledger = Ledger(store, clock, metrics, lambda: running)
    ledger.tick()
    ledger.add("cloud", "oai", 2, 100, 40, 50, 0.25)
    clock.advance(100.0)
    ledger.tick()
    ledger.add("cloud", "oai", 1, 10, 0, 5, 0.05)
    start = clock.wall()
    clock.advance(600.0)
    ledger.add("cloud", "ant", 1, 7, 0, 3, 0.5)
    rows = {(r.pool, r.backend): r for r in await ledger.usage(0, 0)}
    assert rows[("cloud", "oai")].requests == 3 and rows[("cloud", "oai")].cached_tokens == 40
    assert rows[("cloud", "oai")].cost_usd == pytest.approx(0.30)
    # Two replicas at $3.60 an hour for the 700 s until the query: $1.40.
    assert rows[("local", REPLICAS)].cost_usd == pytest.approx(1.40)
    assert ("free", REPLICAS) not in rows
    replica_cost = metrics.registry.get_sample_value(
        "llmpool_pool_replica_cost_usd_total", {"pool": "local"}
    )
    assert replica_cost == pytest.approx(1.40)
    # A window: only the minutes from `start` on (the ant request, 10 minutes later).
    later = await ledger.usage(start + 120, 0, pool="cloud")
    assert [(r.backend, r.requests) for r in later] == [("ant", 1)]
    assert await ledger.usage(0, 0, pool="nope") == []


async def test_usage_reports_reach_the_ledger_and_survive_a_restart(
    tmp_path: Path, store: Store
) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    ledger = Ledger(store, clock, ControllerMetrics())
    usage = UsageAggregator(clock, ControllerMetrics(), ledger=ledger)
    member = gateway_pb2.MemberUsage(
        member_id="oai", model="cloud", requests=4, prompt_tokens=40, cached_tokens=8,
        completion_tokens=20, cost_usd=0.125,
    )  # fmt: skip
    report = gateway_pb2.UsageReport(gateway_id="g1", members=[member])
    usage.record(from_proto(UsageReport, report, zeros=True))
    poisoned = gateway_pb2.MemberUsage(member_id="oai", model="cloud", requests=1, cost_usd=1e300)
    usage.record(UsageReport("g2", members=(from_proto(MemberUsage, poisoned, zeros=True),)))
    await ledger.flush()
    again = Ledger(store, clock, ControllerMetrics())
    [row] = await again.usage(0, 0)
    assert (row.requests, row.prompt_tokens, row.cached_tokens) == (5, 40, 8)
    assert row.cost_usd == pytest.approx(0.125)  # the absurd report counted no money


@pytest.fixture
async def sim() -> AsyncIterator[InProcessServer]:
    server = InProcessServer(build_app(Engine(SimSettings(model="sim", speedup=50))))
    await server.start()
    yield server
    await server.stop()


async def test_a_mixed_run_costs_what_its_usage_says_to_the_cent(
    tmp_path: Path, store: Store, sim: InProcessServer, kit: Any, controller: Any,
    gateway_factory: Any, providers: Any,
) -> None:  # fmt: skip
    remote = await providers("openai", KEY)
    prices = {
        "local": (100.0, 400.0, 0.0),
        "remote": (2500.0, 10000.0, 1250.0),  # dollars a million: big enough to see cents
    }
    members = [
        gateway_pb2.Member(id="local", url=sim.url, healthy=True, upstream_model="sim",
                           input_cost_per_mtok=100.0, output_cost_per_mtok=400.0),
        gateway_pb2.Member(id="remote", url=remote.url, healthy=True, kind="openai",
                           credential="prod", input_cost_per_mtok=2500.0,
                           output_cost_per_mtok=10000.0, cached_input_cost_per_mtok=1250.0),
    ]  # fmt: skip
    controller.full = kit.snapshot(1, [kit.route("m1", members)])
    gw = await gateway_factory(
        f"127.0.0.1:{controller.port}", environ={"LLMPOOL_CREDENTIAL_PROD": KEY}
    )
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    expected = 0.0
    messages = [{"role": "user", "content": "count the cost of this request please"}]
    for i in range(24):
        if i % 2:
            stream = await client.chat.completions.create(
                model="m1", messages=messages, max_tokens=12, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )  # fmt: skip
            served = stream.response.headers["x-llmpool-member"]
            chunks = [c async for c in stream]
            usage = chunks[-1].usage
        else:
            raw = await client.chat.completions.with_raw_response.create(
                model="m1", messages=messages, max_tokens=12,  # type: ignore[arg-type]
            )  # fmt: skip
            served = raw.headers["x-llmpool-member"]
            usage = raw.parse().usage
        assert usage is not None
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        price_in, price_out, price_cached = prices[served]
        expected += (
            (usage.prompt_tokens - (cached or 0)) * price_in
            + (cached or 0) * (price_cached or price_in)
            + usage.completion_tokens * price_out
        ) / 1e6

    def reported() -> float:
        return sum(m.cost_usd for r in controller.reports for m in r.members)

    await kit.wait_until(lambda: abs(reported() - expected) < 1e-9, what="every cost reported")
    clock = FakeClock(start=1_800_000_000.0)
    ledger = Ledger(store, clock, ControllerMetrics())
    aggregator = UsageAggregator(clock, ControllerMetrics(), ledger=ledger)
    for report in controller.reports:
        aggregator.record(from_proto(UsageReport, report, zeros=True))
    rows = await ledger.usage(0, 0)
    total = sum(r.cost_usd for r in rows)
    assert round(total, 2) == round(expected, 2) and total == pytest.approx(expected)
    assert {r.backend for r in rows} == {"local", "remote"}
    assert sum(r.requests for r in rows) == 24
