"""What every provider adapter offers the relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.members import Member
from gateway.parsing import ParsedRequest


class Translator(Protocol):
    """Turns a member's answers into the shape the client asked in."""

    def answer(self, body: bytes, model: str) -> bytes:
        """A whole 200 answer."""
        ...

    def stream(
        self, chunks: AsyncIterator[bytes], model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """The member's event stream as the client's."""
        ...

    def error(self, status: int, body: bytes) -> bytes:
        """An error answer's body."""
        ...


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    url: str
    body: bytes
    headers: Mapping[str, str]
    # None: the member's answers are already in the client's shape and pass untouched.
    translator: Translator | None = None


class Provider(Protocol):
    kind: str

    def prepare(
        self, member: Member, req: ParsedRequest, headers: Mapping[str, str], key: str | None
    ) -> UpstreamCall:
        """The upstream request; BadRequestError for what this provider cannot take."""
        ...
