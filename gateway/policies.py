"""Routing policies: a registry of named classes with one signature, pick(candidates, ctx)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from gateway.members import Member


class UnknownPolicyError(ValueError):
    pass


@dataclass
class PickContext:
    """What a policy may look at for one request; prompt_text is computed only if asked for."""

    model: str
    body: bytes = b""
    payload: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    # This gateway's own in-flight requests per member id (live view, not a copy).
    in_flight: Mapping[str, int] = field(default_factory=dict)

    @property
    def user(self) -> str | None:
        user = self.payload.get("user")
        return user if isinstance(user, str) else None

    @cached_property
    def prompt_text(self) -> str:
        """The prompt as plain text: chat message contents, or the completion prompt/input."""
        messages = self.payload.get("messages")
        if isinstance(messages, list):
            return "\n".join(
                _content_text(m.get("content")) for m in messages if isinstance(m, dict)
            )
        for key in ("prompt", "input"):
            value = self.payload.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list):
                return "\n".join(v for v in value if isinstance(v, str))
        return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multi-part content: keep the text parts only.
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


class Policy:
    """Base of every policy. Subclass with `class X(Policy, name="x")` to register it."""

    name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Policy]]] = {}

    def __init_subclass__(cls, name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            if name in Policy._registry:
                raise ValueError(f"policy name {name!r} is registered twice")
            cls.name = name
            Policy._registry[name] = cls

    def __init__(self, params: Mapping[str, str]) -> None:
        self.params = dict(params)

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        """Chooses one of candidates (never empty)."""
        raise NotImplementedError


def build_policy(name: str, params: Mapping[str, str] | None = None) -> Policy:
    """The one factory: a policy by registered name; UnknownPolicyError if none has that name."""
    cls = Policy._registry.get(name)
    if cls is None:
        raise UnknownPolicyError(
            f"unknown routing policy {name!r}; known: {', '.join(sorted(policy_names()))}"
        )
    return cls(params or {})


def policy_names() -> list[str]:
    return list(Policy._registry)


class RoundRobin(Policy, name="round_robin"):
    """Each candidate in turn."""

    def __init__(self, params: Mapping[str, str]) -> None:
        super().__init__(params)
        self._next = 0

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        member = candidates[self._next % len(candidates)]
        self._next += 1
        return member


class LeastInFlight(Policy, name="least_in_flight"):
    """Fewest requests in flight (this gateway's own plus the controller's aggregate);
    ties are broken round robin so equal members share the load."""

    def __init__(self, params: Mapping[str, str]) -> None:
        super().__init__(params)
        self._next = 0

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        own = ctx.in_flight
        best_load = float("inf")
        tied: list[Member] = []
        for member in candidates:
            load = own.get(member.id, 0) + member.in_flight
            if load < best_load:
                best_load, tied = load, [member]
            elif load == best_load:
                tied.append(member)
        choice = tied[self._next % len(tied)]
        self._next += 1
        return choice
