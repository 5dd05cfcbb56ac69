"""vllm-router (Rust) with its cache_aware policy in front of the same simulated engines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from bench import venvs
from bench.systems import HOST, Running, StartError, free_port, spawn


async def start(engine_urls: list[str], model: str, workdir: Path) -> Running:
    """Starts the router on a free port with --policy cache_aware; StartError says why not."""
    try:
        bindir = await venvs.ensure("vllm-router", venvs.VLLM_ROUTER_SPEC)
    except (RuntimeError, OSError, TimeoutError) as exc:
        raise StartError(f"could not install {venvs.VLLM_ROUTER_SPEC}: {exc}") from exc
    port = free_port()
    proc = await spawn(
        "vllm-router-cache-aware",
        [
            str(bindir / "vllm-router"),
            "--worker-urls",
            *engine_urls,
            "--host",
            HOST,
            "--port",
            str(port),
            "--policy",
            "cache_aware",
            "--prometheus-host",
            HOST,
            "--prometheus-port",
            str(free_port()),
            "--disable-retries",
            "--request-timeout-secs",
            "600",
            "--log-level",
            "warning",
        ],
        workdir,
    )
    running = Running(port, measured=[proc], version=venvs.VLLM_ROUTER_SPEC)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    deadline = time.monotonic() + 60.0
    last = ""
    async with httpx.AsyncClient(timeout=5.0) as http:
        while time.monotonic() < deadline:
            if not proc.alive():
                await running.stop()
                raise StartError(f"vllm-router exited at start-up: {proc.tail(400)!r}")
            try:
                health = await http.get(f"http://{HOST}:{port}/health")
                if health.status_code == 200:
                    reply = await http.post(f"http://{HOST}:{port}/v1/chat/completions", json=body)
                    if reply.status_code == 200:
                        return running
                    last = f"chat answered {reply.status_code}: {reply.text[:200]}"
                else:
                    last = f"health answered {health.status_code}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.2)
    await running.stop()
    raise StartError(f"vllm-router not ready after 60 s ({last}; log: {proc.tail(300)!r})")
