"""The continuous-batching scheduler: FIFO admission under batch and KV limits, one token a step."""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmpool.clock import Clock
from llmpool.errors import InvalidArgumentError
from llmpool.sim.costs import CostModel
from llmpool.sim.kv_cache import Allocation, KvCache


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class SimSequence:
    """One request inside the engine, with the engine's own timing accounting (clock seconds)."""

    seq_id: int
    prompt_tokens: int
    hashes: list[bytes]
    private_blocks: int
    max_tokens: int
    arrived_at: float
    state: SeqState = SeqState.WAITING
    allocation: Allocation | None = None
    cached_tokens: int = 0
    generated: int = 0
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrived_at

    @property
    def e2e(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.arrived_at


@dataclass(frozen=True)
class StepPlan:
    """What one step does and how long it takes at speedup 1."""

    admitted: tuple[SimSequence, ...]
    batch: tuple[SimSequence, ...]
    uncached_tokens: int
    kv_fill: float
    duration_ms: float


@dataclass(frozen=True)
class TokenEvent:
    """A sequence emitted token number `index` (0-based); `finished` when it was its last."""

    seq: SimSequence
    index: int
    finished: bool


@dataclass
class Scheduler:
    """Drive it with begin_step() then finish_step() once the step's time has passed."""

    costs: CostModel
    kv: KvCache
    block_size: int
    max_num_seqs: int
    clock: Clock
    waiting: deque[SimSequence] = field(default_factory=deque)
    running: list[SimSequence] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _plan: StepPlan | None = None

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def add(self, prompt_tokens: int, hashes: Sequence[bytes], max_tokens: int) -> SimSequence:
        """Queues a request; rejects one that could never fit in the whole KV cache."""
        if prompt_tokens <= 0:
            raise InvalidArgumentError("the prompt has no tokens")
        if max_tokens <= 0:
            raise InvalidArgumentError("max_tokens must be at least 1")
        # Blocks for the prompt and every token it may generate are reserved at admission, so a
        # running sequence is never preempted.
        total = self.blocks_for(prompt_tokens + max_tokens)
        if total > self.kv.capacity:
            raise InvalidArgumentError(
                f"this request needs {prompt_tokens + max_tokens} tokens of KV cache "
                f"(prompt {prompt_tokens} + max_tokens {max_tokens}) but the engine holds "
                f"{self.kv.capacity * self.block_size}; shorten the prompt or lower max_tokens"
            )
        seq = SimSequence(
            seq_id=next(self._ids),
            prompt_tokens=prompt_tokens,
            hashes=list(hashes),
            private_blocks=total - len(hashes),
            max_tokens=max_tokens,
            arrived_at=self.clock.monotonic(),
        )
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: SimSequence) -> None:
        """Takes a sequence out at once, freeing its KV blocks (client went away)."""
        if seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        elif seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        else:
            return
        seq.state = SeqState.CANCELLED
        seq.finished_at = self.clock.monotonic()

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def begin_step(self) -> StepPlan | None:
        """Admits waiting sequences FIFO while the batch has room and KV blocks are free."""
        admitted: list[SimSequence] = []
        uncached = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.kv.can_allocate(seq.hashes, seq.private_blocks):
                break  # strict FIFO: the head waits for blocks, the rest wait behind it
            self.waiting.popleft()
            seq.allocation = self.kv.allocate(seq.hashes, seq.private_blocks)
            # The last prompt token is always computed, as in vLLM, even on a full hit.
            seq.cached_tokens = min(
                seq.allocation.hit_blocks * self.block_size, seq.prompt_tokens - 1
            )
            uncached += seq.prompt_tokens - seq.cached_tokens
            seq.state = SeqState.RUNNING
            seq.admitted_at = self.clock.monotonic()
            self.running.append(seq)
            admitted.append(seq)
        if not self.running:
            self._plan = None
            return None
        fill = self.kv.usage
        # Sequences admitted now get their first token from the prefill pass; a decode pass
        # runs only for sequences that were already running.
        decoding = len(self.running) > len(admitted)
        duration = self.costs.step_ms(uncached, fill, decoding)
        self._plan = StepPlan(tuple(admitted), tuple(self.running), uncached, fill, duration)
        return self._plan

    def finish_step(self) -> list[TokenEvent]:
        """Every sequence of the step that is still running emits one token."""
        plan, self._plan = self._plan, None
        if plan is None:
            return []
        now = self.clock.monotonic()
        events: list[TokenEvent] = []
        for seq in plan.batch:
            if seq.state is not SeqState.RUNNING:
                continue  # cancelled during the step
            index = seq.generated
            seq.generated += 1
            if index == 0:
                seq.first_token_at = now
            finished = seq.generated >= seq.max_tokens
            if finished:
                self.running.remove(seq)
                self._release(seq)
                seq.state = SeqState.FINISHED
                seq.finished_at = now
            events.append(TokenEvent(seq, index, finished))
        return events

    def _release(self, seq: SimSequence) -> None:
        if seq.allocation is not None:
            self.kv.release(seq.allocation)
            seq.allocation = None
