"""A tiny fake engine for agent tests: asyncio HTTP server with /health, vLLM-named /metrics and
/set?running=N&waiting=M&health=CODE&say=TEXT to steer it. Run as a script, not imported."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from urllib.parse import parse_qs, urlsplit

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{model}"}} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{model}"}} {kv}
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake")
    parser.add_argument("--running", type=float, default=0)
    parser.add_argument("--health", type=int, default=200)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--print-env", action="append", default=[], metavar="NAME")
    args = parser.parse_args()
    state = {"running": args.running, "waiting": 0.0, "health": float(args.health)}
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        parts = request.split()
        url = urlsplit(parts[1].decode() if len(parts) > 1 else "/")
        status, body = 200, "ok\n"
        if url.path == "/health":
            status = int(state["health"])
        elif url.path == "/metrics":
            kv = min(1.0, 0.1 * state["running"])
            body = METRICS.format(model=args.model, kv=kv, **state)
        elif url.path == "/set":
            for key, values in parse_qs(url.query).items():
                if key == "say":
                    print(values[0], flush=True)
                else:
                    state[key] = float(values[0])
        else:
            status, body = 404, "not found\n"
        data = body.encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + data)
        await writer.drain()
        writer.close()

    for name in args.print_env:
        print(f"env {name}={os.environ.get(name, '<unset>')}", flush=True)
    server = await asyncio.start_server(handle, args.host, args.port)
    print(f"fake engine serving {args.model} on {args.host}:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
