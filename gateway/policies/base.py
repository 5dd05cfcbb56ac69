"""The Policy base class, the per-request PickContext and typed parameter reading."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from gateway.members import Member
from gateway.policies.prompt import prefix_key, prompt_text
from llmpool.clock import Clock, SystemClock

T = TypeVar("T")


class UnknownPolicyError(ValueError):
    """No policy has this name (a ValueError, so callers may treat it as bad input)."""


@dataclass
class PickContext:
    """What a policy may look at for one request; prompt texts are computed only if asked for."""

    model: str
    body: bytes = b""
    payload: Mapping[str, Any] = field(default_factory=dict)
    # Lower-case header names.
    headers: Mapping[str, str] = field(default_factory=dict)
    # This gateway's own in-flight requests per member id (live view, not a copy).
    in_flight: Mapping[str, int] = field(default_factory=dict)
    # This gateway's own in-flight requests as of its last usage report, which the
    # controller's aggregate (Member.in_flight) already counts.
    reported_in_flight: Mapping[str, int] = field(default_factory=dict)
    # What the last pick expected of the request, handed back to the policy's settle().
    ticket: object = None
    # Computed when first asked for (not functools.cached_property: in Python 3.11 it takes a
    # lock on every first read, 3 us of a pick's 100).
    _prompt_text: str | None = field(default=None, init=False, repr=False, compare=False)
    _prefix_key: bytes | memoryview | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def loads(self, members: Sequence[Member]) -> list[float]:
        """Requests in flight on each member, each counted once: this gateway's own (live) plus
        the other gateways' (the controller's aggregate less what this gateway last reported,
        which the aggregate already holds)."""
        own = self.in_flight.get
        reported = self.reported_in_flight.get
        return [
            own(mid := m.id, 0) + (d if (d := m.in_flight - reported(mid, 0)) > 0 else 0)
            for m in members
        ]

    def load(self, member: Member) -> float:
        """loads() of one member."""
        return self.loads((member,))[0]

    @property
    def user(self) -> str | None:
        user = self.payload.get("user")
        return user if isinstance(user, str) else None

    @property
    def prompt_text(self) -> str:
        """The prompt as plain text: chat message contents, or the completion prompt/input."""
        text = self._prompt_text
        if text is None:
            text = self._prompt_text = prompt_text(self.payload)
        return text

    @property
    def prefix_key(self) -> bytes | memoryview:
        """The prompt with roles, in message order: a chat's next turn extends these bytes."""
        key = self._prefix_key
        if key is None:
            key = self._prefix_key = prefix_key(self.payload, self.body)
        return key


class ParamReader:
    """Reads a policy's string params into typed values; finish() rejects the ones not read."""

    def __init__(self, policy: str, params: Mapping[str, str]) -> None:
        self._policy = policy
        self._params = params
        self._read: set[str] = set()

    def _raw(self, key: str) -> str | None:
        self._read.add(key)
        return self._params.get(key)

    def _bad(self, key: str, value: str, why: str) -> ValueError:
        return ValueError(f"policy {self._policy!r}: param {key}={value!r} is not valid: {why}")

    def number(
        self, key: str, default: float, *, min: float | None = None, max: float | None = None
    ) -> float:
        raw = self._raw(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._bad(key, raw, "expected a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self._bad(key, raw, "expected a finite number")
        if min is not None and value < min:
            raise self._bad(key, raw, f"must be >= {min:g}")
        if max is not None and value > max:
            raise self._bad(key, raw, f"must be <= {max:g}")
        return value

    def integer(
        self, key: str, default: int, *, min: int | None = None, max: int | None = None
    ) -> int:
        raw = self._raw(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self._bad(key, raw, "expected an integer") from None
        if min is not None and value < min:
            raise self._bad(key, raw, f"must be >= {min}")
        if max is not None and value > max:
            raise self._bad(key, raw, f"must be <= {max}")
        return value

    def text(self, key: str, default: str) -> str:
        raw = self._raw(key)
        if raw is None:
            return default
        if not raw:
            raise self._bad(key, raw, "must not be empty")
        return raw

    def finish(self) -> None:
        unknown = sorted(set(self._params) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ValueError(
                f"policy {self._policy!r}: unknown param(s) {', '.join(unknown)}; it takes: {known}"
            )


class Policy:
    """Base of every policy: `class X(Policy, name="x")` names it; a PolicyRegistry builds it.

    Subclasses read their params in configure() and implement pick(); observe(), on_members()
    and on_snapshot() are optional hooks (no-ops here)."""

    name: ClassVar[str] = ""
    # Position of in_turn(); per instance once it first moves.
    _turn: int = 0
    # True when the subclass overrides observe() / settle(): the relay skips the call otherwise.
    observes: ClassVar[bool] = False
    settles: ClassVar[bool] = False
    # True when the subclass overrides wants_home(): the relay asks it before a pick.
    asks: ClassVar[bool] = False

    def __init_subclass__(cls, name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            cls.name = name
        cls.observes = cls.observe is not Policy.observe
        cls.settles = cls.settle is not Policy.settle
        cls.asks = cls.wants_home is not Policy.wants_home

    def __init__(
        self,
        params: Mapping[str, str] | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.params: dict[str, str] = dict(params or {})
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        reader = ParamReader(self.name or type(self).__name__, self.params)
        self.configure(reader)
        reader.finish()

    def configure(self, params: ParamReader) -> None:
        """Reads params (a bad or unknown one raises ValueError with a clear message)."""

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        """Chooses one of candidates (never empty)."""
        raise NotImplementedError

    def in_turn(self, tied: Sequence[T]) -> T:
        """One of tied (never empty), each in turn across calls, so equal choices share load."""
        if len(tied) == 1:
            return tied[0]
        choice = tied[self._turn % len(tied)]
        self._turn += 1
        return choice

    def least_loaded(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        """The candidate with the fewest requests in flight (ctx.loads), ties in turn."""
        loads = ctx.loads(candidates)
        best = min(loads)
        return self.in_turn([m for m, load in zip(candidates, loads, strict=True) if load == best])

    def observe(
        self, member_id: str, ttft_s: float, tpot_s: float, prompt_tokens: int, ok: bool
    ) -> None:
        """A request to member_id ended: seconds to first byte (the whole answer when not
        streamed), seconds per output token after it (0 when unknown), prompt tokens (0 when
        unknown), and whether it succeeded."""

    def began(self, ticket: object, ttft_s: float | None = None) -> None:
        """The request whose pick left ticket got its first byte, ttft_s seconds after it was
        sent (None: it ended without one, or not streamed); called only where settles is true,
        maybe more than once."""

    def settle(self, ticket: object, ttft_s: float | None, cached_tokens: int) -> None:
        """A request whose pick left ticket in PickContext.ticket ended well: seconds from
        sending to its first byte for a stream (None for a whole answer), and the prompt
        tokens its usage says were read from cache (0 when it says none)."""

    def on_members(self, members: Sequence[Member]) -> None:
        """The route's member set changed: drop state kept for members no longer in it."""

    def on_snapshot(self, members: Sequence[Member]) -> None:
        """A snapshot rebuilt the route (fresh load figures in members)."""

    def wants_home(self, candidates: Sequence[Member], ctx: PickContext) -> tuple[int, int] | None:
        """A prompt prefix and its tokens that the controller should home before this request
        is picked (GatewayService.AskHome; the answer goes to told_home()); None: pick now.
        Called only where asks is true, on a request's first try."""
        return None

    def asks_ahead(self) -> bool:
        """Whether a home wants_home() names may be one booked ahead (HomeAsks), not one every
        gateway gets for that prefix: the prefixes it named lately did not recur."""
        return False

    def told_home(self, prefix: int, member_id: str) -> None:
        """The prefix wants_home() named is homed on member_id."""

    def on_gateways(self, count: int) -> None:
        """How many gateways route with this controller (0: not known), before on_snapshot."""
