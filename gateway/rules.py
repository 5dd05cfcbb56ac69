"""Content rules and A/B splits at the gateway: compiled per snapshot, resolved once per request."""

from __future__ import annotations

import hashlib
import logging
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal, Protocol, TypeVar

from gateway.members import Member
from gateway.policies.base import PickContext
from llmpool.linear_regex import Pattern, RegexError, compile_linear
from llmpool.rule_checks import MAX_ROUTE_HOPS
from llmpool.v1 import types_pb2

log = logging.getLogger(__name__)

DEFAULT_SPLIT_HEADER = "x-session-id"


@dataclass(frozen=True, slots=True)
class Rule:
    """One content rule with its regexes compiled; None or 0 means the condition is not set."""

    target: str
    min_chars: int = 0
    max_chars: int = 0
    prompt_re: Pattern | None = None
    header: str = ""
    header_re: Pattern | None = None
    metadata_key: str = ""
    metadata_re: Pattern | None = None

    def matches(self, ctx: PickContext) -> bool:
        """Cheap conditions first; the prompt text is built only if a condition needs it."""
        if self.header:
            value = ctx.headers.get(self.header)
            if value is None or (self.header_re is not None and not self.header_re.search(value)):
                return False
        if self.metadata_key:
            value = _metadata_value(ctx.payload, self.metadata_key)
            if value is None:
                return False
            if self.metadata_re is not None and not self.metadata_re.search(value):
                return False
        if self.min_chars or self.max_chars:
            size = len(ctx.prompt_text)
            if size < self.min_chars or (self.max_chars and size > self.max_chars):
                return False
        return self.prompt_re is None or self.prompt_re.search(ctx.prompt_text) is not None


def _metadata_value(payload: Any, key: str) -> str | None:
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        return None
    value = metadata.get(key)
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class Split:
    """A/B arms with cumulative weights; a user's key maps to a point on [0, total)."""

    targets: tuple[str, ...]
    weights: tuple[int, ...]
    header: str = DEFAULT_SPLIT_HEADER

    def key(self, ctx: PickContext) -> str | None:
        """What keeps a user on one arm: the split header, else the body's `user` (the order
        the session policy uses)."""
        return ctx.headers.get(self.header) or ctx.user or None

    def choose(
        self, model: str, ctx: PickContext, rng: random.Random, eligible: Callable[[str], bool]
    ) -> str | None:
        """An arm's target among the eligible ones (None if none). Sticky: the same key gets
        the same arm while the weights stay; a weight change moves only the users whose
        point crosses a boundary. No key: weighted random."""
        arms = [
            (t, w) for t, w in zip(self.targets, self.weights, strict=True) if w and eligible(t)
        ]
        if not arms:
            return None
        cumulative = list(accumulate(w for _, w in arms))
        total = cumulative[-1]
        key = self.key(ctx)
        point = rng.randrange(total) if key is None else (sticky_hash(model, key) * total) >> 64
        return arms[bisect_right(cumulative, point)][0]


def sticky_hash(model: str, key: str) -> int:
    """A 64-bit hash that every gateway process computes alike (unlike hash()); salted with
    the model so that two splits do not put the same users on their first arms."""
    digest = hashlib.blake2b(f"{model}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def compile_rules(model: str, msgs: Sequence[types_pb2.RouteRule]) -> tuple[Rule, ...]:
    """Rules ready to match; one whose regex does not compile is dropped with a warning (the
    controller refuses those, so this only guards against a newer or older controller)."""
    rules = []
    for i, msg in enumerate(msgs):
        try:
            rules.append(
                Rule(
                    target=msg.target,
                    min_chars=msg.min_prompt_chars,
                    max_chars=msg.max_prompt_chars,
                    prompt_re=_compile(msg.prompt_regex),
                    header=msg.header.lower(),
                    header_re=_compile(msg.header_regex),
                    metadata_key=msg.metadata_key,
                    metadata_re=_compile(msg.metadata_regex),
                )
            )
        except RegexError as exc:
            log.warning(
                "routing rule dropped", extra={"model": model, "rule": i, "error": str(exc)}
            )
    return tuple(rules)


def compile_split(arms: Sequence[types_pb2.SplitArm], header: str) -> Split | None:
    if not arms:
        return None
    return Split(
        targets=tuple(a.target for a in arms),
        weights=tuple(a.weight for a in arms),
        header=header.lower() or DEFAULT_SPLIT_HEADER,
    )


def _compile(pattern: str) -> Pattern | None:
    return compile_linear(pattern) if pattern else None


class Routable(Protocol):
    """What resolution reads of a route (gateway.routing.Route)."""

    @property
    def model(self) -> str: ...
    @property
    def rules(self) -> tuple[Rule, ...]: ...
    @property
    def split(self) -> Split | None: ...
    @property
    def candidates(self) -> tuple[Member, ...]: ...


R = TypeVar("R", bound=Routable)


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a resolution: `source`'s rule or split sent the request to `target`."""

    kind: Literal["rule", "split"]
    source: str
    target: str


def resolve(
    route: R, lookup: Callable[[str], R | None], ctx: PickContext, rng: random.Random
) -> tuple[R, tuple[Hop, ...]]:
    """The route whose members serve this request, and the hops taken to reach it.

    Rules first, in order (first match wins); else the split; else the route itself. A
    target this gateway does not know is skipped; a cycle or more than MAX_ROUTE_HOPS hops
    stops where it is (the controller refuses both, so this only bounds the work)."""
    hops: list[Hop] = []
    seen = {route.model}
    for _ in range(MAX_ROUTE_HOPS):
        step = _next(route, lookup, ctx, rng)
        if step is None or step[1].model in seen:
            break
        kind, target = step
        hops.append(Hop(kind, route.model, target.model))
        seen.add(target.model)
        route = target
    return route, tuple(hops)


def _next(
    route: R, lookup: Callable[[str], R | None], ctx: PickContext, rng: random.Random
) -> tuple[Literal["rule", "split"], R] | None:
    for rule in route.rules:
        if rule.matches(ctx):
            target = lookup(rule.target)
            if target is not None:
                return "rule", target
    split = route.split
    if split is None:
        return None

    def eligible(name: str) -> bool:
        # An arm that cannot serve now gives way to the others rather than fail the request.
        found = lookup(name)
        return found is not None and bool(found.candidates or found.rules or found.split)

    chosen = split.choose(route.model, ctx, rng, eligible)
    found = lookup(chosen) if chosen is not None else None
    return None if found is None else ("split", found)
