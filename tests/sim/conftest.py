"""Fixtures of the sim-engine tests: a scheduler on a fake clock, in-process servers on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from llmpool.clock import FakeClock
from llmpool.sim.cli import SimServer, build_server
from llmpool.sim.costs import CostModel
from llmpool.sim.kv_cache import KvCache
from llmpool.sim.scheduler import Scheduler, SimSequence, TokenEvent
from llmpool.sim.settings import SimSettings
from llmpool.sim.tokens import block_hashes


class Driver:
    """Runs a Scheduler without real time: each step advances the fake clock by its duration."""

    def __init__(self, kv_blocks: int = 1024, block_size: int = 4, max_num_seqs: int = 8) -> None:
        self.clock = FakeClock()
        self.s = Scheduler(CostModel(), KvCache(kv_blocks), block_size, max_num_seqs, self.clock)

    def add(self, tokens: list[str], max_tokens: int) -> SimSequence:
        return self.s.add(len(tokens), block_hashes(tokens, self.s.block_size, "sim"), max_tokens)

    def step(self) -> list[TokenEvent]:
        plan = self.s.begin_step()
        assert plan is not None, "the scheduler had nothing to run"
        self.clock.advance(plan.duration_ms / 1000.0)
        return self.s.finish_step()

    def run_until_idle(self, limit: int = 10_000) -> int:
        steps = 0
        while self.s.has_work():
            self.step()
            steps += 1
            assert steps < limit, "scheduler did not drain"
        return steps


@pytest.fixture
def driver() -> Callable[..., Driver]:
    return Driver


async def _eventually(
    condition: Callable[[], object], limit_s: float = 5.0, what: str = ""
) -> None:
    """Waits, with a deadline, until condition() is truthy (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    return _eventually


@pytest.fixture
async def sim_server() -> AsyncIterator[Callable[..., Awaitable[SimServer]]]:
    """Starts in-process sim-engines on port 0 (uvicorn); stops them all at the end."""
    started: list[tuple[SimServer, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> SimServer:
        settings = SimSettings(**{"speedup": 50.0, **overrides})
        server = build_server(settings, "127.0.0.1", 0)
        task = asyncio.create_task(server.serve())
        started.append((server, task))
        await _eventually(lambda: server.port or task.done(), what="sim-engine to listen")
        assert server.port, "sim-engine did not start"
        return server

    yield start
    for server, task in started:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        assert not server.engine.running
