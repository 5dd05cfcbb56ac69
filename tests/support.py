"""Helpers every test area imports: free ports, and waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A port the OS says is free now (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Polls condition until it returns something truthy; fails the test at the deadline.
    Exceptions from condition count as 'not yet'; the last one is shown on failure."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or condition!r}; last: {last_exc!r}"
            )
        time.sleep(interval)


async def async_wait_for(
    condition: Callable[[], Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline to fail the test, not a scope
    interval: float = 0.02,
    what: str = "",
) -> T:
    """The asyncio twin of wait_for."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = await condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or condition!r}; last: {last_exc!r}"
            )
        await asyncio.sleep(interval)
