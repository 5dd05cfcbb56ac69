"""SIGTERM of a gateway process with a stream in flight: not ready at once, still serving for
the drain delay, then the listener closes; what outlives the graceful timeout ends with an
error event, never cut, and the process exits 0 with no traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support import eventually, free_port

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


async def test_sigterm_drains_then_ends_open_streams_with_an_error_event(
    kit: Any, engines: Any, controller: Any, tmp_path: Path
) -> None:
    engine = await engines("e1")
    engine.stream_forever = True
    controller.full = kit.snapshot(1, [kit.route("m1", [kit.member("a", engine.url)])])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPOOL_")}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmpool.cli", "gateway",
            "--listen", f"127.0.0.1:{port}", "--controller", f"127.0.0.1:{controller.port}",
            "--insecure", "--drain-delay-s", "1.5", "--graceful-timeout-s", "3",
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=15) as http:

            async def ready() -> bool:
                return (await http.get(f"{base}/readyz")).status_code == 200

            await eventually(ready, 20, "gateway ready")
            received: list[bytes] = []

            async def read_stream() -> None:
                payload = {**CHAT, "stream": True}
                async with http.stream("POST", f"{base}/v1/chat/completions", json=payload) as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_bytes():
                        received.append(chunk)

            streaming = asyncio.create_task(read_stream())
            await eventually(lambda: len(received) >= 2, 10, "the stream flowing")
            proc.send_signal(signal.SIGTERM)

            async def not_ready() -> bool:
                return (await http.get(f"{base}/readyz")).status_code == 503

            await eventually(not_ready, 1.2, "not ready right after SIGTERM")
            # Still serving within the drain delay: load balancers are moving away.
            fresh = await http.post(f"{base}/v1/chat/completions", json=CHAT)
            assert fresh.status_code == 200

            async def refused() -> bool:
                try:
                    await http.get(f"{base}/healthz")
                except httpx.ConnectError:
                    return True
                return False

            await eventually(refused, 10, "the listener closed after the drain delay")
            # The stream never ends by itself: at the graceful timeout it gets an error event.
            await asyncio.wait_for(streaming, 10)
        text = b"".join(received).decode()
        assert '"code":"shutting_down"' in text, text[-300:]
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    logged = log_path.read_text()
    assert "Traceback" not in logged and "CancelledError" not in logged, logged[-2000:]
