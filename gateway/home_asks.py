"""The gateway's asks for prompt prefixes' homes (GatewayService.AskHome), bounded in count and
time: a request waits on one at most ASK_TIMEOUT_S, and then goes where the gateway places it.

One ask per prefix at a time (requests for a prefix that is being asked for wait on that ask);
at most MAX_PENDING at once (past that a request is placed without asking); none while the
controller is away; and none for PAUSE_S after one failed or timed out, so that a slow
controller costs one wait, not one per new prefix.

Where the policy's new prefixes do not recur (Policy.asks_ahead: a pool of unique prompts), a
request does not wait: it takes the home booked for the model by an ask made after the previous
new prefix (a made-up prefix, homed as the controller homes any: balanced over the members by
cache; it lapses there unsent, HOME_TTL_S) and books the next. A request that finds no booking
back (the first, or one close behind the previous) waits on an ask of its own, as before."""

from __future__ import annotations

import asyncio
import random
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
# A home booked ahead is taken no later than this after its answer (the controller keeps a home
# unsent this long, HOME_TTL_S); it is asked for this long after the request that books it.
AHEAD_S = 30.0
BOOK_AFTER_S = 0.05

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
        book_after_s: float = BOOK_AFTER_S,
    ) -> None:
        self._call = call
        self._ready = ready
        self._clock = clock
        self._outcomes = metrics.home_asks
        self._timeout_s = timeout_s
        self._pause_s = pause_s
        self._max_pending = max_pending
        self._book_after_s = book_after_s
        self._pending: dict[tuple[str, int], asyncio.Task[str]] = {}
        self._paused_until = float("-inf")
        # Model -> a home booked ahead, and when it came; model -> the booking under way.
        self._ahead: dict[str, tuple[str, float]] = {}
        self._booking: dict[str, asyncio.Task[None]] = {}
        self._keys = random.Random()

    async def home(
        self, policy: Policy, candidates: Sequence[Member], ctx: PickContext, model: str
    ) -> None:
        """Before a request's first pick: where the policy wants the prompt's prefix homed
        (a long prompt new to every gateway), asks, and tells the policy the answer, so that
        every gateway that gets the prefix first places it alike."""
        wanted = policy.wants_home(candidates, ctx)
        if wanted is None:
            return
        prefix, tokens = wanted
        member = ""
        if policy.asks_ahead():
            member = self._take_ahead(model, candidates)
            self._book_ahead(model, tokens)
        if member:
            self._outcomes.labels("ahead").inc()
        else:
            member = await self.ask(model, prefix, tokens)
        if member:
            policy.told_home(prefix, member)

    def _take_ahead(self, model: str, candidates: Sequence[Member]) -> str:
        booked = self._ahead.pop(model, None)
        if booked is None or self._clock.monotonic() - booked[1] > AHEAD_S:
            return ""
        member = booked[0]
        return member if any(m.id == member for m in candidates) else ""

    def _book_ahead(self, model: str, tokens: int) -> None:
        # _take_ahead() took the model's booking already: the others' bound the count.
        if model in self._booking or len(self._ahead) >= self._max_pending:
            return
        task = asyncio.create_task(self._book(model, tokens))
        self._booking[model] = task
        task.add_done_callback(lambda _: self._booking.pop(model, None))

    async def _book(self, model: str, tokens: int) -> None:
        # After the request that books is on its way: the ask's gRPC work beside its send
        # delayed it (p50 0.167 against 0.160 s; docs/benchmarks.md).
        await asyncio.sleep(self._book_after_s)
        member = await self.ask(model, self._keys.getrandbits(64), tokens)
        if member:
            self._ahead[model] = (member, self._clock.monotonic())

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
