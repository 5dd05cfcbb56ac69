"""A client that disconnects takes its sequence out of the batch and frees its KV blocks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Start = Callable[..., Awaitable[Any]]
Eventually = Callable[..., Awaitable[None]]
LONG = {
    "messages": [{"role": "user", "content": "tell me everything " * 50}],
    "max_tokens": 100_000,
}


async def test_stream_disconnect_frees_blocks(sim_server: Start, eventually: Eventually) -> None:
    server = await sim_server(speedup=1.0)
    scheduler = server.engine.scheduler
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            f"http://127.0.0.1:{server.port}/v1/chat/completions",
            json={**LONG, "stream": True},
        ) as response,
    ):
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("data: ")  # role chunk
        assert (await anext(lines)) == ""
        assert (await anext(lines)).startswith("data: ")  # first token: it is running
        assert len(scheduler.running) == 1 and scheduler.kv.used_blocks > 0
    # The response is closed here: the engine must drop the sequence without waiting for it.
    await eventually(
        lambda: not scheduler.running and scheduler.kv.used_blocks == 0, what="blocks to be freed"
    )
    assert not scheduler.waiting


async def test_non_stream_disconnect_frees_blocks(
    sim_server: Start, eventually: Eventually
) -> None:
    server = await sim_server(speedup=1.0)
    scheduler = server.engine.scheduler
    async with httpx.AsyncClient() as http:
        request = asyncio.create_task(
            http.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", json=LONG)
        )
        await eventually(lambda: scheduler.running, what="the request to run")
        assert scheduler.kv.used_blocks > 0
        request.cancel()  # closes the connection mid-request
        await asyncio.gather(request, return_exceptions=True)
    await eventually(
        lambda: not scheduler.running and scheduler.kv.used_blocks == 0, what="blocks to be freed"
    )
    # The freed prompt blocks stay cached for the next request with the same prefix.
    assert scheduler.kv.cached_blocks > 0


async def test_queued_request_disconnect_leaves_the_queue(
    sim_server: Start, eventually: Eventually
) -> None:
    server = await sim_server(speedup=1.0, max_num_seqs=1)
    scheduler = server.engine.scheduler
    base = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    async with httpx.AsyncClient() as http:
        first = asyncio.create_task(http.post(base, json=LONG))
        await eventually(lambda: scheduler.running, what="the first request to run")
        second = asyncio.create_task(http.post(base, json={**LONG, "max_tokens": 5}))
        await eventually(lambda: scheduler.waiting, what="the second request to queue")
        second.cancel()
        await eventually(lambda: not scheduler.waiting, what="the queue to empty")
        first.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
    await eventually(lambda: not scheduler.running, what="the batch to empty")
