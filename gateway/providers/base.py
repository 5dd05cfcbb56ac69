"""What every provider adapter offers the relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.members import Member
from gateway.parsing import ParsedRequest


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    url: str
    body: bytes
    headers: Mapping[str, str]


class Provider(Protocol):
    kind: str
    # False: answers are OpenAI's shape already and pass through untouched.
    translates: bool

    def prepare(
        self, member: Member, req: ParsedRequest, headers: Mapping[str, str], key: str | None
    ) -> UpstreamCall:
        """The upstream request; BadRequestError for what this provider cannot take."""
        ...

    def answer(self, body: bytes, model: str) -> bytes:
        """A whole 200 answer in OpenAI's shape."""
        ...

    def stream(
        self, chunks: AsyncIterator[bytes], model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """The provider's event stream as OpenAI chat.completion.chunk events."""
        ...

    def error(self, status: int, body: bytes) -> bytes:
        """An error answer's body in OpenAI's shape."""
        ...
