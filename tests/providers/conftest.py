"""The gateway fixtures (a fake controller, a live gateway) and fake provider APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.gateway.conftest import controller, gateway_factory, http, kit  # noqa: F401 - fixtures
from tests.providers.fakes import FakeProvider


@pytest.fixture
async def providers() -> AsyncIterator[Callable[[str, str], Awaitable[FakeProvider]]]:
    started: list[FakeProvider] = []

    async def make(kind: str, key: str) -> FakeProvider:
        fake = FakeProvider(kind, key)
        await fake.server.start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.server.stop()
