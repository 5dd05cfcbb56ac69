"""Controller test helpers: an in-process controller on free ports."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from controller.backend_urls import parse_allow
from controller.server import ControllerServer, ControllerSettings
from llmpool.config import Config
from llmpool.tls import TlsFiles
from llmpool.v1 import admin_pb2_grpc
from tests.support import no_task_leaks

T = TypeVar("T")


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
        # As a deployment whose backends are on its own networks would allow them.
        backend_allow=parse_allow(["127.0.0.0/8", "10.0.0.0/8"]),
    )


@pytest.fixture()
async def controller(tmp_path: Path) -> AsyncIterator[ControllerServer]:
    """A started controller, stopped at teardown; fails the test if a task of it lives on."""
    async with no_task_leaks("controller."):
        server = ControllerServer(make_settings(tmp_path / "data"))
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


@pytest.fixture()
async def secure(tmp_path: Path, pki: Path) -> AsyncIterator[ControllerServer]:
    """A started controller that takes mutual TLS with the test CA (tests/conftest.py pki)."""
    async with no_task_leaks("controller."):
        settings = dataclasses.replace(
            make_settings(tmp_path / "data"), tls=TlsFiles.in_dir(pki, "controller")
        )
        server = ControllerServer(settings)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def channel(server: ControllerServer, pki: Path, role: str) -> grpc.aio.Channel:
    """A channel to server with the certificate of role."""
    creds = TlsFiles.in_dir(pki, role).channel_credentials()
    return grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds)


def admin_stub(ch: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceAsyncStub:
    return admin_pb2_grpc.AdminServiceStub(ch)  # type: ignore[return-value]


@pytest.fixture()
async def admin(
    controller: ControllerServer,
) -> AsyncIterator[admin_pb2_grpc.AdminServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{controller.port}") as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[misc]
