"""The controller asks static backends' engines what cache they have and hands it out with them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from controller.backend_capacity import (
    AT_ONCE,
    MAX_BYTES,
    REFRESH_S,
    RETRY_S,
    BackendCapacities,
    HttpFetch,
    capacity_of,
)
from controller.model import BackendSpec, PoolSpec
from controller.server import ControllerServer
from controller.snapshot import build_routes
from llmpool.addr import base_url
from llmpool.clock import FakeClock
from llmpool.config import BackendConfig, Config, PoolConfig
from llmpool.engine_capacity import UNKNOWN, EngineCapacity
from llmpool.sim.cli import build_server
from llmpool.sim.settings import SimSettings
from tests.controller.conftest import make_settings
from tests.support import eventually, no_task_leaks

SAMPLES = Path(__file__).parents[1] / "agent" / "samples" / "capacity"


def sample(name: str) -> bytes:
    """A sample without the // lines that say where its format comes from."""
    lines = (SAMPLES / name).read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("//")).encode()


def test_each_engines_answer_is_read_where_that_engine_puts_it() -> None:
    assert capacity_of("", 200, sample("vllm_v1.txt")) == EngineCapacity(538_816, 16, 0)
    assert capacity_of("sglang", 200, sample("sglang_server_info.jsonc")).cache_tokens == 20_480
    assert capacity_of("llama-server", 200, sample("llama_server_props.jsonc")).cache_tokens == 1024
    assert capacity_of("tgi", 200, sample("tgi_info_1.jsonc")).cache_tokens == 163_840


@pytest.mark.parametrize(
    ("engine", "status", "body"),
    [
        ("", 404, b"not found"),
        ("", 200, b"<html>a web page</html>"),
        ("", 200, b"# HELP x nothing about caches\n# TYPE x gauge\nx 1\n"),
        ("sglang", 200, b"[1, 2]"),
        ("tgi", 200, b"{not json"),
        ("tgi", 200, b'{"max_batch_total_tokens": -5}'),
        ("llama-server", 500, b'{"default_generation_settings": {"n_ctx": 4096}}'),
    ],
)
def test_answers_that_say_nothing_or_nonsense_are_unknown(
    engine: str, status: int, body: bytes
) -> None:
    assert capacity_of(engine, status, body) == UNKNOWN


def test_the_engine_is_asked_beside_its_api() -> None:
    assert base_url("http://10.0.0.5:8000/v1/") == "http://10.0.0.5:8000"
    assert base_url("https://h.example/x") == "https://h.example/x"


class Engines:
    """A fetch over a table of url -> (status, body); unknown urls raise as a closed port."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.asked: list[str] = []

    async def __call__(self, url: str) -> tuple[int, bytes]:
        self.asked.append(url)
        if url not in self.answers:
            raise httpx.ConnectError("connection refused")
        return self.answers[url]


def backend(bid: str, url: str, **kw: object) -> BackendSpec:
    return BackendSpec(id=bid, pool="p", url=url, **kw)  # type: ignore[arg-type]


VLLM = sample("vllm_v1.txt")


async def test_what_an_engine_said_reaches_its_member_and_stays_until_it_says_otherwise() -> None:
    clock = FakeClock()
    engines = Engines()
    engines.answers["http://e1:8000/metrics"] = (200, VLLM)
    backends = {"b1": backend("b1", "http://e1:8000/v1")}
    changes: list[int] = []
    caps = BackendCapacities(engines, clock, backends.values, lambda: changes.append(1))
    await caps.sweep()
    assert caps.found == {"b1": EngineCapacity(538_816, 16, 0)} and changes == [1]
    routes = build_routes({"p": PoolSpec("p")}, backends, {}, {}, {}, capacities=caps.get())
    member = routes["p"].members[0]
    assert (member.cache_tokens, member.cache_block_size) == (538_816, 16)
    # Asked again only after REFRESH_S; an engine down meanwhile keeps what it said.
    await caps.sweep()
    assert len(engines.asked) == 1
    del engines.answers["http://e1:8000/metrics"]
    clock.advance(REFRESH_S)
    await caps.sweep()
    assert caps.found["b1"].cache_tokens == 538_816 and changes == [1]
    # Back, saying nothing of its cache (another server there now): forgotten.
    engines.answers["http://e1:8000/metrics"] = (404, b"")
    clock.advance(RETRY_S)
    await caps.sweep()
    assert caps.found == {} and changes == [1, 1]


async def test_an_engine_still_starting_is_asked_again_soon_and_a_remote_api_rarely() -> None:
    clock = FakeClock()
    engines = Engines()
    backends = {
        "local": backend("local", "http://e1:8000"),
        "api": backend("api", "https://api.example.com/v1", credential="openai"),
    }
    for path in ("/metrics", "/get_server_info", "/props", "/info"):
        engines.answers["https://api.example.com" + path] = (404, b"")
    caps = BackendCapacities(engines, clock, backends.values, lambda: None)
    await caps.sweep()
    # The remote API was asked every path, in order, and none said anything.
    api = [u for u in engines.asked if "api.example" in u]
    assert [u.rsplit("/", 1)[1] for u in api] == ["metrics", "get_server_info", "props", "info"]
    # The engine not up was asked once: its other paths would wait on the same closed port.
    assert [u for u in engines.asked if "e1" in u] == ["http://e1:8000/metrics"]
    engines.asked.clear()
    clock.advance(1.0)
    await caps.sweep()
    assert all("e1" in u for u in engines.asked) and engines.asked  # only the one not up
    engines.answers["http://e1:8000/metrics"] = (200, VLLM)
    clock.advance(2.0)
    await caps.sweep()
    assert caps.found.keys() == {"local"}


async def test_only_enabled_openai_compatible_backends_are_asked_and_removed_ones_forgotten() -> (
    None
):
    clock = FakeClock()
    engines = Engines()
    for host in ("a", "b", "c", "d"):
        engines.answers[f"http://{host}/metrics"] = (200, VLLM)
    backends = {
        "a": backend("a", "http://a"),
        "b": backend("b", "http://b", kind="anthropic"),
        "c": backend("c", "http://c", kind="azure"),
        "d": backend("d", "http://d", enabled=False),
    }
    changes: list[int] = []
    caps = BackendCapacities(engines, clock, backends.values, lambda: changes.append(1))
    await caps.sweep()
    assert engines.asked == ["http://a/metrics"] and caps.found.keys() == {"a"}
    del backends["a"]
    await caps.sweep()
    assert caps.found == {} and changes == [1, 1]


async def test_many_backends_are_asked_a_bounded_number_at_a_time() -> None:
    clock = FakeClock()
    engines = Engines()
    backends = {f"b{i}": backend(f"b{i}", f"http://h{i}") for i in range(AT_ONCE + 5)}
    for i in range(AT_ONCE + 5):
        engines.answers[f"http://h{i}/metrics"] = (200, VLLM)
    caps = BackendCapacities(engines, clock, backends.values, lambda: None)
    await caps.sweep()
    assert len(caps.found) == AT_ONCE
    await caps.sweep()
    assert len(caps.found) == AT_ONCE + 5


async def test_http_fetch_reads_a_bounded_body_and_follows_no_redirect() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/big":
            return httpx.Response(200, content=b"x" * (MAX_BYTES + 1))
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"location": "http://169.254.169.254/"})
        return httpx.Response(200, content=b"ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        fetch = HttpFetch(client)
        assert await fetch("http://e/ok") == (200, b"ok")
        assert await fetch("http://e/big") == (413, b"")
        assert await fetch("http://e/moved") == (302, b"")


async def test_http_fetch_gives_up_on_an_answer_that_drips_past_its_time() -> None:
    async def drip() -> AsyncIterator[bytes]:
        while True:
            yield b"#"
            await asyncio.sleep(0.01)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=drip())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TimeoutError):
            await HttpFetch(client, timeout_s=0.2)("http://e/metrics")
    # Taken as no answer: nothing found, asked again a second later (and no sooner).
    clock = FakeClock()
    slow = _Slow()
    caps = BackendCapacities(slow, clock, lambda: [backend("b", "http://e")], lambda: None)
    await caps.sweep()
    await caps.sweep()
    assert caps.found == {} and slow.asked == 1
    clock.advance(1.0)
    await caps.sweep()
    assert slow.asked == 2


class _Slow:
    def __init__(self) -> None:
        self.asked = 0

    async def __call__(self, url: str) -> tuple[int, bytes]:
        self.asked += 1
        raise TimeoutError


async def test_a_static_backend_on_a_real_engine_is_handed_out_with_its_cache(
    tmp_path: Path,
) -> None:
    """A simulator of 512 blocks of 16 tokens as a static backend from the config file: the
    routes gateways get carry its 8,192 tokens."""
    sim = build_server(SimSettings(kv_blocks=512, block_size=16, speedup=50.0), "127.0.0.1", 0)
    task = asyncio.create_task(sim.serve())
    try:
        await eventually(lambda: sim.port, what="the simulator to listen")
        config = Config(
            pools=[
                PoolConfig(
                    name="p",
                    policy="prefix_aware",
                    backends=[BackendConfig(id="sim", url=f"http://127.0.0.1:{sim.port}/v1")],
                )
            ]
        )
        async with no_task_leaks("controller."):
            server = ControllerServer(make_settings(tmp_path / "data", config))
            await server.start()
            try:
                publisher = server.parts.publisher
                await eventually(
                    lambda: publisher.routes["p"].members[0].cache_tokens, what="its cache"
                )
                member = publisher.routes["p"].members[0]
                assert (member.cache_tokens, member.cache_block_size) == (8192, 16)
            finally:
                await server.stop()
    finally:
        sim.should_exit = True
        await asyncio.wait_for(task, 15)
