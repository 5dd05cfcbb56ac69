"""Backend URLs from the admin API: no loopback, metadata, private or disguised addresses
unless the allow-list names them; no query, fragment or credentials."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controller.backend_urls import BackendUrlPolicy, IPAddress, parse_allow
from controller.model import BackendSpec
from controller.server import ControllerServer
from llmpool.errors import InvalidArgumentError
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.support import no_task_leaks, refused

from .conftest import make_settings

REFUSED = [
    "http://169.254.169.254/latest/meta-data",
    "http://127.0.0.1:9101",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]:80",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://0.0.0.0:80",
    "http://10.1.2.3:8000",
    "http://192.168.0.10",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://localhost:8000",
    "http://api.localhost",
    "https://api.example.com/v1?x=1",
    "https://api.example.com/v1#frag",
    "https://api.example.com/v1?",
    "https://user:secret@api.example.com",
    "ftp://api.example.com",
    "http://api.example.com/a b",
    "http://api.example.com\\@evil",
    "http://internal.example",  # resolves to a private address below
]


async def fake_resolve(host: str, port: int) -> list[IPAddress]:
    table = {"api.example.com": "93.184.216.34", "internal.example": "10.0.0.9"}
    if host not in table:
        raise OSError("no such host")
    return [ipaddress.ip_address(table[host])]


@pytest.mark.parametrize("url", REFUSED)
async def test_refused_without_an_allow_list_entry(url: str) -> None:
    with pytest.raises(InvalidArgumentError):
        await BackendUrlPolicy(resolver=fake_resolve).check(url)


async def test_public_addresses_and_names_pass_and_lose_the_trailing_slash() -> None:
    policy = BackendUrlPolicy(resolver=fake_resolve)
    assert await policy.check("https://api.example.com/v1/") == "https://api.example.com/v1"
    assert await policy.check("http://93.184.216.34:8000") == "http://93.184.216.34:8000"


async def test_the_allow_list_opens_exactly_what_it_names() -> None:
    allow = parse_allow(["127.0.0.1:8080", "10.0.0.0/8", "*.internal", "::1"])
    policy = BackendUrlPolicy(allow, resolver=fake_resolve)
    assert await policy.check("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert await policy.check("http://10.1.2.3:8000")
    assert await policy.check("http://gpu-1.internal:8000")
    assert await policy.check("http://[::1]:9000")
    assert await policy.check("http://internal.example")
    for url in ("http://127.0.0.1:9101", "http://169.254.169.254", "http://0x7f000001:8080"):
        with pytest.raises(InvalidArgumentError):
            await policy.check(url)
    with pytest.raises(ValueError):
        parse_allow(["0x7f000001"])


async def test_an_unresolvable_name_is_refused_with_what_to_do() -> None:
    with pytest.raises(InvalidArgumentError, match="--backend-allow"):
        await BackendUrlPolicy(resolver=fake_resolve).check("http://nowhere.example")


@pytest.fixture()
async def strict(tmp_path: Path) -> AsyncIterator[ControllerServer]:
    async with no_task_leaks("controller."):
        settings = dataclasses.replace(make_settings(tmp_path / "data"), backend_allow=())
        server = ControllerServer(settings)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


async def test_add_backend_answers_invalid_argument_for_each(strict: ControllerServer) -> None:
    urls = [
        "http://169.254.169.254",
        f"http://127.0.0.1:{strict.metrics_port}",
        "http://[::1]/",
        "http://0x7f000001/",
        "http://127.0.0.1:8000/v1?",
        "http://127.0.0.1:8000/#",
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{strict.port}") as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        for i, url in enumerate(urls):
            backend = types_pb2.Backend(id=f"b{i}", pool="p", url=url)
            err = await refused(admin.AddBackend(admin_pb2.AddBackendRequest(backend=backend)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        # An update may not move an existing backend there either.
        await strict.parts.admin.add_backend(
            BackendSpec(id="x", pool="p", url="http://93.184.216.34")
        )
        moved = types_pb2.Backend(id="x", pool="p", url="http://169.254.169.254")
        err = await refused(
            admin.UpdateBackend(
                admin_pb2.UpdateBackendRequest(backend=moved, update_mask={"paths": ["url"]})
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(strict.parts.desired.backends) == {"x"}
