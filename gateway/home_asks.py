"""The gateway's asks for prompt prefixes' homes (GatewayService.AskHome), bounded in count and
time: a request waits on one at most ASK_TIMEOUT_S, and then goes where the gateway places it.

One ask per prefix at a time (requests for a prefix that is being asked for wait on that ask);
at most MAX_PENDING at once (past that a request is placed without asking); none while the
controller is away; and none for PAUSE_S after one failed or timed out, so that a slow
controller costs one wait, not one per new prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import grpc
import grpc.aio

from gateway.members import Member
from gateway.metrics import GatewayMetrics
from gateway.policies import PickContext, Policy
from llmpool.clock import Clock

# A millisecond or two on a healthy controller; a long prompt's prefill is 100 ms and more.
ASK_TIMEOUT_S = 0.05
PAUSE_S = 1.0
MAX_PENDING = 64

# (model, prefix, tokens, timeout in seconds) -> the member the prefix is homed on ("": none).
AskCall = Callable[[str, int, int, float], Awaitable[str]]

# The controller answered, and the answer is no home (an unknown model): no reason to pause.
_REFUSED = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


class HomeAsks:
    def __init__(
        self,
        call: AskCall,
        ready: Callable[[], bool],
        clock: Clock,
        metrics: GatewayMetrics,
        *,
        timeout_s: float = ASK_TIMEOUT_S,
        pause_s: float = PAUSE_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._call = call
        self._ready = ready
        self._clock = clock
        self._outcomes = metrics.home_asks
        self._timeout_s = timeout_s
        self._pause_s = pause_s
        self._max_pending = max_pending
        self._pending: dict[tuple[str, int], asyncio.Task[str]] = {}
        self._paused_until = float("-inf")

    async def home(
        self, policy: Policy, candidates: Sequence[Member], ctx: PickContext, model: str
    ) -> None:
        """Before a request's first pick: where the policy wants the prompt's prefix homed
        (a long prompt new to every gateway), asks, and tells the policy the answer, so that
        every gateway that gets the prefix first places it alike."""
        wanted = policy.wants_home(candidates, ctx)
        if wanted is not None:
            member = await self.ask(model, *wanted)
            if member:
                policy.told_home(wanted[0], member)

    async def ask(self, model: str, prefix: int, tokens: int) -> str:
        """The member the controller homes the prefix on; "" where it gives none, or no
        answer came in time (the caller places the prompt itself)."""
        key = (model, prefix)
        task = self._pending.get(key)
        if task is None:
            if (
                len(self._pending) >= self._max_pending
                or self._clock.monotonic() < self._paused_until
                or not self._ready()
            ):
                self._outcomes.labels("skipped").inc()
                return ""
            task = asyncio.create_task(self._ask(model, prefix, tokens))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # A request that leaves does not cancel the ask others wait on.
        return await asyncio.shield(task)

    async def _ask(self, model: str, prefix: int, tokens: int) -> str:
        try:
            member = await self._call(model, prefix, tokens, self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REFUSED:
                self._outcomes.labels("none").inc()
                return ""
            self._failed()
            return ""
        except Exception:
            # Not connected, no answer in time, a channel closing: the prompt is placed here.
            self._failed()
            return ""
        self._outcomes.labels("homed" if member else "none").inc()
        return member

    def _failed(self) -> None:
        self._outcomes.labels("failed").inc()
        self._paused_until = self._clock.monotonic() + self._pause_s
