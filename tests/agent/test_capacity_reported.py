"""Replicas report their engine's capacity: what the engine says on /metrics first, then what
its command line sets, then the engine's fixed defaults."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.engine_metrics import EngineLoad
from agent.readings import EngineReadings, configured_capacity
from agent.supervisor import Supervisor
from agent.template import ReplicaSpec
from llmpool.status import ReplicaState

Until = Callable[..., Awaitable[Any]]

SIM = ("{python}", "-m", "llmpool.cli", "sim-engine", "--host", "{host}", "--port", "{port}",
       "--model", "{model}", "--speedup", "50")  # fmt: skip


def test_the_command_line_sets_what_the_engine_does_not_say() -> None:
    llama = configured_capacity("llamacpp", ("python", "-m", "llama_cpp.server", "--n_ctx", "4096"))
    assert (llama.cache_tokens, llama.max_running) == (4096, 1)
    # Nothing on the command line: llama_cpp.server's own default context.
    assert (
        configured_capacity("llamacpp", ("python", "-m", "llama_cpp.server")).cache_tokens == 2048
    )
    assert not configured_capacity("openai", ("server", "--port", "1")).known


def test_what_the_engine_says_comes_first() -> None:
    argv = ("sim-engine", "--kv-blocks", "10", "--block-size", "32")
    readings = EngineReadings(configured_capacity("sim", argv))
    configured = readings.capacity
    # The command line's, and the batch from the simulator's default.
    assert (configured.cache_tokens, configured.block_size, configured.max_running) == (320, 32, 64)
    readings.set_load(EngineLoad(cache_tokens=5000, cache_block_size=16, max_running=8))
    capacity = readings.capacity
    assert (capacity.cache_tokens, capacity.block_size, capacity.max_running) == (5000, 16, 8)


async def test_a_simulated_replica_reports_its_cache_and_batch(
    supervisor: Supervisor, until: Until
) -> None:
    args = ("--kv-blocks", "256", "--block-size", "16", "--max-num-seqs", "4")
    spec = ReplicaSpec(replica_id="s1", pool="chat", engine="sim", command=SIM + args)
    assert await supervisor.start(spec) is True
    await until(lambda: supervisor.replica("s1").status().state is ReplicaState.READY, what="READY")
    await until(lambda: supervisor.replica("s1").status().cache_tokens > 0, what="capacity")
    status = supervisor.replica("s1").status()
    assert (status.cache_tokens, status.cache_block_size, status.max_running) == (4096, 16, 4)


async def test_the_info_endpoint_is_read_and_bad_answers_are_nothing() -> None:
    import httpx

    from agent.probe import Prober
    from llmpool.clock import FakeClock

    answers = {
        "/info": httpx.Response(200, json={"max_batch_total_tokens": 20000, "max_batch_size": 8}),
        "/props": httpx.Response(
            200, json={"default_generation_settings": {"n_ctx": 4096}, "total_slots": 4}
        ),
        "/get_server_info": httpx.Response(200, content=b"not json"),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return answers.get(request.url.path, httpx.Response(404))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        prober = Prober(client, FakeClock())
        tgi = await prober.capacity("tgi", "http://e", 1.0)
        llama = await prober.capacity("llama-server", "http://e", 1.0)
        sglang = await prober.capacity("sglang", "http://e", 1.0)
        vllm = await prober.capacity("vllm", "http://e", 1.0)
    assert (tgi.cache_tokens, tgi.max_running) == (20000, 8)
    assert (llama.cache_tokens, llama.max_running) == (4096, 4)
    assert not sglang.known and not vllm.known
    # llama-server: -c on the command line (the whole cache) before /props (one slot's).
    readings = EngineReadings(configured_capacity("llama-server", ("llama-server", "-c", "16384")),
                              "llama-server")  # fmt: skip
    readings.info = llama
    assert (readings.capacity.cache_tokens, readings.capacity.max_running) == (16384, 4)
