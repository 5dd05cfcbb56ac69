"""Controller test helpers: an in-process controller on free ports and waiting with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from controller.server import ControllerServer, ControllerSettings
from llmpool.config import Config

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]], within_s: float = 5.0, what: str = ""
) -> T:
    """Polls condition (sync or async) until truthy; fails at the deadline."""
    deadline = time.monotonic() + within_s
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.01)


def make_settings(
    data_dir: Path, config: Config | None = None, lease_s: float = 1.0
) -> ControllerSettings:
    return ControllerSettings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        config=config,
        metrics_listen="127.0.0.1:0",
        lease_s=lease_s,
        report_interval_s=0.2,
        grace_s=0.5,
    )


@pytest.fixture()
async def controller(tmp_path: Path) -> AsyncIterator[ControllerServer]:
    server = ControllerServer(make_settings(tmp_path / "data"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
