"""vllm-router (Rust) with its cache_aware policy in front of the same simulated engines."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.systems import Running, launch_vllm_router


async def start(engine_urls: list[str], model: str, workdir: Path) -> Running:
    """Starts the router on a free port with --policy cache_aware; StartError says why not."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    return await launch_vllm_router(
        "vllm-router-cache-aware",
        engine_urls,
        "cache_aware",
        workdir,
        body=orjson.dumps(body),
        extra=("--disable-retries", "--request-timeout-secs", "600"),
    )
