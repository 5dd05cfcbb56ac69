"""The engine: one asyncio task runs scheduler steps in scaled real time, streams tokens out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from llmpool.clock import Clock, SystemClock
from llmpool.errors import UnavailableError
from llmpool.sim.kv_cache import KvCache
from llmpool.sim.metrics import SimMetrics
from llmpool.sim.scheduler import Scheduler, SimSequence, TokenEvent
from llmpool.sim.settings import SimSettings
from llmpool.sim.tokens import block_hashes

log = logging.getLogger(__name__)

# Past this lag behind schedule the loop restarts its timeline instead of running steps back to
# back to catch up (a stalled event loop should not produce a burst).
_MAX_LAG_S = 0.05


class Generation:
    """One submitted request: iterate it for token indexes; cancel() frees its blocks at once."""

    def __init__(self, engine: Engine, seq: SimSequence) -> None:
        self._engine = engine
        self.seq = seq
        self._events: asyncio.Queue[TokenEvent | None] = asyncio.Queue()

    def deliver(self, event: TokenEvent | None) -> None:
        self._events.put_nowait(event)

    async def tokens(self) -> AsyncIterator[int]:
        """Yields the index of each generated token; raises UnavailableError if the engine stops."""
        while True:
            event = await self._events.get()
            if event is None:
                raise UnavailableError("the engine stopped before the request finished")
            yield event.index
            if event.finished:
                return

    def cancel(self) -> None:
        self._engine.cancel(self)


class Engine:
    """Owns the scheduler and its step loop; the HTTP layer only submits and cancels."""

    def __init__(self, settings: SimSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.scheduler = Scheduler(
            costs=settings.costs,
            kv=KvCache(settings.kv_blocks),
            block_size=settings.block_size,
            max_num_seqs=settings.max_num_seqs,
            clock=clock or SystemClock(),
        )
        self.metrics = SimMetrics(self.scheduler, settings.model, settings.cache_info)
        self._live: dict[SimSequence, Generation] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine-steps")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for generation in list(self._live.values()):
            generation.deliver(None)
            self.scheduler.cancel(generation.seq)
        self._live.clear()

    def submit(self, tokens: list[str], max_tokens: int) -> Generation:
        """Queues a prompt (already tokenized); raises InvalidArgumentError if it can never fit."""
        if not self.running:
            raise UnavailableError("the engine is not running")
        hashes = block_hashes(tokens, self.settings.block_size, self.settings.model)
        seq = self.scheduler.add(len(tokens), hashes, max_tokens)
        generation = Generation(self, seq)
        self._live[seq] = generation
        self._wake.set()
        return generation

    def cancel(self, generation: Generation) -> None:
        if self._live.pop(generation.seq, None) is not None:
            self.scheduler.cancel(generation.seq)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        speedup = self.settings.speedup
        target = loop.time()
        while True:
            plan = self.scheduler.begin_step()
            if plan is None:
                self._wake.clear()
                await self._wake.wait()
                target = loop.time()
                continue
            for seq in plan.admitted:
                self.metrics.admitted(seq.prompt_tokens, seq.cached_tokens)
            # Sleep until the step's end on a fixed timeline, so oversleeping one step
            # shortens the next one instead of accumulating drift.
            now = loop.time()
            if now - target > _MAX_LAG_S:
                target = now
            target += plan.duration_ms / 1000.0 / speedup
            await asyncio.sleep(max(0.0, target - loop.time()))
            self._emit(self.scheduler.finish_step())

    def _emit(self, events: list[TokenEvent]) -> None:
        self.metrics.generated(len(events))
        for event in events:
            seq = event.seq
            if event.index == 0 and seq.ttft is not None:
                self.metrics.first_token(seq.ttft)
            generation = self._live.get(seq)
            if event.finished:
                self._live.pop(seq, None)
                if seq.e2e is not None:
                    self.metrics.finished(seq.e2e)
            if generation is not None:
                generation.deliver(event)
